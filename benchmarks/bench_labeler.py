"""ER-PRM labeling at realistic shapes: prefix sharing, the labeler against raw `generate`, reuse, vLLM, start-up.

Run: `python benchmarks/bench_labeler.py [--quick] [--device cuda]` (or through `benchmarks/run.py`).

The rows have the shapes of real labeling jobs: a problem of about 150 tokens, 6 to 10 steps of about 40 tokens
(GSM8K text cut to these lengths), rollouts of up to 256 new tokens, `N` = 8 and 16 rollouts per step prefix. The
generator is a random Qwen2 built locally (4 layers of width 256 on the CPU, 12 of width 1024 in bfloat16 on a GPU;
MLPs 4 and 2.75 times as wide, as in Llama and Qwen);
its rollouts are noise, but they end at EOS at varied lengths, as real rollouts do. Measurements, each against its
baseline in the same run:

- **Prefix-shared vs per-rollout prefill** (`N` = 8 and 16): the transformers backend's samples of every step prefix
  with `share_prefix=True` (each prefix prefilled once, its keys and values kept once and read once per decoding step
  for all its samples) against `share_prefix=False` (one prefill per rollout, the prefix copied in every row); same
  seeds, so the same samples (the share of identical samples is reported: float32 rounding may rarely change one).
  On the CPU the ratio is taken in CPU time (one torch thread), which a loaded machine barely moves.
- **Labeler vs its backend and vs plain `generate`, on the same sequences**: a whole labeling job of the rows
  (prompts, rollouts, math-verify grading, appends with fsync, merge, `save_to_disk`) in generated tokens per second
  of wall time, against (a) the same backend alone on the job's prompts and seeds (exactly the job's rollouts: the
  backend's own ceiling; timed before and after the job, mean) and (b) plain `model.generate` (HF's cache, no prefix
  sharing, chunks of `generation_batch_size` sequences sorted by length) made to produce exactly those sequences by
  a logits processor; and the share of the job's wall time spent outside the backend (grading, bookkeeping, writes).
  The input is a `datasets.Dataset`, as `trl-erprm label` hands it over: importing `datasets` is start-up.
- **Reuse on the quickstart's solutions**: the share of step prefixes whose rollouts a job does not generate again,
  from the rollout keys of the solutions the quickstart's policy samples (its cached policy, else one trained with
  the quickstart's `--fast` settings), 4 per problem (what the quickstart labels) and 16 per problem.
- **vLLM vs transformers**: the same labeling job with the `vllm` backend (vLLM's CPU build on the CPU) and the
  `transformers` backend, in the vLLM environment (`.ci/vllm_env.sh`; skipped with a note when there is none).
- **Time to first rollout**: from starting `trl-erprm label` to the first backend call, against a bare script that
  imports torch and transformers and loads the same model and tokenizer (fresh processes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "gsm8k_test.jsonl"
DEVICES = ("cpu", "cuda")
DESCRIPTION = (
    "ER-PRM labeling at realistic shapes (problem ~150 tokens, 6-10 steps of ~40 tokens, rollouts up to 256 new "
    "tokens, N = 8 and 16) with a random Qwen2: the transformers backend with prefix sharing against per-rollout "
    "prefill (same seeds, same samples); a whole labeling job against raw `model.generate` on the same prompts; the "
    "share of step prefixes reused on the quickstart's sampled solutions; the vLLM backend against the transformers "
    "backend on the same job (vLLM environment); and the time from `trl-erprm label` to its first rollout against a "
    "bare model load."
)
#: The shapes of the rows and rollouts (both devices).
SHAPES = {"prompt_tokens": 150, "min_steps": 6, "max_steps": 10, "step_tokens": 40, "max_new_tokens": 256}
#: What a device changes: the generator, its dtype, the number of rows, repeats, sequences per chunk.
PLANS = {
    "cpu": {
        "model": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
        "dtype": "float32",
        "rows": {"quick": 2, "full": 5},
        "repeats": {"quick": 1, "full": 3},
        "generation_batch_size": 128,
    },
    "cuda": {
        "model": {"hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16, "intermediate_size": 2816},
        "dtype": "bfloat16",
        "rows": {"quick": 8, "full": 64},  # quick: about 3 minutes on one H200 (benchmarks/gpu_check.sh)
        "repeats": {"quick": 1, "full": 3},
        "generation_batch_size": 256,
    },
}
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}


def plan(quick: bool = False, device: str = "cpu") -> dict:
    """The settings of a run on `device`, without running anything.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Fewer rows and repeats.
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` or `"cuda"`.

    Returns:
        `dict`: `device`, `model` (Qwen2 sizes), `dtype`, `rows`, `repeats`, `generation_batch_size`, `num_rollouts`
        and the [`SHAPES`].

    Raises:
        `ValueError`: For another device.
    """
    if device not in PLANS:
        raise ValueError(f"device must be one of {list(PLANS)}, got {device!r}.")
    size = "quick" if quick else "full"
    chosen = PLANS[device]
    return {
        "device": device,
        "model": dict(chosen["model"]),
        "dtype": chosen["dtype"],
        "rows": chosen["rows"][size],
        "repeats": chosen["repeats"][size],
        "generation_batch_size": chosen["generation_batch_size"],
        "num_rollouts": [8, 16],
        **SHAPES,
    }


def realistic_rows(tokenizer, num_rows: int) -> list[dict]:
    """Stepwise rows of the [`SHAPES`]: GSM8K problems and solution text cut to ~150-token problems and 6-10 steps of
    ~40 tokens (row `i` has `6 + i % 5` steps), with gold answer "18".

    Args:
        tokenizer: The generator's tokenizer (it decides what a token is).
        num_rows (`int`):
            Number of rows.

    Returns:
        `list[dict]`: Rows with `prompt`, `completions` and `gold_answer`.
    """
    from trl_erprm.data import gsm8k_to_stepwise

    lines = [json.loads(line) for line in DATA.read_text().splitlines()]
    questions = tokenizer(" ".join(r["question"] for r in lines), add_special_tokens=False)["input_ids"]
    # The reference solutions without calculator annotations and final answers (the rows' gold is "18").
    steps = [s for i, r in enumerate(lines) for s in gsm8k_to_stepwise(r, i)["completions"][:-1]]
    solutions = tokenizer(" ".join(steps), add_special_tokens=False)["input_ids"]
    rows, q, s = [], 0, 0
    for i in range(num_rows):
        prompt = tokenizer.decode(questions[q : q + SHAPES["prompt_tokens"]]).strip()
        q += SHAPES["prompt_tokens"]
        steps = []
        for _ in range(SHAPES["min_steps"] + i % (SHAPES["max_steps"] - SHAPES["min_steps"] + 1)):
            steps.append(tokenizer.decode(solutions[s : s + SHAPES["step_tokens"]]).strip())
            s += SHAPES["step_tokens"]
        rows.append({"prompt": prompt, "completions": steps, "gold_answer": "18"})
    return rows


class _Clock:
    """Wall and CPU seconds of a block (CUDA synchronised on a GPU)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        self._sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info):
        self._sync()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def _sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


def _build_generator(folder: Path, settings: dict) -> str:
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer(folder)
    build_tiny_model(tokenizer, "causal_lm", save_dir=folder, seed=0, **settings["model"])
    return str(folder)


def _prompts(labeler, rows) -> tuple[list[list[int]], list[int]]:
    """The rollout prompt and seed of every step prefix, as the labeler makes them."""
    prompts = [
        labeler.rollout_prompt(r["prompt"], r["completions"][:k])
        for r in rows
        for k in range(1, len(r["completions"]))
    ]
    return prompts, [labeler.rollout_seed(p) for p in prompts]


def _prefix_sharing(model_path, tokenizer, prompts, seeds, settings, out) -> None:
    """Prefix-shared against per-rollout prefill, per N, interleaved repeats."""
    from trl_erprm.labeling.backends import Sampling, TransformersBackend

    sampling = Sampling(1.0, 1.0, settings["max_new_tokens"])
    backends = {
        share: TransformersBackend(
            model_path,
            tokenizer=tokenizer,
            batch_size=settings["generation_batch_size"],
            dtype=settings["dtype"],
            share_prefix=share,
            device=settings["device"],
        )
        for share in (True, False)
    }
    for backend in backends.values():
        backend.generate(prompts[:1], 2, Sampling(1.0, 1.0, 4), seeds[:1])  # warm-up (and the shared-attention check)
    out["checks"]["the prefix-shared path shares the attention over the prefix"] = backends[
        True
    ]._decoder.shares_attention()
    for n in settings["num_rollouts"]:
        for _ in range(settings["repeats"]):
            results = {}
            for share, backend in backends.items():
                prefilled = backend.stats["prefill_tokens"]
                with _Clock(settings["device"]) as clock:
                    results[share] = backend.generate_completions(prompts, n, sampling, seeds)
                name = "prefix_shared" if share else "per_rollout"
                out[f"N={n} {name} prefill tokens"] = backend.stats["prefill_tokens"] - prefilled
                out.setdefault(f"N={n} {name} seconds", []).append(clock.wall)
                out.setdefault(f"N={n} {name} cpu_seconds", []).append(clock.cpu)
            tokens = sum(c.num_tokens for row in results[True] for c in row)
            same = sum(a == b for x, y in zip(results[True], results[False]) for a, b in zip(x, y)) / (
                len(prompts) * n
            )
            out.setdefault(f"N={n} generated tokens", []).append(tokens)
            out.setdefault(f"N={n} share of identical samples", []).append(same)
            key = "CPU time" if settings["device"] == "cpu" else "wall time"
            unit = "cpu_seconds" if settings["device"] == "cpu" else "seconds"
            out["ratios"].setdefault(f"prefix-shared / per-rollout prefill generation speed, N={n}, {key}", []).append(
                out[f"N={n} per_rollout {unit}"][-1] / out[f"N={n} prefix_shared {unit}"][-1]
            )


def _forced_generate(model, sequences, settings) -> list[list[int]]:
    """Plain `model.generate` (sampling, no prefix sharing, HF's own cache) made to produce exactly the given
    sequences: `sequences` are `(prompt ids, generated ids)` pairs, run in chunks of `generation_batch_size` sorted by
    length, and a logits processor leaves only the recorded token of each row (its cost, one `scatter` per step, is
    noise next to the model). Returns the generated ids of each pair, up to and including EOS."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Force(LogitsProcessor):
        def __init__(self, targets: torch.Tensor, start: int):
            self.targets, self.start = targets, start

        def __call__(self, input_ids, scores):
            t = min(input_ids.shape[1] - self.start, self.targets.shape[1] - 1)
            forced = torch.full_like(scores, float("-inf"))
            return forced.scatter_(1, self.targets[:, t : t + 1], 0.0)

    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k][0]))
    eos, pad = model.generation_config.eos_token_id, 0
    eos = eos[0] if isinstance(eos, list) else eos
    out: list[list[int]] = [[] for _ in sequences]
    with torch.inference_mode():
        for start in range(0, len(order), settings["generation_batch_size"]):
            chunk = order[start : start + settings["generation_batch_size"]]
            prompts = [sequences[k][0] for k in chunk]
            width, steps = max(map(len, prompts)), max(len(sequences[k][1]) for k in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
            targets = torch.tensor(
                [list(sequences[k][1]) + [eos] * (steps - len(sequences[k][1])) for k in chunk], device=model.device
            )
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=steps,
                pad_token_id=pad,
                eos_token_id=eos,
                logits_processor=LogitsProcessorList([Force(targets, width)]),
            )
            for k, row in zip(chunk, output[:, width:].tolist()):
                out[k] = row[: next((j + 1 for j, t in enumerate(row) if t == eos), len(row))]
    return out


def _labeler_vs_generate(model_path, tokenizer, rows, prompts, seeds, settings, tmp, out) -> None:
    """A whole labeling job against the backend alone and against plain `generate`, on the same sequences, in
    generated tokens per wall second."""
    from datasets import Dataset

    from trl_erprm.labeling.backends import Sampling, TransformersBackend
    from trl_erprm.labeling.grading import MathVerifyGrader
    from trl_erprm.labeling.labeler import ERPRMLabeler

    n = settings["num_rollouts"][0]
    backend = TransformersBackend(
        model_path,
        tokenizer=tokenizer,
        batch_size=settings["generation_batch_size"],
        dtype=settings["dtype"],
        device=settings["device"],
    )
    backend.generate(prompts[:1], 2, Sampling(1.0, 1.0, 4), seeds[:1])  # warm-up (and the shared-attention check)
    # The input as `trl-erprm label` hands it over (a `datasets.Dataset`, loaded before the job starts): importing
    # `datasets` is start-up, measured by the time to first rollout, not part of the job.
    dataset = Dataset.from_list(rows)
    sampling = Sampling(1.0, 1.0, settings["max_new_tokens"])
    with MathVerifyGrader(num_workers=1) as grader:
        grader.grade(["\\boxed{1}"], ["1"])  # the worker is up before the clock starts
        for repeat in range(settings["repeats"]):
            graded = grader.stats()["graded"]
            job = ERPRMLabeler(
                model_name_or_path=model_path,
                tokenizer=tokenizer,
                backend=backend,
                grader=grader,
                output_dir=str(tmp / f"job{repeat}"),
                num_rollouts=n,
                max_new_tokens=settings["max_new_tokens"],
                batch_size=len(rows),
                generation_batch_size=settings["generation_batch_size"],
            )
            with _Clock(settings["device"]) as before:
                backend.generate_completions(prompts, n, sampling, seeds)
            with _Clock(settings["device"]) as clock:
                job.label(dataset)
            run = job.summary["this_run"]
            # The backend alone on the job's prompts and seeds: exactly the job's rollouts (the backend's ceiling),
            # timed just before and just after the job (their mean is the baseline: a drifting load hits both sides).
            with _Clock(settings["device"]) as after:
                completions = backend.generate_completions(prompts, n, sampling, seeds)
            alone_seconds = (before.wall + after.wall) / 2
            sequences = [(p, c.token_ids) for p, row in zip(prompts, completions) for c in row]
            alone_tokens = sum(len(ids) for _, ids in sequences)
            with _Clock(settings["device"]) as raw:
                forced = _forced_generate(backend.model, sequences, settings)
            out["checks"]["plain generate produced exactly the labeler's sequences"] = out["checks"].get(
                "plain generate produced exactly the labeler's sequences", True
            ) and forced == [list(ids) for _, ids in sequences]
            out["checks"]["the backend alone generated the labeler job's tokens"] = out["checks"].get(
                "the backend alone generated the labeler job's tokens", True
            ) and (alone_tokens == run["generated_tokens"])
            speed = run["generated_tokens"] / clock.wall
            out.setdefault("labeler job seconds", []).append(clock.wall)
            out.setdefault("labeler job cpu_seconds (grading workers excluded)", []).append(clock.cpu)
            out.setdefault("labeler job generated tokens", []).append(run["generated_tokens"])
            out.setdefault("labeler job rollouts graded by math-verify workers", []).append(
                grader.stats()["graded"] - graded
            )
            out.setdefault("labeler job share of time outside generation", []).append(
                1 - run["generation_seconds"] / clock.wall
            )
            out.setdefault("backend alone seconds (mean of before and after the job)", []).append(alone_seconds)
            out.setdefault("plain generate seconds", []).append(raw.wall)
            out.setdefault("plain generate cpu_seconds", []).append(raw.cpu)
            out["ratios"].setdefault(
                f"labeler job / backend alone (same sequences), generated tokens/s, N={n}, wall time", []
            ).append(speed / (alone_tokens / alone_seconds))
            out["ratios"].setdefault(
                f"labeler job / plain generate (same sequences, no prefix sharing), generated tokens/s, N={n}, "
                "wall time",
                [],
            ).append(speed / (alone_tokens / raw.wall))
    out["notes"].append(
        "Labeler vs generate: the backend alone and plain `model.generate` (HF's cache, no prefix sharing, each "
        "sequence prefilled on its own; a logits processor makes it produce the labeler's tokens) generate exactly "
        "the job's rollouts, so the three do the same work; the first ratio is the job's overhead over its backend "
        "(grading, bookkeeping, writes), the second adds what prefix sharing gains over plain `generate`. The "
        "rollouts of a random generator rarely state a final answer, so few reach the math-verify workers (see "
        "'rollouts graded by math-verify workers'): grading costs more on real rollouts."
    )


def _reuse_on_quickstart(out, quick: bool) -> None:
    """Share of step prefixes reused on solutions sampled by the quickstart's policy (from the rollout keys)."""
    from trl_erprm.labeling.labeler import ERPRMLabeler
    from trl_erprm.quickstart.common import STEP_SEPARATOR, sample_candidates, stage_seed
    from trl_erprm.quickstart.config import FAST_SETTINGS, default_policy_dir, quickstart_config
    from trl_erprm.quickstart.policy import PolicyConfig, load_policy, policy_path, train_policy
    from trl_erprm.quickstart.task import generate_problems

    folder, config = default_policy_dir(), quickstart_config()
    policy = PolicyConfig(max_steps=config.policy_steps, misconception=config.misconception, seed=0)
    if not (policy_path(folder, policy) / "model.safetensors").is_file():  # the default policy, if it is cached
        policy = PolicyConfig(max_steps=FAST_SETTINGS["policy_steps"], misconception=config.misconception, seed=0)
    path = train_policy(folder, policy, show_progress=False)  # else the `--fast` one (trained once)
    model, tokenizer = load_policy(path)
    problems = generate_problems(16 if quick else 64, seed=stage_seed(0, "bench-labeler"))
    labeler = ERPRMLabeler(
        model_name_or_path=path,
        tokenizer=tokenizer,
        num_rollouts=8,
        max_new_tokens=config.max_new_tokens,
        seed=stage_seed(0, "rollouts"),
        prefix_placement="assistant",
        user_instruction="",
        step_separator=STEP_SEPARATOR,
    )
    for per_problem in (4, 16):
        groups = sample_candidates(model, tokenizer, problems, per_problem, 1, config.max_new_tokens)
        keys = []
        for problem, group in zip(problems, groups):
            for candidate in group:
                steps = [s for s in candidate.steps if s]
                for k in range(1, len(steps)):
                    ids = labeler.rollout_prompt(problem.text, steps[:k])
                    keys.append(labeler.rollout_key(ids, str(problem.answer)))
        out[f"quickstart {per_problem} solutions per problem: step prefixes"] = len(keys)
        out[f"quickstart {per_problem} solutions per problem: share of step prefixes reused"] = 1 - len(
            set(keys)
        ) / max(1, len(keys))
    out["notes"].append(
        f"Reuse: {len(problems)} problems of the quickstart's task, solutions sampled by its policy ({Path(path).name}, "
        f"{policy.max_steps} training steps) at temperature 1; the share is computed from the rollout keys (a job rolls "
        "out exactly one set of N rollouts per distinct key, as tests/test_labeler.py checks with a real model)."
    )


def _vllm_python(device: str) -> str | None:
    """An interpreter with vLLM: this one, else the vLLM environment of `.ci/vllm_env.sh`."""
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    candidates = [os.environ.get("VLLM_VENV"), REPO / ".ci-venvs" / "vllm", Path.home() / ".cache/trl-erprm/vllm-venv"]
    for venv in filter(None, candidates):
        python = Path(venv) / "bin" / "python"
        if python.is_file() and (Path(venv) / ".trl-erprm-recipe").is_file():
            return str(python)
    return None


def _vllm_vs_transformers(model_path, rows, settings, tmp, out) -> None:
    """The same job on the vLLM backend and on the transformers backend, in the vLLM environment's interpreter."""
    python = _vllm_python(settings["device"])
    if python is None:
        out["notes"].append(
            "vLLM vs transformers: skipped, no vLLM here and no vLLM environment (build it with `bash .ci/vllm_env.sh`, "
            "in .ci-venvs/vllm or $VLLM_VENV)."
        )
        return
    spec = tmp / "vllm_job.json"
    spec.write_text(json.dumps({"model": model_path, "rows": rows, "settings": settings, "tmp": str(tmp)}))
    env = {**os.environ, **VLLM_ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [python, __file__, "--vllm-job", str(spec)], env=env, capture_output=True, text=True, timeout=1800
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        out["notes"].append(f"vLLM vs transformers: the job failed ({python}): {result.stderr[-1500:]}")
        out["checks"]["the vLLM job ran"] = False
        return
    measured = json.loads(lines[-1])
    for name, values in measured["samples"].items():
        out.setdefault(f"vllm env: {name}", values)
    out["ratios"]["vllm / transformers backend, labeling job generated tokens/s"] = measured["ratios"]
    out["notes"].append(f"vLLM vs transformers: {measured['environment']}.")


def _vllm_job(spec_path: str) -> None:
    """(In the vLLM environment.) Run the job on each backend; print one JSON line."""
    import importlib.metadata

    import torch

    from trl_erprm.labeling.backends import TransformersBackend, VLLMBackend
    from trl_erprm.labeling.grading import MathVerifyGrader
    from trl_erprm.labeling.labeler import ERPRMLabeler

    spec = json.loads(Path(spec_path).read_text())
    settings, rows, tmp = spec["settings"], spec["rows"], Path(spec["tmp"])
    torch.set_num_threads(1)
    on_gpu = settings["device"] == "cuda"
    backends = {
        "vllm": VLLMBackend(
            spec["model"],
            dtype=settings["dtype"],
            enforce_eager=not on_gpu,
            max_model_len=2048,
            gpu_memory_utilization=0.5 if on_gpu else 0.9,
        ),
        "transformers": TransformersBackend(
            spec["model"],
            batch_size=settings["generation_batch_size"],
            dtype=settings["dtype"],
            device=settings["device"],
        ),
    }
    n = settings["num_rollouts"][0]
    samples, ratios = {}, []
    with MathVerifyGrader(num_workers=1) as grader:
        grader.grade(["\\boxed{1}"], ["1"])
        for repeat in range(settings["repeats"] + 1):  # the first round warms the engines up
            speed = {}
            for name, backend in backends.items():
                job = ERPRMLabeler(
                    model_name_or_path=spec["model"],
                    backend=backend,
                    grader=grader,
                    num_rollouts=n,
                    max_new_tokens=settings["max_new_tokens"],
                    batch_size=len(rows),
                    output_dir=str(tmp / f"vllm-{name}-{repeat}"),
                )
                with _Clock(settings["device"]) as clock:
                    job.label(rows if repeat else rows[:1])
                speed[name] = job.summary["this_run"]["generated_tokens"] / clock.wall
                if repeat:
                    samples.setdefault(f"{name} labeling job generated tokens/s", []).append(speed[name])
            if repeat:
                ratios.append(speed["vllm"] / speed["transformers"])
    environment = (
        f"vllm {importlib.metadata.version('vllm')}, transformers {importlib.metadata.version('transformers')}, "
        f"torch {torch.__version__}, {'GPU' if on_gpu else 'CPU build, enforce_eager'}, N={n}, {len(rows)} rows"
    )
    print(json.dumps({"samples": samples, "ratios": ratios, "environment": environment}))


_FIRST_ROLLOUT = """
import os, sys, time
T0 = float(os.environ["TRL_ERPRM_BENCH_T0"])
import trl_erprm.labeling.backends as backends  # torch-free: the labeler's own first import of it

def first_rollout(*args, **kwargs):
    print(f"FIRST {time.time() - T0:.4f} {time.process_time():.4f}", flush=True)
    os._exit(0)

for cls in (backends.TransformersBackend, backends.VLLMBackend, backends.VLLMServerBackend):
    cls.generate = cls.generate_completions = first_rollout
from trl_erprm.cli import main
sys.exit(main(sys.argv[1:]))
"""
_LOAD_ONLY = """
import os, sys, time
T0 = float(os.environ["TRL_ERPRM_BENCH_T0"])
from trl_erprm.models import load_model, load_tokenizer
model, tokenizer = load_model(sys.argv[1], "causal_lm"), load_tokenizer(sys.argv[1])
model.to(sys.argv[2])
print(f"FIRST {time.time() - T0:.4f} {time.process_time():.4f}", flush=True)
"""


def _timed_child(code: str, args: list[str]) -> tuple[float, float]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # keep what the caller added
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TRL_ERPRM_BENCH_T0": repr(time.time())}
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    line = next((line for line in result.stdout.splitlines() if line.startswith("FIRST ")), None)
    if line is None:
        raise RuntimeError(f"the timed process printed no time: {result.stderr[-2000:]}")
    wall, cpu = map(float, line.split()[1:])
    return wall, cpu


def _first_rollout(model_path, rows, settings, tmp, out) -> None:
    """From `trl-erprm label` to its first rollout, against a bare model load (fresh processes, alternated)."""
    data = tmp / "first_rollout_rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for repeat in range(settings["repeats"] + 1):
        label = [
            "label",
            "--model_name_or_path",
            model_path,
            "--dataset_name",
            str(data),
            "--num_rollouts",
            "8",
            "--max_new_tokens",
            str(settings["max_new_tokens"]),
            "--output_dir",
            str(tmp / f"first-rollout-{repeat}"),
        ]
        job = _timed_child(_FIRST_ROLLOUT, label)
        bare = _timed_child(_LOAD_ONLY, [model_path, settings["device"]])
        for name, (wall, cpu) in (("trl-erprm label to first rollout", job), ("bare model load", bare)):
            out.setdefault(f"{name} seconds", []).append(wall)
            out.setdefault(f"{name} cpu_seconds", []).append(cpu)
        out["ratios"].setdefault("trl-erprm label to first rollout / bare model load, wall time", []).append(
            job[0] / bare[0]
        )
        out["ratios"].setdefault("trl-erprm label to first rollout / bare model load, CPU time", []).append(
            job[1] / bare[1]
        )


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Run every measurement of the module docstring.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Fewer rows and repeats (see [`plan`]).
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` or `"cuda"` (a larger generator in bfloat16, vLLM on the GPU).

    Returns:
        `dict`: `settings`, per-repeat measurements, `ratios`, `checks` and `notes`; `{"skipped": why}` for `"cuda"`
        without a GPU.
    """
    settings = plan(quick, device)
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "--device cuda needs a CUDA GPU; none is visible"}
    from trl_erprm.labeling.labeler import ERPRMLabeler
    from trl_erprm.models import load_tokenizer

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)  # tiny models: a second thread only adds contention on a shared machine
    out: dict = {"ratios": {}, "checks": {}, "notes": []}
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            model_path = _build_generator(tmp / "generator", settings)
            tokenizer = load_tokenizer(model_path)
            rows = realistic_rows(tokenizer, settings["rows"])
            labeler = ERPRMLabeler(model_name_or_path=model_path, tokenizer=tokenizer)
            prompts, seeds = _prompts(labeler, rows)
            out["settings"] = {
                **{k: v for k, v in settings.items() if k not in ("model", "num_rollouts")},
                "model": "Qwen2 " + ", ".join(f"{k}={v}" for k, v in settings["model"].items()),
                "step prefixes": len(prompts),
                "prefix tokens": f"{min(map(len, prompts))}-{max(map(len, prompts))}",
                "N": "8 and 16",
            }
            parts = [
                ("prefix sharing", lambda: _prefix_sharing(model_path, tokenizer, prompts, seeds, settings, out)),
                (
                    "labeler vs generate",
                    lambda: _labeler_vs_generate(model_path, tokenizer, rows, prompts, seeds, settings, tmp, out),
                ),
                ("time to first rollout", lambda: _first_rollout(model_path, rows[:1], settings, tmp, out)),
                ("vLLM vs transformers", lambda: _vllm_vs_transformers(model_path, rows, settings, tmp, out)),
            ]
            if device == "cpu":
                parts.append(("reuse on the quickstart", lambda: _reuse_on_quickstart(out, quick)))
            started = time.perf_counter()
            for name, part in parts:  # progress on stderr: a GPU session sees where its minutes go
                print(f"[bench_labeler] {name} ...", file=sys.stderr, flush=True)
                part()
                print(
                    f"[bench_labeler] {name} done at {time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                if os.environ.get("BENCH_LABELER_PARTIAL"):  # what is measured survives a run stopped later
                    Path(os.environ["BENCH_LABELER_PARTIAL"]).write_text(json.dumps(out, indent=2, default=str))
    finally:
        torch.set_num_threads(threads)
    median = _median
    for n in settings["num_rollouts"]:
        ratios = out["ratios"][
            f"prefix-shared / per-rollout prefill generation speed, N={n}, "
            + ("CPU time" if device == "cpu" else "wall time")
        ]
        out["checks"][f"prefix-shared >= 2x per-rollout prefill, N={n} (median)"] = median(ratios) >= 2.0
        if settings["dtype"] != "float32":
            continue  # bfloat16 rounding changes samples; tests/test_gpu.py checks token identity in float64 on CUDA
        out["checks"][f"N={n}: at least 95% of the samples identical either way (float32 rounding)"] = (
            min(out[f"N={n} share of identical samples"]) >= 0.95
        )
    labeler_ratio = next(v for k, v in out["ratios"].items() if k.startswith("labeler job / backend alone"))
    out["checks"]["labeler job >= 0.9x its backend alone on the same sequences, tokens/s (median)"] = (
        median(labeler_ratio) >= 0.9
    )
    outside = out["labeler job share of time outside generation"]
    out["checks"]["labeler job: grading, bookkeeping and writes <= 10% of its wall time (median)"] = (
        median(outside) <= 0.1
    )
    out["notes"] = " ".join(out["notes"])
    return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


if __name__ == "__main__":
    if sys.argv[1:2] == ["--vllm-job"]:
        _vllm_job(sys.argv[2])
    else:
        device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
        print(json.dumps(run(quick="--quick" in sys.argv[1:], device=device), indent=2))
