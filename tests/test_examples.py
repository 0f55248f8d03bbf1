"""Every script in `examples/` opens with the command that runs it, and runs for a few steps on CPU with tiny models.

The tests are parametrized over `examples/*.py` itself, so a new example without an entry in `CASES` (its CPU
arguments and what it must write) fails. The first line of a script is the command that runs it, and every command
of its first line and docstring is checked against the script's own `TrlParser` and `accelerate launch`'s options.
Each script runs in a subprocess with the launcher its first line must name: `accelerate launch --config_file
examples/accelerate_configs/cpu.yaml examples/<name>.py ...` for training and labeling scripts, `python
examples/<name>.py ...` for the evaluation scripts of `PYTHON_SCRIPTS` (they are not data-parallel, so several
processes would only repeat the same work).
"""

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser
from transformers import TrainingArguments
from trl import TrlParser

from trl_erprm.script_utils import make_parser


ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path.name for path in (ROOT / "examples").glob("*.py"))
CONFIGS = sorted(
    f"examples/accelerate_configs/{p.name}" for p in (ROOT / "examples/accelerate_configs").glob("*.yaml")
)
CPU_CONFIG = "examples/accelerate_configs/cpu.yaml"

#: Evaluation scripts, launched with `python`; every other example opens with `# accelerate launch`.
PYTHON_SCRIPTS = {"bon_eval.py"}

#: Arguments every training run gets: a few steps, on the CPU, nothing saved but the final model.
TRAIN = (
    "--max_steps 2 --use_cpu True --bf16 False --gradient_checkpointing False --report_to none --save_strategy no "
    "--logging_steps 1 --seed 0"
)


@dataclass(frozen=True)
class Case:
    """One CPU run of an example.

    Args:
        args (`str`):
            The script's arguments; `{name}` placeholders are filled from the fixtures (see `placeholders`).
        outputs (`dict[str, tuple[str, ...]]`):
            Files the run must write, relative to `{out}`, each with the substrings its text must contain (an empty
            tuple to check only that the file exists).
        logs (`tuple[str, ...]`, *optional*, defaults to `()`):
            Regular expressions the run's output (stdout and stderr) must match.
        name (`str`, *optional*, defaults to `"cpu"`):
            Test id of the case, to tell several cases of one example apart.
    """

    args: str
    outputs: dict[str, tuple[str, ...]]
    logs: tuple[str, ...] = ()
    name: str = "cpu"


GRPO = "--per_device_train_batch_size 4 --num_generations 2 --max_completion_length 8"

