"""The ER-PRM and PRM example scripts run for a few steps on CPU, as a user would launch them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def _write_rows(path, soft):
    rows = [
        {
            "prompt": f"What is {i} + 2?",
            "completions": [f"{i} + 2 = {i + 2}.", f"The answer is {i + 2}."],
            "labels": [0.75, 0.5] if soft else [True, False],
        }
        for i in range(8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def _run(command, tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_DISABLED": "true",
        "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
    }
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


COMMON = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--bf16",
    "False",
    "--use_cpu",
    "True",
    "--gradient_checkpointing",
    "False",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
]


def test_erprm_train_example_with_accelerate_launch(token_cls_path, tmp_path):
    data = _write_rows(tmp_path / "soft.jsonl", soft=True)
    out = tmp_path / "erprm"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "examples/accelerate_configs/cpu.yaml",
        "examples/erprm_train.py",
        "--model_name_or_path",
        token_cls_path,
        "--dataset_name",
        data,
        "--output_dir",
        str(out),
        "--eval_fraction",
        "0.25",
        "--eta",
        "2.0",
        *COMMON,
    ]
    _run(command, tmp_path)
    assert (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "er-prm" in card and "2412.11006" in card


def test_erprm_train_example_with_lora(token_cls_path, tmp_path):
    data = _write_rows(tmp_path / "soft.jsonl", soft=True)
    out = tmp_path / "erprm-lora"
    command = [
        sys.executable,
        "examples/erprm_train.py",
        "--model_name_or_path",
        token_cls_path,
        "--dataset_name",
        data,
        "--output_dir",
        str(out),
        "--use_peft",
        "--lora_r",
        "4",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        *COMMON,
    ]
    _run(command, tmp_path)
    assert (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "TOKEN_CLS"


def test_prm_train_example_runs_on_any_trl(token_cls_path, tmp_path):
    data = _write_rows(tmp_path / "hard.jsonl", soft=False)
    out = tmp_path / "prm"
    command = [
        sys.executable,
        "examples/prm_train.py",
        "--model_name_or_path",
        token_cls_path,
        "--dataset_name",
        data,
        "--output_dir",
        str(out),
        *COMMON,
    ]
    _run(command, tmp_path)
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("script", ["erprm_train.py", "prm_train.py"])
def test_examples_open_with_the_command_that_runs_them(script):
    first = (ROOT / "examples" / script).read_text().splitlines()[0]
    assert first.startswith("# accelerate launch ") and f"examples/{script}" in first
