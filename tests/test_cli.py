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
    captured = capsys.readouterr()
    assert "usage: trl-erprm" in captured.out
    assert captured.err.startswith("trl-erprm: error: unknown command 'nope'; choose one of ['quickstart'")


# ---------------------------------------------------------------------------------------------------------------------
# Issue 16: usage lines, escaped separators, one-line errors with exit status 2 (usage) or 1 (runtime)
# ---------------------------------------------------------------------------------------------------------------------


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_usage_line_names_the_subcommand(command, capsys):
    assert _help(command, capsys).startswith(f"usage: trl-erprm {command} ")


def test_a_new_subcommand_gets_the_usage_line_and_one_line_errors(monkeypatch, capsys):
    """The mechanism is in the dispatcher, not in each subcommand: a subcommand whose parser names no program (as
    `trl-erprm label`'s does not) still reads `usage: trl-erprm <name>`, and its errors are one line."""
    from dataclasses import dataclass, field

    from trl_erprm.script_utils import make_parser

    @dataclass
    class Arguments:
        rounds: int = field(default=1, metadata={"help": "Rounds."})

        def __post_init__(self):
            if self.rounds < 1:
                raise ValueError(f"rounds must be >= 1, got {self.rounds}: pass --rounds 1 or more.")

    seen = []

    def new_command(argv):
        seen.append(list(sys.argv))  # what a job folder records as the command
        (args,) = make_parser((Arguments,)).parse_args_and_config(argv)
        return 0

    monkeypatch.setitem(COMMANDS, "newcmd", new_command)
    assert _help("newcmd", capsys).startswith("usage: trl-erprm newcmd ")
    assert main(["newcmd", "--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "trl-erprm newcmd: error: rounds must be >= 1, got 0: pass --rounds 1 or more.\n"
    before = list(sys.argv)
    assert main(["newcmd", "--rounds", "3"]) == 0
    assert seen[-1] == ["trl-erprm newcmd", "--rounds", "3"] and sys.argv == before


def test_separator_help_is_escaped(capsys):
    """`--step_separator` and `--prm_step_separator` show their newline defaults as `'\\n'`, never a raw newline,
    and say how to pass one (a PRM separator defaults to None: read from the PRM's prm_config.json)."""
    checked = 0
    for command in sorted(COMMANDS):
        text = _help(command, capsys)
        for option in ("--step_separator", "--prm_step_separator"):
            if f"  {option} " not in text:
                continue
            entry = text.split(f"  {option} ", 1)[1].split("\n  --", 1)[0]
            flat = " ".join(entry.split())
            auto = option == "--prm_step_separator" and "(default: None)" in flat and "prm_config.json" in flat
            assert auto or "(default: '\\n" in entry, f"{command} {option}: {entry!r}"
            assert "'\\n' is a newline" in flat, f"{command} {option}: {entry!r}"
            checked += 1
    assert checked >= 4  # label, bon, stepeval, search (two in search)


def test_decode_escapes():
    from trl_erprm.script_utils import decode_escapes

    assert decode_escapes("\\n") == "\n"
    assert decode_escapes("\\n\\n") == "\n\n"
    assert decode_escapes(" \\t ки\\r\\n") == " \t ки\r\n"
    assert decode_escapes("\\\\n") == "\\n"  # an escaped backslash, then n
    assert decode_escapes("\\boxed{}") == "\\boxed{}"  # other backslashes stay
    assert decode_escapes("\n") == "\n"  # a real newline is left alone
    assert decode_escapes("") == ""


@pytest.mark.parametrize(
    "command, types, option",
    [
        (
            "label",
            "labeling.labeler:LabelScriptArguments,labeling.labeler_config:ERPRMLabelerConfig",
            "step_separator",
        ),
        ("bon", "evaluation.bon:BestOfNArguments", "prm_step_separator"),
        ("stepeval", "evaluation.stepeval:StepEvalArguments", "prm_step_separator"),
        ("search", "search.search_config:SearchConfig", "step_separator"),
    ],
)
def test_separator_escapes_are_decoded_on_the_command_line_and_in_yaml(command, types, option, tmp_path):
    """The one rule of every command: bash's `"\\n"` (a backslash and `n`) is a newline."""
    import importlib

    from trl_erprm.script_utils import make_parser

    classes = []
    for spec in types.split(","):
        module, name = spec.split(":")
        classes.append(getattr(importlib.import_module(f"trl_erprm.{module}"), name))
    required = ["--dataset_name", "rows.jsonl", "--prm_model", "prm", "--generator_model", "gen"]
    if command == "label":
        required = ["--dataset_name", "rows.jsonl"]
    elif command in ("bon", "stepeval"):
        required = ["--dataset_name", "rows.jsonl", "--prm_model", "prm"]

    def value(argv):
        parsed = make_parser(tuple(classes)).parse_args_and_config(required + argv)
        return next(getattr(p, option) for p in parsed if hasattr(p, option))

    assert value([f"--{option}", "\\n\\n"]) == "\n\n"
    assert value([f"--{option}", " ки\\n"]) == " ки\n"
    config = tmp_path / "config.yaml"
    config.write_text(f"{option}: '\\n'\n")  # YAML single quotes: a backslash and n
    assert value(["--config", str(config)]) == "\n"
    assert value([]) == next(f.default for c in classes for f in c.__dataclass_fields__.values() if f.name == option)


def test_usage_error_is_one_line_with_status_2(capsys, sample_data):
    code = main(["bon", "--dataset_name", str(sample_data / "gsm8k_test.jsonl"), "--aggregations", "nope"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("trl-erprm bon: error: aggregations ['nope'] invalid; choose from")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["stepeval", "--dataset_name", "rows.jsonl", "--threshold", "2"], "trl-erprm stepeval: error: "),
        (
            ["search", "--dataset_name", "p.jsonl", "--generator_model", "g", "--prm_model", "p", "--beam_width", "0"],
            "trl-erprm search: error: ",
        ),
        (["label", "--dataset_name", "rows.jsonl", "--num_rollouts", "0"], "trl-erprm label: error: "),
        (["quickstart", "--num_rollouts", "0"], "trl-erprm quickstart: error: "),
    ],
)
def test_every_subcommand_reports_usage_errors_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_runtime_error_is_one_line_with_status_1(capsys, sample_data, tmp_path):
    code = main(["bon", "--dataset_name", str(tmp_path / "missing.jsonl"), "--prm_model", "prm"])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        err
        == f"trl-erprm bon: error: No such data file: '{tmp_path / 'missing.jsonl'}'. Pass an existing file, folder or Hub dataset id.\n"
    )
    # a column the data lacks: found before any model loads (the PRM path does not exist either)
    code = main(["bon", "--dataset_name", str(sample_data / "gsm8k_test.jsonl"), "--prm_model", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert code == 1 and "has no column(s) ['prompt', 'gold_answer', 'completions']" in err
    # one error line and no traceback (a progress bar of the data loading may come before it)
    assert "--prompt_column" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [err.strip().splitlines()[-1]]


def test_console_script_errors_and_debug_tracebacks(tmp_path):
    """The installed command prints one line and exits 2 on a usage error; `TRL_ERPRM_DEBUG=1` gives the traceback."""
    import os

    argv = [sys.executable, "-m", "trl_erprm.cli", "bon", "--dataset_name", "x.jsonl", "--prm_model", "p"]
    argv += ["--num_seeds", "0"]
    plain = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == ["trl-erprm bon: error: num_seeds must be >= 1, got 0."]
    debug = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "TRL_ERPRM_DEBUG": "1"}
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UsageError" in debug.stderr