CASES: dict[str, list[Case]] = {
    "bon_eval.py": [
        Case(
            "--dataset_name {data}/gsm8k_test.jsonl --dataset_split train --prompt_column question --gold_column answer "
            "--max_problems 2 --num_candidates 2 --max_new_tokens 8 --generator_model {causal_lm} "
            "--prm_model {token_cls} --output_dir {out}",
            outputs={"results.json": ('"pass@n"',), "table.md": ("majority",), "accuracy_vs_n.png": ()},
        )
    ],
    "erprm_label.py": [
        Case(
            "--model_name_or_path {causal_lm} --dataset_name {data}/gsm8k_test.jsonl --dataset_format gsm8k "
            "--num_rows 2 --num_rollouts 2 --max_new_tokens 8 --output_dir {out}",
            outputs={"summary.json": (), "dataset/dataset_info.json": ()},
            logs=(r'"status_counts": \{"ok": 2\}', r"first labelled row: labels=\[\d"),
        )
    ],
    "erprm_train.py": [
        Case(
            "--model_name_or_path {token_cls} --dataset_name {soft_rows} --output_dir {out} --eval_fraction 0.25 "
            f"--eta 2.0 --per_device_train_batch_size 4 {TRAIN}",
            outputs={"model.safetensors": (), "README.md": ("er-prm", "2412.11006")},
            logs=("eval_loss",),
        ),
        Case(
            "--model_name_or_path {token_cls} --dataset_name {soft_rows} --output_dir {out} --use_peft --lora_r 4 "
            f"--lora_target_modules q_proj v_proj --per_device_train_batch_size 4 {TRAIN}",
            outputs={"adapter_model.safetensors": (), "adapter_config.json": ('"task_type": "TOKEN_CLS"',)},
            name="lora",
        ),
        # an LM-head PRM from the policy's folder, on the labeler's output (one row it could not label), eta by name
        Case(
            "--model_name_or_path {causal_lm} --dataset_name {labelled_rows} --output_dir {out} --head lm --eta hard "
            f"--skip_failed_rows --per_device_train_batch_size 4 {TRAIN}",
            outputs={
                "model.safetensors": (),
                "prm_config.json": ('"head": "lm"', '"step_tag": " ки"'),
                "README.md": ("LM head", "2412.11006", "load_scorer("),
            },
            logs=(r"Dropped 1 of 9 rows .*'missing_gold': 1",),
            name="lm_head",
        ),
    ],
    "grpo_implicit_prm_reward.py": [
        Case(
            "--model_name_or_path {causal_lm} --prm_model_name_or_path {lora_prm} --prm_ref_model_name_or_path adapter "
            "--prm_beta 0.1 --dataset_name {data}/math500_test.jsonl --max_train_samples 4 --output_dir {out} "
            f"{GRPO} {TRAIN}",
            outputs={"model.safetensors": ()},
            # the adapter moves the PRM away from its base (the reference): the implicit reward is not 0
            logs=(r"'rewards/implicit_prm/mean': '-?(?!0(\.0*)?')[0-9]", "rewards/accuracy_reward/mean"),
        )
    ],
    "grpo_prm_reward.py": [
        Case(
            "--model_name_or_path {causal_lm} --prm_model_name_or_path {token_cls} --prm_aggregation prod "
            f"--dataset_name {{data}}/math500_test.jsonl --max_train_samples 4 --output_dir {{out}} {GRPO} {TRAIN}",
            outputs={"model.safetensors": ()},
            logs=("rewards/prm_reward/mean", "prm_reward/steps_per_completion", "rewards/accuracy_reward/mean"),
        )
    ],
    "implicit_prm_train.py": [
        Case(
            "--model_name_or_path {causal_lm} --dataset_name {outcome_rows} --output_dir {out} "
            "--per_device_train_batch_size 4 --learning_rate 5e-3 --beta 0.1 --use_peft --lora_r 4 "
            f"--lora_target_modules q_proj v_proj {TRAIN}",
            outputs={"adapter_model.safetensors": (), "README.md": ()},
        )
    ],
    "prime_grpo.py": [
        Case(
            "--model_name_or_path {causal_lm} --dataset_name {data}/math500_test.jsonl --max_train_samples 4 "
            f"--output_dir {{out}} --accuracy_lower_bound 0 --accuracy_upper_bound 1 {GRPO} {TRAIN}",
            outputs={
                "model.safetensors": (),
                "prm/model.safetensors": (),
                "prm/prm_optimizer.pt": (),
                "prm/README.md": ("PRIME", "ImplicitPRM("),
            },
            logs=("prime/prm_loss", "prime/process_reward/mean"),
        )
    ],
    "prl_grpo.py": [
        Case(
            "--model_name_or_path {causal_lm} --dataset_name {data}/math500_test.jsonl --max_train_samples 4 "
            f"--output_dir {{out}} --beta 0.001 --eta 100 --step_len 4 {GRPO} {TRAIN}",
            outputs={"model.safetensors": ()},
            logs=("prl/kl_to_go/mean", "prl/steps_per_completion"),
        )
    ],
    "prm_grpo.py": [
        Case(
            "--model_name_or_path {causal_lm} --prm_model_name_or_path {token_cls} --outcome_coef 0.5 "
            f"--dataset_name {{data}}/math500_test.jsonl --max_train_samples 4 --output_dir {{out}} {GRPO} {TRAIN}",
            outputs={"model.safetensors": ()},
            logs=("prm/steps_per_completion", "prm/advantages/std", "prm/step_reward/mean"),
        )
    ],
    "prm_train.py": [
        Case(
            "--model_name_or_path {token_cls} --dataset_name {hard_rows} --output_dir {out} "
            f"--per_device_train_batch_size 4 {TRAIN}",
            outputs={"model.safetensors": ()},
        )
    ],
    "raft.py": [
        Case(
            "--model_name_or_path {causal_lm} --prm_model {token_cls} --dataset_name {data}/gsm8k_test.jsonl "
            "--prompt_column question --gold_column answer --max_problems 6 --eval_fraction 0.34 --num_rounds 1 "
            f"--num_samples 2 --max_new_tokens 8 --per_device_train_batch_size 2 --output_dir {{out}} {TRAIN}",
            outputs={
                "results.json": ('"rounds"', '"accuracy"'),
                "table.md": ("held-out accuracy",),
                "accuracy.png": (),
                "round-1/policy/model.safetensors": (),
                "round-1/selection.json": ('"kept"',),
            },
            logs=(r"Held-out accuracy per round \(0: the initial policy\): \[", "RAFT round 1: sampling"),
        )
    ],
}


