"""ERPRMTrainer vs TRL's PRMTrainer: training tokens per second and peak memory, as ratios in one run.

Configurations (each one a `Trainer.train()` on the same model, data, seed and batches):

- `trl113/prm_hard`: TRL 1.13.0's own `trl.experimental.prm.PRMTrainer`, hard labels (the baseline);
- `trl113/erprm_hard`, `trl113/erprm_soft`: `ERPRMTrainer`, hard and soft labels;
- `trl113/erprm_outcomes`: `ERPRMTrainer` computing ER labels (eta = 1) at batch time from 16 stored rollout outcomes
  per step;
- `newest/prm_hard`: trl-erprm's drop-in `PRMTrainer` on the newest TRL;
- `newest/erprm_soft`: `ERPRMTrainer` on the newest TRL.

**Lockstep.** Every configuration trains in its own process (so its memory is its own), forked from a server process
that runs under the interpreter of the TRL version it needs and has imported the libraries once. All of them are
alive at once, but only one runs at a time: at the end of every optimizer step a callback hands a baton back to this
process (through a named pipe) and waits; this process gives the baton to each configuration in turn, one step each,
in an order rotated at every round. Step `k` of every configuration thus runs within about a second of step `k` of the
baseline, and the ratio of their throughputs is taken per round: load from other jobs on a shared machine hits both
sides of a ratio alike. A step is timed from the moment its process gets the baton to the end of the step, so it
includes fetching and collating its batch, the forward and backward passes, the loss and the optimizer.

Per repeat (fresh processes): the median over timed rounds of the per-round ratios, and each configuration's median
tokens/s. Memory: the peak resident set size of the process, and the peak growth during `train()` over the memory
held before it (activations, gradients, optimizer state; Linux `VmHWM` reset through `/proc/self/clear_refs`); on CUDA
`torch.cuda.max_memory_allocated` over the memory allocated before `train()`.

    python benchmarks/bench_trainer.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import select
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
    "training tokens per second and peak memory. Every configuration trains in its own process; the processes run in "
    "lockstep, one optimizer step each in turn, so each ratio is taken per step against the baseline's step of the "
    "same round (median over rounds per repeat, spread over repeats). `trl113/*` run under trl 1.13.0, `newest/*` "
    "under the newest TRL (our drop-in PRMTrainer)."
)
DEVICES = ("cpu", "cuda")

# A model large enough that the forward/backward pass dominates, small enough for a 2-core CPU; larger on a GPU.
MODELS = {
    "cpu": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
    "cuda": {"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16, "intermediate_size": 2816},
}
SEQ_STEPS = {"cpu": 6, "cuda": 24}  # steps per row
WARMUP = 2  # untimed rounds
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
#: Longest wait for one step of one configuration, in seconds, before the run is declared stuck.
STEP_TIMEOUT = 600


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


class _Baton:
    """Worker side of the lockstep: report through one named pipe, wait for the next turn on the other.

    The coordinator holds both pipes open read-write, so opening them here never blocks; if the coordinator goes
    away, the wait ends with an error instead of hanging.
    """

    def __init__(self, go_path: str, done_path: str):
        self.go = open(go_path)
        self.done = open(done_path, "w")

    def send(self, message: dict) -> None:
        self.done.write(json.dumps(message) + "\n")
        self.done.flush()

    def pass_and_wait(self, message: dict) -> None:
        self.send(message)
        if self.go.readline().strip() != "go":
            raise RuntimeError("the benchmark coordinator went away")

    def close(self) -> None:
        self.go.close()
        self.done.close()


def worker(
    trainer_kind: str,
    labels: str,
    steps: int,
    batch_size: int,
    device: str = "cpu",
    go: str | None = None,
    done: str | None = None,
) -> dict:
    """Train one configuration in this process, optionally in lockstep with others, and time every step.

    Args:
        trainer_kind (`str`):
            `"prm"` (`trl_erprm.PRMTrainer`: TRL's on trl 1.13, the drop-in elsewhere) or `"erprm"`.
        labels (`str`):
            `"hard"`, `"soft"` or `"outcomes"` (see [`stepwise_rows`]).
        steps (`int`):
            Optimizer steps, warm-up included.
        batch_size (`int`):
            Rows per step.
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` (float32, 1 thread) or `"cuda"` (bfloat16).
        go (`str`, *optional*):
            Named pipe on which to wait for each turn (with `done`); runs freely without it.
        done (`str`, *optional*):
            Named pipe on which to report the end of each step.

    Returns:
        `dict`: Per step `tokens` (non-padding), `wall` and `cpu` (seconds of wall time and of CPU time of this
        process, from getting the turn to the end of the step); `peak_rss_mb` (whole process), `train_peak_mb` (growth
        during training), `trl_version`.
    """
    baton = _Baton(go, done) if go else None
    try:
        return _train(trainer_kind, labels, steps, batch_size, device, baton)
    except BaseException:
        if baton is not None:
            baton.send({"error": traceback.format_exc()})
        raise
    finally:
        if baton is not None:
            baton.close()


def _train(trainer_kind: str, labels: str, steps: int, batch_size: int, device: str, baton: _Baton | None) -> dict:
    with open("/proc/self/clear_refs", "w") as f:  # a forked worker starts its own peak RSS here
        f.write("5")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl_erprm import ERPRMConfig, ERPRMTrainer, PRMConfig, PRMTrainer
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    on_cuda = device == "cuda"
    if not on_cuda:
        torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, "token_classification", seed=0, **MODELS[device])
    common = {
        "output_dir": "/tmp/bench-trainer",
        "use_cpu": not on_cuda,
        "bf16": on_cuda,
        "report_to": "none",
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "per_device_train_batch_size": batch_size,
        "max_steps": steps,
        "disable_tqdm": True,
        "logging_steps": 1000,
        "seed": 0,
    }
    dataset = Dataset.from_list(stepwise_rows(batch_size * steps, SEQ_STEPS[device], labels))

    class Lockstep(TrainerCallback):
        """Hand the turn over at the start of training and after every step; time each step from its turn."""

        def __init__(self):
            self.resume, self.steps = (0.0, 0.0), []

        def turn(self) -> None:
            if baton is not None:
                baton.pass_and_wait({"step": len(self.steps), "pid": os.getpid()})
            self.resume = (time.perf_counter(), time.process_time())

        def on_train_begin(self, args, state, control, **kwargs):
            self.turn()

        def on_step_end(self, args, state, control, **kwargs):
            if on_cuda:
                torch.cuda.synchronize()
            self.steps.append((time.perf_counter() - self.resume[0], time.process_time() - self.resume[1]))
            self.turn()

    lockstep = Lockstep()
    config_class, trainer_class = (PRMConfig, PRMTrainer) if trainer_kind == "prm" else (ERPRMConfig, ERPRMTrainer)
    trainer = trainer_class(
        model=model,
        args=config_class(**common),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[lockstep],
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
    return {
        "tokens": tokens[: len(lockstep.steps)],
        "wall": [wall for wall, _ in lockstep.steps],
        "cpu": [cpu for _, cpu in lockstep.steps],
        "peak_rss_mb": process_peak,
        "train_peak_mb": train_peak,
        "trl_version": trl.__version__,
    }


def serve() -> None:
    """Worker server: import the libraries once, then run each batch of jobs read from stdin in forked children.

    Each stdin line is a JSON list of [`worker`] keyword arguments; every job runs in its own forked child, all at
    once (a lockstep run needs them alive together); the answer is one JSON line on stdout, the list of the workers'
    results (or `{"error": traceback}`), in order. A forked child starts with the libraries already imported and with
    its own memory, so its peaks are its own.
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
        children = []
        for job in json.loads(line):
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
            children.append((pid, read))
        results = []
        for pid, read in children:
            with os.fdopen(read) as f:
                payload = f.read()
            _, status = os.waitpid(pid, 0)
            results.append(json.loads(payload) if payload else {"error": f"worker died (wait status {status})"})
        channel.write(json.dumps(results) + "\n")
        channel.flush()


class _Server:
    """A [`serve`] process under another interpreter: `submit(jobs)`, then `result()` for their results."""

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

    def submit(self, jobs: list[dict]) -> None:
        self.process.stdin.write(json.dumps(jobs) + "\n")
        self.process.stdin.flush()

    def result(self) -> list[dict]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark server exited with status {self.process.wait()}:\n{self.stderr()}")
        return json.loads(line)

    def stderr(self, chars: int = 3000) -> str:
        """The last `chars` characters the server wrote to stderr."""
        self.log.seek(0)
        return self.log.read()[-chars:]

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_message(fd: int, name: str, pid: int | None) -> dict:
    """One JSON line from a worker's `done` pipe; raise if the worker reports an error, dies or times out."""
    data, waited = b"", 0.0
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            data += os.read(fd, 65536)
            continue
        waited += 1.0
        if (pid is not None and not _alive(pid)) or waited > STEP_TIMEOUT:
            raise RuntimeError(f"benchmark worker {name} died or stalled")
    message = json.loads(data)
    if "error" in message:
        raise RuntimeError(f"benchmark worker {name} failed:\n{message['error']}")
    return message


def lockstep(servers: dict[str, _Server], job: dict, rounds: int, folder: Path) -> dict[str, dict]:
    """Train every configuration of [`CONFIGS`] in its own process, one step each in turn, and collect the results.

    Args:
        servers (`dict[str, _Server]`):
            A server per environment (`"trl113"`, `"newest"`); configurations of a missing environment are left out.
        job (`dict`):
            [`worker`] arguments shared by every configuration (`steps`, `batch_size`, `device`).
        rounds (`int`):
            Number of steps of every configuration (`job["steps"]`).
        folder (`Path`):
            An empty folder for the named pipes.

    Returns:
        `dict[str, dict]`: The [`worker`] result of each configuration, by name (`"trl113/prm_hard"`, ...).
    """
    configs = [(kind, t, labels) for kind, t, labels in CONFIGS if kind in servers]
    names = [f"{kind}/{t}_{labels}" for kind, t, labels in configs]
    pipes, pids = {}, {}
    try:
        jobs: dict[str, list[dict]] = {}
        for index, ((kind, trainer_kind, labels), name) in enumerate(zip(configs, names)):
            go, done = folder / f"{index}.go", folder / f"{index}.done"
            os.mkfifo(go)
            os.mkfifo(done)
            pipes[name] = (os.open(go, os.O_RDWR), os.open(done, os.O_RDWR))
            job_ = {**job, "trainer_kind": trainer_kind, "labels": labels, "go": str(go), "done": str(done)}
            jobs.setdefault(kind, []).append(job_)
        for kind, server_jobs in jobs.items():
            servers[kind].submit(server_jobs)
        for name in names:  # every worker has built its trainer and waits at the start of training
            pids[name] = _read_message(pipes[name][1], name, None)["pid"]
        for step in range(rounds):
            shift = step % len(names)
            for name in names[shift:] + names[:shift]:
                os.write(pipes[name][0], b"go\n")
                _read_message(pipes[name][1], name, pids[name])
        for name in names:  # let every worker finish `train()` and report
            os.write(pipes[name][0], b"go\n")
        results = {}
        for kind in jobs:
            kind_names = [n for n in names if n.startswith(f"{kind}/")]
            for name, result in zip(kind_names, servers[kind].result()):
                if "error" in result:
                    raise RuntimeError(f"benchmark worker {name} failed:\n{result['error']}")
                results[name] = result
        return results
    finally:
        for go_fd, done_fd in pipes.values():  # a worker still waiting for its turn sees the end and stops
            os.close(go_fd)
            os.close(done_fd)


def _per_repeat(results: dict[str, dict], warmup: int) -> tuple[dict, dict]:
    """Median tokens/s of each configuration and median per-round ratios against the baseline, for one repeat."""
    rates = {}
    for name, result in results.items():
        timed = list(zip(result["tokens"], result["wall"], result["cpu"]))[warmup:]
        rates[name] = {
            "tokens/s": [n / wall for n, wall, _ in timed],
            "tokens/CPU-s": [n / max(cpu, 1e-9) for n, _, cpu in timed],
        }
    samples = {
        name: {
            "tokens_per_s": statistics.median(rate["tokens/s"]),
            "tokens_per_cpu_s": statistics.median(rate["tokens/CPU-s"]),
            "peak_rss_mb": results[name]["peak_rss_mb"],
            "train_peak_mb": results[name]["train_peak_mb"],
        }
        for name, rate in rates.items()
    }
    ratios = {}
    if BASELINE in results:
        base = rates[BASELINE]
        for name in results:
            if name == BASELINE:
                continue
            for label in ("tokens/s", "tokens/CPU-s"):
                per_round = [a / b for a, b in zip(rates[name][label], base[label])]
                ratios[f"{name} / {BASELINE} {label}"] = statistics.median(per_round)
            peak = results[name]["train_peak_mb"] / results[BASELINE]["train_peak_mb"]
            ratios[f"{name} / {BASELINE} training peak memory"] = peak
    return samples, ratios


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Run every configuration in lockstep, `repeats` times with fresh processes.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            3 repeats of 16 timed steps instead of 5 repeats of 40.
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` or `"cuda"` (a larger model, bfloat16, CUDA memory).

    Returns:
        `dict`: `settings`, `samples` (per configuration, per-repeat lists of median tokens/s, tokens per CPU-second,
        process peak RSS and training peak memory), `ratios` (per repeat: the median over rounds of the per-round
        ratio against `trl113/prm_hard`, and the ratio of training peak memory), `checks` (ERPRMTrainer on soft labels
        and on outcomes at most 5% slower than the baseline), `environments`, `notes`.
    """
    repeats, steps = (3, 16) if quick else (5, 40)
    batch = 16 if device == "cuda" else 8
    pythons = {kind: find_python(kind) for kind in ("newest", "trl113")}
    servers = {kind: _Server(python) for kind, python in pythons.items() if python is not None}
    samples: dict[str, dict[str, list[float]]] = {}
    ratios: dict[str, list[float]] = {}
    versions = {}
    try:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as folder:
                job = {"steps": WARMUP + steps, "batch_size": batch, "device": device}
                results = lockstep(servers, job, WARMUP + steps, Path(folder))
            for name, result in results.items():
                versions[name.split("/")[0]] = result["trl_version"]
            repeat_samples, repeat_ratios = _per_repeat(results, WARMUP)
            for name, metrics in repeat_samples.items():
                for metric, value in metrics.items():
                    samples.setdefault(name, {}).setdefault(metric, []).append(value)
            for key, value in repeat_ratios.items():
                ratios.setdefault(key, []).append(value)
    finally:
        for server in servers.values():
            server.close()

    checks = {}
    for key, what in (("erprm_soft", "soft labels"), ("erprm_outcomes", "ER labels from outcomes")):
        for label in ("tokens/s", "tokens/CPU-s"):
            values = ratios.get(f"trl113/{key} / {BASELINE} {label}")
            if values:
                name = f"ERPRMTrainer ({what}) {label} >= {1 - MAX_SLOWDOWN:.2f}x PRMTrainer (hard), median"
                checks[name] = statistics.median(values) >= 1 - MAX_SLOWDOWN
    missing = [kind for kind, python in pythons.items() if python is None]
    precision = "bfloat16 on CUDA" if device == "cuda" else "float32 on CPU, 1 torch thread"
    return {
        "settings": {
            "model": f"Qwen2 token classifier {MODELS[device]}",
            "steps_per_row": SEQ_STEPS[device],
            "batch_size": batch,
            "timed_steps": steps,
            "warmup_steps": WARMUP,
            "repeats": repeats,
            "precision": precision,
        },
        "samples": samples,
        "ratios": ratios,
        "checks": checks,
        "environments": {kind: {"python": python, "trl": versions.get(kind)} for kind, python in pythons.items()},
        "notes": (
            "tokens/s counts non-padding tokens per second of wall time; tokens/CPU-s per CPU-second of the worker "
            "process (with one torch thread, what a dedicated core delivers). The training peak memory is the growth "
            "of the resident set (CUDA: allocated memory) during `train()` over what was held before it; the process "
            "peak RSS includes the libraries and the model."
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
