"""ERPRMTrainer vs TRL's PRMTrainer: training tokens per second and peak memory, as ratios in one run.

Every measurement is a separate worker process (so peak memory is per configuration), forked from a server process
that runs under the interpreter of the TRL version it needs and has imported the libraries once; configurations are
interleaved across repeats (in an order rotated at every repeat) so that machine noise hits every configuration alike:

- `trl113/prm_hard`: TRL 1.13.0's own `trl.experimental.prm.PRMTrainer`, hard labels (the baseline);
- `trl113/erprm_hard`, `trl113/erprm_soft`: `ERPRMTrainer` on the same data and batches, hard and soft labels;
- `trl113/erprm_outcomes`: `ERPRMTrainer` computing ER labels (eta = 1) at batch time from 16 stored rollout outcomes
  per step;
- `newest/prm_hard`: trl-erprm's drop-in `PRMTrainer` on the newest TRL;
- `newest/erprm_soft`: `ERPRMTrainer` on the newest TRL.

A worker times every optimizer step from the end of the previous one to its own end, so a step's time includes
fetching and collating its batch, the forward and backward passes, the loss and the optimizer; its figure is the
median over its timed steps of non-padding tokens / step time (robust to a burst of load from other jobs), in wall
time and in CPU time of the process; with one torch thread the latter is what a dedicated core would deliver and
barely moves when other jobs share the machine, so its ratios are the tighter ones. Memory:
the peak resident set size of the process, and the peak growth during `train()` over the memory held before it
(activations, gradients, optimizer state; Linux `VmHWM` reset through `/proc/self/clear_refs`). On CUDA the latter is
`torch.cuda.max_memory_allocated` over the memory allocated before `train()`.

    python benchmarks/bench_trainer.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION = (
    "ERPRMTrainer vs TRL 1.13's PRMTrainer (the baseline, `trl113/prm_hard`) on the same model, data and batches: "
    "training tokens per second of wall time and per CPU-second of the process (medians over timed steps, per "
    "worker) and peak memory, each configuration in its own process, "
    "interleaved over repeats; ratios are taken against the baseline of the same repeat. `trl113/*` run under "
    "trl 1.13.0, `newest/*` under the newest TRL (our drop-in PRMTrainer)."
)
DEVICES = ("cpu", "cuda")

# A model large enough that the forward/backward pass dominates, small enough for a 2-core CPU; larger on a GPU.
MODELS = {
    "cpu": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
    "cuda": {"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16, "intermediate_size": 2816},
}
SEQ_STEPS = {"cpu": 6, "cuda": 24}  # steps per row
BASELINE = "trl113/prm_hard"
CONFIGS = [  # (environment, trainer, labels)
    ("trl113", "prm", "hard"),
    ("trl113", "erprm", "hard"),
    ("trl113", "erprm", "soft"),
    ("trl113", "erprm", "outcomes"),
    ("newest", "prm", "hard"),
    ("newest", "erprm", "soft"),
]
#: Longest tolerated slowdown of ERPRMTrainer on soft labels against TRL's PRMTrainer on hard labels (issue 8).
MAX_SLOWDOWN = 0.05


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


def stepwise_rows(n: int, steps: int, labels: str) -> list[dict]:
    """Synthetic stepwise rows with the same text whatever the labels.

    Args:
        n (`int`):
            Number of rows.
        steps (`int`):
            Steps per row.
        labels (`str`):
            `"hard"` (booleans), `"soft"` (floats in (0, 1)) or `"outcomes"` (no labels: `step_outcomes`, 16 graded
            rollouts per step, from which `ERPRMTrainer` computes ER labels at batch time).

    Returns:
        `list[dict]`: Rows `{"prompt", "completions"}` with `"labels"` or `"step_outcomes"`.
    """
    rows = []
    for i in range(n):
        row = {
            "prompt": f"Problem {i}: add the numbers.",
            "completions": [f"Step {k}: {i} + {k} = {i + k}." for k in range(steps)],
        }
        if labels == "soft":
            row["labels"] = [round(((i * 7 + k * 3) % 10) / 10 + 0.05, 2) for k in range(steps)]
        elif labels == "hard":
            row["labels"] = [(i + k) % 3 != 0 for k in range(steps)]
        else:
            row["step_outcomes"] = [[float((i + k + j) % (k + 2) == 0) for j in range(16)] for k in range(steps)]
        rows.append(row)
    return rows


def _rss_mb() -> tuple[float, float]:
    """Current and peak resident set size of this process in MiB (Linux `/proc/self/status`)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def worker(trainer_kind: str, labels: str, steps: int, batch_size: int, device: str = "cpu") -> dict:
    """Train one configuration in this process and return its throughput and memory.

    Args:
        trainer_kind (`str`):
            `"prm"` (`trl_erprm.PRMTrainer`: TRL's on trl 1.13, the drop-in elsewhere) or `"erprm"`.
        labels (`str`):
            `"hard"`, `"soft"` or `"outcomes"` (see [`stepwise_rows`]).
        steps (`int`):
            Timed optimizer steps (after 2 warm-up steps).
        batch_size (`int`):
            Rows per step.
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` (float32, 1 thread) or `"cuda"` (bfloat16).

    Returns:
        `dict`: `tokens_per_s` and `tokens_per_cpu_s` (medians over timed steps of tokens per second of wall time and
        per CPU-second of this process), `step_tokens_per_s` (every timed step), `peak_rss_mb` (whole
        process), `train_peak_mb` (growth during training), `trl_version`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl_erprm import ERPRMConfig, ERPRMTrainer, PRMConfig, PRMTrainer
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    with open("/proc/self/clear_refs", "w") as f:  # a forked worker starts its own peak RSS here
        f.write("5")
    on_cuda = device == "cuda"
    if not on_cuda:
        torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, "token_classification", seed=0, **MODELS[device])
    warmup = 2
    common = {
        "output_dir": "/tmp/bench-trainer",
        "use_cpu": not on_cuda,
        "bf16": on_cuda,
        "report_to": "none",
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "per_device_train_batch_size": batch_size,
        "max_steps": steps + warmup,
        "disable_tqdm": True,
        "logging_steps": 1000,
        "seed": 0,
    }
    dataset = Dataset.from_list(stepwise_rows(batch_size * (steps + warmup), SEQ_STEPS[device], labels))

    class StepTimer(TrainerCallback):
        """Time from the end of one optimizer step to the end of the next (batch fetch and collation included)."""

        def __init__(self):
            self.ends = []  # (wall, CPU time of the process) at the end of every step

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kwargs):
            if on_cuda:
                torch.cuda.synchronize()
            self.ends.append((time.perf_counter(), time.process_time()))

    timer = StepTimer()
    config_class, trainer_class = (PRMConfig, PRMTrainer) if trainer_kind == "prm" else (ERPRMConfig, ERPRMTrainer)
    trainer = trainer_class(
        model=model, args=config_class(**common), train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
    )
    collate, tokens = trainer.data_collator, []

    def counting_collator(features):
        batch = collate(features)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS to the current RSS
            f.write("5")
        before, _ = _rss_mb()
    trainer.train()
    process_peak = _rss_mb()[1]
    if on_cuda:
        train_peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        train_peak = process_peak - before
    timed = list(zip(tokens, timer.ends, timer.ends[1:]))[warmup:]
    rates = [n / (b[0] - a[0]) for n, a, b in timed]
    cpu_rates = [n / max(b[1] - a[1], 1e-9) for n, a, b in timed]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_cpu_s": statistics.median(cpu_rates),
        "step_tokens_per_s": rates,
        "peak_rss_mb": process_peak,
        "train_peak_mb": train_peak,
        "trl_version": trl.__version__,
    }


def serve() -> None:
    """Worker server: import the libraries once, then run each job read from stdin in a forked child.

    Each stdin line is a JSON object of [`worker`] arguments; the answer is one JSON line on stdout (the worker's
    result, or `{"error": traceback}`). A forked child starts with the libraries already imported (saving their import
    time for every measurement) and with its own memory, so its peaks are its own.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import trl_erprm  # noqa: F401

    channel = os.fdopen(os.dup(1), "w")  # answers go here; anything else printed (Trainer logs) goes to stderr
    os.dup2(2, 1)
    for line in sys.stdin:
        job = json.loads(line)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                payload = json.dumps(worker(**job))
            except BaseException:
                payload = json.dumps({"error": traceback.format_exc()})
            with os.fdopen(write, "w") as f:
                f.write(payload)
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            payload = f.read()
        _, status = os.waitpid(pid, 0)
        if not payload:
            payload = json.dumps({"error": f"worker process died (wait status {status})"})
        channel.write(payload + "\n")
        channel.flush()