def _runs():
    """`(script, case)` pairs of every example; `None` for an example `CASES` does not cover (the test fails)."""
    for script in EXAMPLES:
        for case in CASES.get(script) or [None]:
            yield pytest.param(script, case, id=f"{script}-{case.name if case else 'missing'}")


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def example_inputs(tmp_path_factory, causal_lm_path, tokenizer):
    """Small data files in the formats the examples read, and a LoRA implicit PRM (random, non-zero adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("example_inputs")

    def stepwise(soft: bool) -> list[dict]:
        return [
            {
                "prompt": f"What is {i} + 2?",
                "completions": [f"{i} + 2 = {i + 2}.", f"The answer is {i + 2}."],
                "labels": [0.75, 0.5] if soft else [True, False],
            }
            for i in range(8)
        ]

    outcomes = [
        {
            "prompt": [{"role": "user", "content": f"What is {a} + 3?"}],
            "completion": [{"role": "assistant", "content": f"{a} + 3 = {answer}.\n\n\\boxed{{{answer}}}"}],
            "label": label,
        }
        for a in range(2, 6)
        for answer, label in ((a + 3, True), (a + 4, False))
    ]

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    lora_prm = root / "lora_prm"
    get_peft_model(base, lora).save_pretrained(lora_prm)
    tokenizer.save_pretrained(lora_prm)
    labelled = [
        {
            "prompt": f"What is {i} + 2?",
            "completions": [f"{i} + 2 = {i + 2}.", f"The answer is {i + 2}."],
            "step_outcomes": [[1.0, 0.0], [1.0]],
            "labels": [0.5, 1.0],
            "status": "ok",
        }
        for i in range(8)
    ]
    labelled.append({**labelled[0], "step_outcomes": None, "labels": None, "status": "missing_gold"})
    return {
        "labelled_rows": _write_jsonl(root / "labelled.jsonl", labelled),
        "soft_rows": _write_jsonl(root / "soft.jsonl", stepwise(soft=True)),
        "hard_rows": _write_jsonl(root / "hard.jsonl", stepwise(soft=False)),
        "outcome_rows": _write_jsonl(root / "outcomes.jsonl", outcomes),
        "lora_prm": str(lora_prm),
    }


@pytest.fixture
def placeholders(example_inputs, causal_lm_path, token_cls_path, sample_data, tmp_path):
    """Values of the `{name}` placeholders of `Case.args`."""
    return {
        **example_inputs,
        "causal_lm": causal_lm_path,
        "token_cls": token_cls_path,
        "data": str(sample_data),
        "out": str(tmp_path / "out"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The first line: the command that runs the example
# ---------------------------------------------------------------------------------------------------------------------


def _first_line(script: str) -> str:
    """The command on the first line of an example, checked to use the launcher the example must use."""
    first = (ROOT / "examples" / script).read_text().splitlines()[0]
    opening = "# python " if script in PYTHON_SCRIPTS else "# accelerate launch "
    assert first.startswith(opening), (
        f"examples/{script} must open with the command that runs it, `{opening}... examples/{script} ...`; its first "
        f"line is {first[:80]!r}"
    )
    return first[2:]


def _docstring_commands(script: str) -> list[str]:
    """The commands of the example's docstring that run the example, as written in the file (what a reader copies;
    `\\`-continued lines joined)."""
    source = (ROOT / "examples" / script).read_text()
    docstring = ast.get_source_segment(source, ast.parse(source).body[0].value).lstrip("rRuU").strip('"').strip("'")
    lines = [line.strip() for line in docstring.replace("\\\n", " ").splitlines()]
    return [
        line for line in lines if line.startswith(("accelerate launch", "python")) and f"examples/{script}" in line
    ]


def _split(script: str, command: str) -> tuple[str, list[str], list[str]]:
    """Split a command into its launcher (`"accelerate"` or `"python"`), the launcher's options and the script's
    arguments."""
    words = shlex.split(command)
    path = f"examples/{script}"
    assert path in words, f"`{command[:120]}` does not run {path}"
    at = words.index(path)
    if words[:2] == ["accelerate", "launch"]:
        return "accelerate", words[2:at], words[at + 1 :]
    assert words[0] in ("python", "python3"), f"`{command[:120]}`: launch with `accelerate launch` or `python`"
    return "python", words[1:at], words[at + 1 :]


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def _load_example(script: str):
    """The example imported as a module (importing runs nothing: the scripts start under `if __name__ ==
    "__main__":`)."""
    path = ROOT / "examples" / script
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script_parser(script: str) -> TrlParser:
    """The parser over every dataclass the script hands to `make_parser(...)` (trl-erprm's `TrlParser`), found in its
    source and resolved in the imported module."""
    tree = ast.parse((ROOT / "examples" / script).read_text())
    calls = _calls(tree, "make_parser")
    assert calls and not _calls(tree, "TrlParser"), (
        f"examples/{script} must parse its arguments with trl_erprm.script_utils.make_parser (TRL's TrlParser with "
        "the project's separator escapes, help and one-line errors)"
    )
    module = _load_example(script)
    types = []
    for call in calls:
        assert call.args and isinstance(call.args[0], (ast.Tuple, ast.List)), f"{script}: make_parser((A, B, ...))"
        types += [getattr(module, element.id) for element in call.args[0].elts]
    return make_parser(tuple(dict.fromkeys(types)))


def _check_command(script: str, command: str, parser: TrlParser) -> None:
    """The launcher's options are real `accelerate launch` options, a `--config_file` is a shipped config, and the
    script accepts every argument, with no required one missing."""
    launcher, options, args = _split(script, command)
    if launcher == "accelerate":
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                launch_command_parser().parse_args([*options, f"examples/{script}"])
        except SystemExit:
            pytest.fail(f"`{command[:120]}...`: bad accelerate launch options: {errors.getvalue()[-300:]}")
        if "--config_file" in options:
            config = options[options.index("--config_file") + 1]
            assert config in CONFIGS, f"`{command[:120]}...` launches with {config}, not a shipped config {CONFIGS}"
    else:
        assert not options, f"`{command[:120]}...`: unexpected python options {options}"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            _, unknown = argparse.ArgumentParser.parse_known_args(parser, args)
    except SystemExit:
        pytest.fail(f"examples/{script} rejects the arguments of `{command}`: {errors.getvalue().splitlines()[-1]}")
    assert not unknown, f"examples/{script} does not take the arguments {unknown} of `{command}`"


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_opens_with_the_command_that_runs_it(script):
    tree = ast.parse((ROOT / "examples" / script).read_text())
    assert ast.get_docstring(tree), f"examples/{script} has no module docstring saying what it does"
    assert any(
        isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'" for node in tree.body
    ), f"examples/{script} has no `if __name__ == '__main__':` entry point"
    _check_command(script, _first_line(script), _script_parser(script))


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_docstring_commands_parse(script):
    parser = _script_parser(script)
    for command in _docstring_commands(script):
        _check_command(script, command, parser)


def test_cases_name_existing_examples():
    assert sorted(CASES) == sorted(set(CASES) & set(EXAMPLES)), (
        f"CASES for missing examples: {set(CASES) - set(EXAMPLES)}"
    )
    assert PYTHON_SCRIPTS <= set(EXAMPLES), f"PYTHON_SCRIPTS names missing examples: {PYTHON_SCRIPTS - set(EXAMPLES)}"


# ---------------------------------------------------------------------------------------------------------------------
# A few steps on the CPU
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("script, case", list(_runs()))
def test_example_runs_on_cpu(script, case, placeholders, tmp_path):
    assert case is not None, (
        f"examples/{script} has no entry in CASES of {Path(__file__).name}: add its CPU arguments (tiny models from "
        "the conftest fixtures, a few steps) and the files it must write."
    )
    args = shlex.split(case.args.format(**placeholders))
    if script in PYTHON_SCRIPTS:
        command = [sys.executable]
    else:  # `accelerate launch`, as the first line says (checked above, separately)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_CONFIG]
    command += [f"examples/{script}", *args]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets_cache"),
        "WANDB_DISABLED": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{shlex.join(command)} ran for more than {error.timeout} s")
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    out = Path(placeholders["out"])
    for name, expected in case.outputs.items():
        assert (out / name).is_file(), f"{script} did not write {name} (in {out}: {sorted(os.listdir(out))})"
        if expected:
            text = (out / name).read_text()
            missing = [s for s in expected if s not in text]
            assert not missing, f"{script}: {name} lacks {missing}"
    missing = [pattern for pattern in case.logs if not re.search(pattern, log)]
    assert not missing, f"{script} printed nothing matching {missing}:\n{log[-3000:]}"


# ---------------------------------------------------------------------------------------------------------------------
# Issue 16: one-line errors, the launch check, files inside the repository, documented commands that parse
# ---------------------------------------------------------------------------------------------------------------------


def _main_block(tree: ast.Module) -> ast.If:
    return next(
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
    )


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_reports_errors_in_one_line(script):
    """The entry point goes through `run_script`: a usage error is one line and exit status 2, a runtime error one
    line and status 1 (see test_example_error_lines for two real runs)."""
    tree = ast.parse((ROOT / "examples" / script).read_text())
    assert _calls(_main_block(tree), "run_script"), f"examples/{script}: end with `run_script(main, make_parser(...))`"


@pytest.mark.parametrize("script", EXAMPLES)
def test_training_examples_check_the_launch(script):
    """Every script that trains calls `check_launch` on its training arguments before loading anything, so a
    multi-process launch whose processes would each train alone stops with the fix (tests/test_launch.py runs it)."""
    tree = ast.parse((ROOT / "examples" / script).read_text())
    module = _load_example(script)
    trains = any(
        isinstance(getattr(module, element.id, None), type)
        and issubclass(getattr(module, element.id), TrainingArguments)
        for call in _calls(tree, "make_parser")
        for element in call.args[0].elts
    )
    checks = bool(_calls(tree, "check_launch"))
    assert checks == trains, f"examples/{script}: {'call check_launch(training_args)' if trains else 'trains nothing'}"


SAMPLES = {path.name for path in (ROOT / "tests" / "data").iterdir()}


def _check_paths(where: str, command: str) -> None:
    """A command names files inside the repository: no absolute path, `tests/` and `examples/` paths exist, and a
    sample of `tests/data` is named with its folder."""
    for word in shlex.split(command):
        value = word.split("=", 1)[-1]
        assert not value.startswith(("/", "~")), f"{where}: `{command[:100]}...` names {value}, outside the repository"
        if value.startswith(("tests/", "examples/")):
            assert (ROOT / value).exists(), f"{where}: `{command[:100]}...` names missing {value}"
        else:
            sample = Path(value).name in SAMPLES
            assert not sample, (
                f"{where}: `{command[:100]}...` names {value}: the sample is tests/data/{Path(value).name}"
            )


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_commands_name_files_inside_the_repository(script):
    for command in [_first_line(script), *_docstring_commands(script)]:
        _check_paths(f"examples/{script}", command)


def test_example_error_lines(tmp_path):
    """Two real runs: a rejected value (status 2) and a missing model folder (status 1), each one line, no
    traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TRL_ERPRM_DEBUG", None)
    runs = [
        (["examples/bon_eval.py", "--dataset_name", "tests/data/gsm8k_test.jsonl", "--num_candidates", "0"], 2),
        (
            ["examples/prm_train.py", "--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", "x.jsonl"]
            + ["--output_dir", str(tmp_path / "out"), "--use_cpu", "--bf16", "False"],
            1,
        ),
    ]
    for argv, status in runs:
        result = subprocess.run(
            [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert result.returncode == status, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith(f"{Path(argv[0]).name}: error: ")


# Documented commands: README and docs/*.md, the lines of their bash blocks.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _documented_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for language, body in re.findall(r"```(\w+)\n(.*?)```", page.read_text(), re.S):
            if language != "bash":
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"<[^<>]+>", "placeholder", line)  # `--generator_model <policy folder>`
                for part in line.split(" #")[0].split("&&"):
                    if part.strip():
                        found.append((page.name, part.strip()))
    return found


def _subcommand_parsers() -> dict:
    """The parser of every `trl-erprm` subcommand (a new subcommand needs an entry here)."""
    from trl_erprm.evaluation.bon import BestOfNArguments
    from trl_erprm.evaluation.stepeval import StepEvalArguments
    from trl_erprm.labeling.labeler import make_parser as label_parser
    from trl_erprm.quickstart.config import make_quickstart_parser
    from trl_erprm.raft import RAFTConfig
    from trl_erprm.search import SearchConfig

    return {
        "quickstart": make_quickstart_parser,
        "label": label_parser,
        "bon": lambda: make_parser((BestOfNArguments,)),
        "stepeval": lambda: make_parser((StepEvalArguments,)),
        "search": lambda: make_parser((SearchConfig,)),
        "raft": lambda: make_parser((RAFTConfig,)),
    }


def test_documented_commands_parse():
    """Every `python examples/...`, `accelerate launch ... examples/...` and `trl-erprm <command> ...` line of the
    README and the docs is accepted, values included, by the script's or the subcommand's own parser."""
    from trl_erprm.cli import COMMANDS

    parsers = _subcommand_parsers()
    assert set(parsers) == set(COMMANDS), f"add the parser of {set(COMMANDS) - set(parsers)} to _subcommand_parsers"
    checked = 0
    for page, command in _documented_commands():
        _check_paths(page, command)
        words = shlex.split(command)
        scripts = [w for w in words if re.fullmatch(r"examples/\w+\.py", w)]
        if scripts and words[0] in ("python", "python3", "accelerate"):
            script = scripts[0][len("examples/") :]
            _check_command(script, command, _script_parser(script))
            checked += 1
        elif words[0] == "trl-erprm" and len(words) > 1 and "--help" not in words:
            parser = parsers[words[1]]()
            errors = io.StringIO()
            try:
                with contextlib.redirect_stderr(errors):
                    parser.parse_args_and_config(words[2:])
            except SystemExit:
                pytest.fail(f"{page}: `{command}` is rejected: {errors.getvalue().strip().splitlines()[-1]}")
            checked += 1
    assert checked >= 15
