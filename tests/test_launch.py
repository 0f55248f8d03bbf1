"""Issue 16: `accelerate launch --multi_gpu --num_processes 2 examples/erprm_train.py ...` on a machine without GPUs.

Without `--use_cpu` each process used to see a world of one and train its own model into the same folder, exiting 0.
Now every training script calls `trl_erprm.script_utils.check_launch`: that launch stops with one line naming the
fix, and the working form (the same launch plus `--use_cpu`) trains one data-parallel model over gloo, which the step
count shows (8 rows, 2 per process and step: 2 steps with 2 processes, 4 with one).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"prompt": f"What is {i} + 2?", "completions": [f"{i} + 2 = {i + 2}.", f"So {i + 2}."], "labels": [0.75, 0.5]}
    for i in range(8)
]


def _launch(num_processes: int, model: str, data: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # the case of the issue: no GPU, whatever this machine has
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("TRL_ERPRM_DEBUG", None)
    launcher = ["--multi_gpu"] if num_processes > 1 else ["--cpu"]  # the launch forms the docs show
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(num_processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "examples/erprm_train.py"]
    command += ["--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out)]
    command += ["--per_device_train_batch_size", "2", "--num_train_epochs", "1", "--bf16", "False"]
    command += ["--gradient_checkpointing", "False", "--report_to", "none", "--save_strategy", "no"]
    command += ["--logging_steps", "1", "--seed", "0", *extra]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return str(path)


def _steps(result: subprocess.CompletedProcess) -> int:
    """Optimizer steps the main process logged (one `{'loss': ...}` line per step)."""
    return len(re.findall(r"\{'loss': ", result.stdout + result.stderr))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_cpu_processes_without_use_cpu_stop_with_the_fix(token_cls_path, rows, tmp_path):
    result = _launch(2, token_cls_path, rows, tmp_path / "out")
    assert result.returncode != 0, result.stdout[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("erprm_train.py: error: ")]
    assert len(errors) == 2, result.stderr[-4000:]  # one line from each process
    assert "2 processes were launched (WORLD_SIZE=2) but each trains alone" in errors[0]
    assert "--use_cpu" in errors[0] and "Traceback" not in result.stderr.split("erprm_train.py: error")[0]
    assert not (tmp_path / "out" / "model.safetensors").exists() and _steps(result) == 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_cpu_processes_with_use_cpu_train_one_model(token_cls_path, rows, tmp_path):
    two = _launch(2, token_cls_path, rows, tmp_path / "two", "--use_cpu")
    assert two.returncode == 0, f"{two.stdout[-2000:]}\n{two.stderr[-4000:]}"
    assert (tmp_path / "two" / "model.safetensors").is_file()
    one = _launch(1, token_cls_path, rows, tmp_path / "one", "--use_cpu")
    assert one.returncode == 0, one.stderr[-4000:]
    assert (_steps(one), _steps(two)) == (4, 2)  # the two processes shared the data: one data-parallel model