class _Server:
    """A [`serve`] process under another interpreter; `request(**job)` runs one worker job there."""

    def __init__(self, python: str):
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [python, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
        )

    def request(self, **job) -> dict:
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark server exited with status {self.process.wait()}:\n{self.stderr()}")
        result = json.loads(line)
        if "error" in result:
            result["error"] += f"\nserver stderr (tail):\n{self.stderr()}"
        return result

    def stderr(self, chars: int = 3000) -> str:
        """The last `chars` characters the server wrote to stderr."""
        self.log.seek(0)
        return self.log.read()[-chars:]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.log.close()


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Run every configuration `repeats` times, interleaved, each in a fresh worker process.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            7 repeats of 12 timed steps instead of 10 repeats of 30.
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` or `"cuda"` (a larger model, bfloat16, CUDA memory).

    Returns:
        `dict`: `settings`, `samples` (per configuration, per-repeat lists of tokens/s, process peak RSS and training
        peak memory), `ratios` (per repeat, against `trl113/prm_hard` of the same repeat), `checks` (soft-label
        ERPRMTrainer within 5% of the baseline), `environments`, `notes`.
    """
    repeats, steps, batch = (7, 12, 8) if quick else (10, 30, 8)
    if device == "cuda":
        batch = 16
    pythons = {kind: find_python(kind) for kind in ("newest", "trl113")}
    samples: dict[str, dict[str, list[float]]] = {}
    versions = {}
    servers = {kind: _Server(python) for kind, python in pythons.items() if python is not None}
    try:
        for repeat in range(repeats):
            # rotate the order so that no configuration always runs first (or right after the baseline)
            for kind, trainer_kind, labels in CONFIGS[repeat % len(CONFIGS) :] + CONFIGS[: repeat % len(CONFIGS)]:
                if kind not in servers:
                    continue
                job = {"trainer_kind": trainer_kind, "labels": labels, "steps": steps, "batch_size": batch}
                result = servers[kind].request(**job, device=device)
                if "error" in result:
                    raise RuntimeError(f"benchmark worker {kind}/{trainer_kind}_{labels} failed:\n{result['error']}")
                versions[kind] = result["trl_version"]
                metrics = samples.setdefault(f"{kind}/{trainer_kind}_{labels}", {})
                for metric in ("tokens_per_s", "tokens_per_cpu_s", "peak_rss_mb", "train_peak_mb"):
                    metrics.setdefault(metric, []).append(result[metric])
    finally:
        for server in servers.values():
            server.close()

    ratios: dict[str, list[float]] = {}
    checks: dict[str, bool] = {}
    base = samples.get(BASELINE)
    if base:
        for key, values in samples.items():
            if key == BASELINE:
                continue
            for metric, label in (
                ("tokens_per_s", "tokens/s"),
                ("tokens_per_cpu_s", "tokens/CPU-s"),
                ("train_peak_mb", "training peak memory"),
                ("peak_rss_mb", "process peak RSS"),
            ):
                ratios[f"{key} / {BASELINE} {label}"] = [v / b for v, b in zip(values[metric], base[metric])]
        for label in ("tokens/s", "tokens/CPU-s"):
            soft = ratios.get(f"trl113/erprm_soft / {BASELINE} {label}")
            if soft:
                checks[f"ERPRMTrainer (soft) {label} >= {1 - MAX_SLOWDOWN:.2f}x PRMTrainer (hard), median"] = (
                    statistics.median(soft) >= 1 - MAX_SLOWDOWN
                )
    missing = [kind for kind, python in pythons.items() if python is None]
    precision = "bfloat16 on CUDA" if device == "cuda" else "float32 on CPU, 1 torch thread"
    return {
        "settings": {
            "model": f"Qwen2 token classifier {MODELS[device]}",
            "steps_per_row": SEQ_STEPS[device],
            "batch_size": batch,
            "timed_steps": steps,
            "warmup_steps": 2,
            "repeats": repeats,
            "precision": precision,
        },
        "samples": samples,
        "ratios": ratios,
        "checks": checks,
        "environments": {kind: {"python": python, "trl": versions.get(kind)} for kind, python in pythons.items()},
        "notes": (
            "tokens/s counts non-padding tokens; the training peak memory is the growth of the resident set (CUDA: "
            "allocated memory) during `train()` over what was held before it, the process peak RSS includes the "
            "libraries and the model."
            + (f" Missing environments: {missing} (set TRL_ERPRM_PYTHON_NEWEST / _TRL113)." if missing else "")
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="Fewer steps and repeats.")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="Where to train.")
    cli = parser.parse_args()
    if cli.serve:
        serve()
    else:
        print(json.dumps(run(cli.quick, cli.device), indent=2))
