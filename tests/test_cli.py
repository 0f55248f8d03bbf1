"""The `trl-erprm` command."""

import json

from trl_erprm.cli import main


def test_quickstart_trains_and_writes_metrics(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--output_dir", str(out), "--max_steps", "20"]) == 0
    metrics = json.loads((out / "quickstart_metrics.json").read_text())
    assert metrics["after"]["eval_loss"] < metrics["before"]["eval_loss"]
    assert (out / "model.safetensors").exists()
    assert "ER label of outcomes" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert main(["nope"]) == 2
    assert "usage: trl-erprm" in capsys.readouterr().out
