"""ER-PRM labeling: batched all-prefix generation vs one prefix at a time, and the job's time outside generation.

Run: `python benchmarks/bench_labeler.py [--quick]`.

A tiny random Qwen2 (built locally) is the generator, with the transformers backend on the CPU; the rows are GSM8K
test problems with their reference solutions split into steps. Two measurements:

- **Batched vs one-at-a-time**: the rollouts of every step prefix of a batch of solutions in one backend call
  (what the labeler does; the transformers backend sorts the sequences by length and runs `generate` on chunks of
  `generation_batch_size = 64`) against one call per prefix (its `n` samples still batched together). Both use the same per-prefix seeds, so they must produce the
  same samples (`same_samples`); only the wall time differs.
- **Share outside generation**: a whole labeling job (prompts, generation, math-verify grading, incremental writes
  with fsync, merge and `save_to_disk`), with the model loaded and the grader's workers started beforehand; the
  share of its wall time not spent in `backend.generate`.

On a GPU with vLLM the generation is far faster and the share outside generation grows: the grading cache and the
worker pool are what keep it small (see `bench_grading.py` for grading throughput with and without the cache).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm8k_test.jsonl"  # 104 GSM8K test rows
DESCRIPTION = (
    "ER-PRM labeling with the transformers backend on a tiny Qwen2 (CPU): the rollouts of every step prefix in one "
    "backend call (what the labeler does) against one call per prefix (the baseline), and the share of a whole "
    "labeling job's wall time spent outside generation (grading, writes, merge)."
)


def _rows(num_rows: int) -> list[dict]:
    from trl_erprm.data import gsm8k_to_stepwise

    lines = DATA.read_text().splitlines()[:num_rows]
    return [gsm8k_to_stepwise(json.loads(line), i) for i, line in enumerate(lines)]


def run(quick: bool = False) -> dict:
    """Measure batched all-prefix generation against one prefix at a time, and a labeling job's overhead.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            16 new tokens and 3 repeats instead of 32 new tokens and 5 repeats (8 problems, 8 rollouts per prefix).

    Returns:
        `dict`: `settings` (`prefixes`, `rollouts` per measurement, `max_new_tokens`, `repeats`), per-repeat
        `batched_seconds`, `one_at_a_time_seconds`, `job_seconds`, `job_generation_seconds`,
        `share_outside_generation`, `job_rollouts_per_s`; `ratios` (batched speedup per repeat), `checks` (same
        samples either way) and `grader_startup_seconds`.
    """
    import torch

    from trl_erprm.labeling.backends import Sampling, TransformersBackend, derive_seed
    from trl_erprm.labeling.grading import MathVerifyGrader
    from trl_erprm.labeling.labeler import ERPRMLabeler
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    num_rows, n, max_tokens, repeats = (8, 8, 16, 3) if quick else (8, 8, 32, 5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: a second thread only adds contention on a shared machine
    out: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = build_tokenizer(Path(tmp) / "model")
            build_tiny_model(tokenizer, "causal_lm", save_dir=Path(tmp) / "model", seed=0)
            model_path = str(Path(tmp) / "model")
            rows = _rows(num_rows)
            backend = TransformersBackend(model_path, tokenizer=tokenizer, batch_size=64)  # the labeler default
            sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=max_tokens)
            labeler = ERPRMLabeler(model_name_or_path=model_path, tokenizer=tokenizer, backend=backend)
            jobs = [(i, r, length) for i, r in enumerate(rows) for length in range(1, len(r["completions"]))]
            prompts = [labeler.rollout_prompt(r["prompt"], r["completions"][:length]) for _, r, length in jobs]
            seeds = [derive_seed(0, i, length) for i, _, length in jobs]
            backend.generate(prompts[:1], n, sampling, seeds[:1])  # warm-up

            start = time.perf_counter()
            grader = MathVerifyGrader(num_workers=1)
            grader.grade(["\\boxed{1}"], ["1"])
            grader_startup = time.perf_counter() - start
            same = True
            for repeat in range(repeats):
                start = time.perf_counter()
                together = backend.generate(prompts, n, sampling, seeds)
                out.setdefault("batched_seconds", []).append(time.perf_counter() - start)
                start = time.perf_counter()
                alone = [backend.generate([p], n, sampling, [s])[0] for p, s in zip(prompts, seeds)]
                out.setdefault("one_at_a_time_seconds", []).append(time.perf_counter() - start)
                same = same and together == alone

                job = ERPRMLabeler(
                    model_name_or_path=model_path,
                    tokenizer=tokenizer,
                    backend=backend,
                    grader=grader,
                    output_dir=str(Path(tmp) / f"job{repeat}"),
                    num_rollouts=n,
                    max_new_tokens=max_tokens,
                    batch_size=num_rows,
                )
                start = time.perf_counter()
                job.label(rows)
                seconds = time.perf_counter() - start
                out.setdefault("job_seconds", []).append(seconds)
                out.setdefault("job_generation_seconds", []).append(job.generation_seconds)
                out.setdefault("share_outside_generation", []).append(1 - job.generation_seconds / seconds)
                out.setdefault("job_rollouts_per_s", []).append(job.rollouts_generated / seconds)
            grader.close()
    finally:
        torch.set_num_threads(threads)
    return {
        "settings": {
            "prefixes": len(prompts),
            "rollouts": len(prompts) * n,
            "max_new_tokens": max_tokens,
            "rows_per_job": num_rows,
            "repeats": repeats,
        },
        **out,
        "grader_startup_seconds": grader_startup,
        "ratios": {
            "batched / one prefix at a time generation speed": [
                a / b for a, b in zip(out["one_at_a_time_seconds"], out["batched_seconds"])
            ]
        },
        "checks": {"batched and one-at-a-time generation give the same samples": same},
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
