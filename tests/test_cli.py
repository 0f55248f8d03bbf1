"""The `trl-erprm` command: every subcommand is wired to its entry point (the runs themselves are tested with their
features: tests/test_quickstart_pipeline.py, test_labeler.py, test_evaluation_*.py)."""

import subprocess
import sys

import pytest

from trl_erprm.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_console_script_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "trl_erprm.cli"], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in ("quickstart", "label", "bon", "stepeval"))


def test_unknown_command_is_an_error(capsys):
    assert main(["nope"]) == 2
    assert "usage: trl-erprm" in capsys.readouterr().out
