"""ERPRMTrainer vs TRL's PRMTrainer: training tokens per second and peak memory, as ratios in one run.

Every measurement is a separate worker process (so peak RSS is per configuration), run under the interpreter of the
TRL version it needs, interleaved across repeats so that machine noise hits every configuration alike:

- `trl113/prm_hard`: TRL 1.13.0's own `trl.experimental.prm.PRMTrainer`, hard labels (the baseline);
- `trl113/erprm_hard`, `trl113/erprm_soft`: `ERPRMTrainer` on the same data and batches, hard and soft labels;
- `newest/prm_hard`: trl-erprm's drop-in `PRMTrainer` on the newest TRL;
- `newest/erprm_soft`: `ERPRMTrainer` on the newest TRL.

    python benchmarks/bench_trainer.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
NAME = "trainer"
DESCRIPTION = "ERPRMTrainer vs TRL 1.13 PRMTrainer: training tokens/s and peak RSS"

# A model large enough that the forward/backward pass dominates, small enough for a 2-core CPU.
MODEL = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512}
SEQ_STEPS = 6  # steps per row, every row the same length so every batch has the same number of tokens


def find_python(kind: str) -> str | None:
    """Interpreter with the newest TRL (`kind="newest"`) or trl 1.13.0 (`kind="trl113"`).

    Looks at `TRL_ERPRM_PYTHON_NEWEST` / `TRL_ERPRM_PYTHON_TRL113`, then the CI and development virtualenvs, then the
    current interpreter if its TRL matches.

    Args:
        kind (`str`):
            `"newest"` or `"trl113"`.

    Returns:
        `str` or `None`: Path of the interpreter, `None` if none is found.
    """
    env = os.environ.get(f"TRL_ERPRM_PYTHON_{kind.upper()}")
    candidates = [env] if env else []
    names = {"newest": [".ci-venvs/newest", ".venv"], "trl113": [".ci-venvs/trl113", ".venv113"]}[kind]
    candidates += [str(ROOT / name / "bin" / "python") for name in names] + [sys.executable]
    for python in candidates:
        if not python or not os.path.exists(python):
            continue
        version = subprocess.run(
            [python, "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True
        ).stdout.strip()
        if version and (version.startswith("1.13.") if kind == "trl113" else not version.startswith("1.13.")):
            return python
    return None


def _rows(n: int, soft: bool) -> list[dict]:
    rows = []
    for i in range(n):
        steps = [f"Step {k}: {i} + {k} = {i + k}." for k in range(SEQ_STEPS)]
        if soft:
            labels = [round(((i * 7 + k * 3) % 10) / 10 + 0.05, 2) for k in range(SEQ_STEPS)]
        else:
            labels = [(i + k) % 3 != 0 for k in range(SEQ_STEPS)]
        rows.append({"prompt": f"Problem {i}: add the numbers.", "completions": steps, "labels": labels})
    return rows


def worker(trainer_kind: str, labels: str, steps: int, batch_size: int) -> dict:
    """Train one configuration in this process and return tokens/s and peak RSS.

    Args:
        trainer_kind (`str`):
            `"prm"` (`trl_erprm.PRMTrainer`: TRL's on trl 1.13, the drop-in elsewhere) or `"erprm"`.
        labels (`str`):
            `"hard"` or `"soft"`.
        steps (`int`):
            Timed optimizer steps (after 2 warm-up steps).
        batch_size (`int`):
            Rows per step.

    Returns:
        `dict`: `tokens_per_s`, `peak_rss_mb`, `trl_version`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl_erprm import ERPRMConfig, ERPRMTrainer, PRMConfig, PRMTrainer
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, "token_classification", seed=0, **MODEL)
    warmup = 2
    common = {
        "output_dir": "/tmp/bench-trainer",
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "per_device_train_batch_size": batch_size,
        "max_steps": steps + warmup,
        "disable_tqdm": True,
        "logging_steps": 1000,
        "seed": 0,
    }
    dataset = Dataset.from_list(_rows(batch_size * (steps + warmup), soft=labels == "soft"))

    class Timer(TrainerCallback):
        def __init__(self):
            self.start = None
            self.elapsed = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.elapsed = time.perf_counter() - self.start

    timer = Timer()
    if trainer_kind == "prm":
        trainer = PRMTrainer(
            model=model, args=PRMConfig(**common), train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
        )
    else:
        trainer = ERPRMTrainer(
            model=model,
            args=ERPRMConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
    tokens_per_row = len(trainer.train_dataset[0]["input_ids"])
    trainer.train()
    return {
        "tokens_per_s": tokens_per_row * batch_size * steps / timer.elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trl_version": trl.__version__,
    }


CONFIGS = [
    ("trl113", "prm", "hard"),
    ("trl113", "erprm", "hard"),
    ("trl113", "erprm", "soft"),
    ("newest", "prm", "hard"),
    ("newest", "erprm", "soft"),
]


def run(quick: bool = False) -> dict:
    """Run every configuration `repeats` times, interleaved, each in a fresh worker process.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Fewer steps and repeats.

    Returns:
        `dict`: `samples` (per configuration, lists of tokens/s and peak RSS), `ratios` (per repeat, against
        `trl113/prm_hard` of the same repeat), `environments`, `notes`.
    """
    repeats, steps, batch = (3, 8, 8) if quick else (5, 20, 8)
    pythons = {kind: find_python(kind) for kind in ("newest", "trl113")}
    samples: dict[str, dict[str, list[float]]] = {}
    versions = {}
    for _ in range(repeats):
        for kind, trainer_kind, labels in CONFIGS:
            python = pythons[kind]
            if python is None:
                continue
            out = subprocess.run(
                [python, __file__, "--worker", trainer_kind, labels, str(steps), str(batch)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if out.returncode:
                raise RuntimeError(f"benchmark worker {kind}/{trainer_kind}_{labels} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            key = f"{kind}/{trainer_kind}_{labels}"
            versions[kind] = result["trl_version"]
            for metric in ("tokens_per_s", "peak_rss_mb"):
                samples.setdefault(key, {}).setdefault(metric, []).append(result[metric])
    ratios: dict[str, list[float]] = {}
    base = samples.get("trl113/prm_hard")
    if base:
        for key, values in samples.items():
            if key == "trl113/prm_hard":
                continue
            ratios[f"{key} / trl113/prm_hard tokens_per_s"] = [
                v / b for v, b in zip(values["tokens_per_s"], base["tokens_per_s"])
            ]
            ratios[f"{key} / trl113/prm_hard peak_rss"] = [
                v / b for v, b in zip(values["peak_rss_mb"], base["peak_rss_mb"])
            ]
    missing = [kind for kind, python in pythons.items() if python is None]
    return {
        "samples": samples,
        "ratios": ratios,
        "environments": {kind: {"python": python, "trl": versions.get(kind)} for kind, python in pythons.items()},
        "notes": (
            f"Qwen2 token classifier {MODEL}, {SEQ_STEPS} steps per row, batch {batch}, {steps} timed steps after 2 "
            f"warm-up steps, 1 torch thread, float32 on CPU; {repeats} interleaved repeats, one process each."
            + (f" Missing environments: {missing} (set TRL_ERPRM_PYTHON_NEWEST / _TRL113)." if missing else "")
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=4, metavar=("TRAINER", "LABELS", "STEPS", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="Fewer steps and repeats.")
    cli = parser.parse_args()
    if cli.worker:
        trainer_kind, labels, steps, batch = cli.worker
        print(json.dumps(worker(trainer_kind, labels, int(steps), int(batch))))
    else:
        print(json.dumps(run(cli.quick), indent=2))
