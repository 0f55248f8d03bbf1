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
- **Labeler vs raw `generate`**: a whole labeling job of the rows (prompts, rollouts, math-verify grading,
  appends with fsync, merge, `save_to_disk`) in generated tokens per second of wall time, against `model.generate`
  (sampling, the same prompts, `N = 8` sequences each, the same chunks of `generation_batch_size` sequences sorted by
  length); and the share of the job's wall time spent outside the backend (grading, bookkeeping, writes).
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
        "rows": {"quick": 16, "full": 64},
        "repeats": {"quick": 2, "full": 3},
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


def _raw_generate(model, prompts, n, settings) -> int:
    """`model.generate` (sampling) on the prompts, `n` sequences each, in chunks sorted by length; generated tokens."""
    import torch

    sequences = sorted((p for p in prompts for _ in range(n)), key=len)
    eos, tokens = model.generation_config.eos_token_id, 0
    with torch.inference_mode():
        for start in range(0, len(sequences), settings["generation_batch_size"]):
            chunk = sequences[start : start + settings["generation_batch_size"]]
            width = max(map(len, chunk))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=settings["max_new_tokens"],
                pad_token_id=0,
                eos_token_id=eos,
            )
            for row in output[:, width:].tolist():
                tokens += next((k + 1 for k, t in enumerate(row) if t == eos), len(row))
    return tokens


def _labeler_vs_generate(model_path, tokenizer, rows, prompts, settings, tmp, out) -> None:
    """A whole labeling job against raw `generate` on the same prompts, in generated tokens per wall second."""
    from trl_erprm.labeling.backends import TransformersBackend
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
    with MathVerifyGrader(num_workers=1) as grader:
        grader.grade(["\\boxed{1}"], ["1"])  # the worker is up before the clock starts
        for repeat in range(settings["repeats"]):
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
            with _Clock(settings["device"]) as clock:
                job.label(rows)
            run = job.summary["this_run"]
            with _Clock(settings["device"]) as raw:
                raw_tokens = _raw_generate(backend.model, prompts, n, settings)
            out.setdefault("labeler job seconds", []).append(clock.wall)
            out.setdefault("labeler job cpu_seconds (grading workers excluded)", []).append(clock.cpu)
            out.setdefault("raw generate cpu_seconds", []).append(raw.cpu)
            out.setdefault("labeler job generated tokens", []).append(run["generated_tokens"])
            out.setdefault("labeler job share of time outside generation", []).append(
                1 - run["generation_seconds"] / clock.wall
            )
            out.setdefault("raw generate seconds", []).append(raw.wall)
            out.setdefault("raw generate generated tokens", []).append(raw_tokens)
            out["ratios"].setdefault(f"labeler job / raw generate, generated tokens/s, N={n}, wall time", []).append(
                (run["generated_tokens"] / clock.wall) / (raw_tokens / raw.wall)
            )


def _reuse_on_quickstart(out, quick: bool) -> None:
    """Share of step prefixes reused on solutions sampled by the quickstart's policy (from the rollout keys)."""
    from trl_erprm.labeling.labeler import ERPRMLabeler
    from trl_erprm.quickstart.pipeline import FAST_SETTINGS, STEP_SEPARATOR, default_policy_dir, stage_seed
    from trl_erprm.quickstart.policy import PolicyConfig, load_policy, policy_path, sample_solutions, train_policy
    from trl_erprm.quickstart.task import check_solution, generate_problems

    folder = default_policy_dir()
    policy = PolicyConfig(max_steps=1000)  # the quickstart's default policy, if it is cached
    if not (policy_path(folder, policy) / "model.safetensors").is_file():
        policy = PolicyConfig(max_steps=FAST_SETTINGS["policy_steps"])  # else the `--fast` one (trained once)
    path = train_policy(folder, policy, show_progress=False)
    model, tokenizer = load_policy(path)
    problems = generate_problems(16 if quick else 64, seed=stage_seed(0, "bench-labeler"))
    labeler = ERPRMLabeler(
        model_name_or_path=path,
        tokenizer=tokenizer,
        num_rollouts=8,
        max_new_tokens=96,
        seed=stage_seed(0, "rollouts"),
        prefix_placement="assistant",
        user_instruction="",
        step_separator=STEP_SEPARATOR,
    )
    for per_problem in (4, 16):
        texts = sample_solutions(model, problems, n=per_problem, seed=1, tokenizer=tokenizer, max_new_tokens=96)
        keys = []
        for problem, group in zip(problems, texts):
            for text in group:
                steps = [s for s in check_solution(problem, text, STEP_SEPARATOR).steps if s]
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
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TRL_ERPRM_BENCH_T0": repr(time.time())}
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
            _prefix_sharing(model_path, tokenizer, prompts, seeds, settings, out)
            _labeler_vs_generate(model_path, tokenizer, rows, prompts, settings, tmp, out)
            _first_rollout(model_path, rows[:1], settings, tmp, out)
            _vllm_vs_transformers(model_path, rows, settings, tmp, out)
            if device == "cpu":
                _reuse_on_quickstart(out, quick)
    finally:
        torch.set_num_threads(threads)
    median = _median
    for n in settings["num_rollouts"]:
        ratios = out["ratios"][
            f"prefix-shared / per-rollout prefill generation speed, N={n}, "
            + ("CPU time" if device == "cpu" else "wall time")
        ]
        out["checks"][f"prefix-shared >= 2x per-rollout prefill, N={n} (median)"] = median(ratios) >= 2.0
        out["checks"][f"N={n}: at least 95% of the samples identical either way (float32 rounding)"] = (
            min(out[f"N={n} share of identical samples"]) >= 0.95
        )
    labeler_ratio = next(v for k, v in out["ratios"].items() if k.startswith("labeler job / raw generate"))
    out["checks"]["labeler job >= 0.9x raw generate tokens/s (median)"] = median(labeler_ratio) >= 0.9
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
