"""Grading: throughput with and without the answer cache, and how fast a grader's first grade comes from a heavy process.

Run: `python benchmarks/bench_grading.py [--quick]`.

Throughput: the data imitates what the labeler grades: for each problem (a GSM8K-like integer gold answer, drawn
log-uniformly from 1 to 100,000 so the benchmark needs no data file), `N = 16` rollouts per step prefix whose final
answers repeat massively (most reach the gold answer, a few common wrong answers recur, some give no
answer), written either as "The answer is X" or `\\boxed{X}`. Workers are started before timing, so the figures are
steady-state.

Start-up: the time from creating a `MathVerifyGrader` to its first verdict, and the resident memory of its worker,
in three fresh processes per repeat: a bare script (the grading modules alone, no torch), a process that imported
what `trl-erprm label` imports (torch, transformers, TRL, trl_erprm), and, as the baseline, the previous mechanism in
that same heavy process: a `multiprocessing` forkserver worker, which re-imports the caller's `__main__` (so torch,
transformers and TRL) before it can grade.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DESCRIPTION = (
    "Grading throughput of `MathVerifyGrader` (2 worker processes) on Monte-Carlo-rollout-like answers, with our "
    "answer cache against without it (the baseline), in alternating order over repeats; and the raw math-verify rate "
    "on all-distinct pairs. Start-up: seconds from creating a grader to its first verdict and the worker's resident "
    "memory, from a bare script and from a process that imported torch, transformers, TRL and trl_erprm (as "
    "`trl-erprm label` does), against the previous forkserver worker that re-imported the caller's `__main__`."
)

# The grading modules alone: `trl_erprm` and `trl_erprm.labeling` as empty packages, so nothing else is imported.
_BARE_IMPORTS = f"""
import sys, types
for name, folder in (("trl_erprm", {str(REPO / "trl_erprm")!r}), ("trl_erprm.labeling", {str(REPO / "trl_erprm" / "labeling")!r})):
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
"""
# What `trl-erprm label` has imported by the time its grader starts.
_HEAVY_IMPORTS = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import torch, transformers, trl
import trl_erprm.cli, trl_erprm.labeling.labeler
"""
_MEASURE = """
import json, time
def worker_facts(pid):
    status = open(f"/proc/{pid}/status").read()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return rss_kb / 1024, "libtorch" in open(f"/proc/{pid}/maps").read()
"""
_NEW_GRADER = """
if __name__ == "__main__":
    from trl_erprm.labeling.grading import MathVerifyGrader
    start = time.perf_counter()
    grader = MathVerifyGrader(num_workers=1)
    status = grader.grade(["The answer is 4"], ["4"])[0].status
    seconds = time.perf_counter() - start
    rss, torch_loaded = worker_facts(grader._workers[0].process.pid)
    grader.close()
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "torch_in_worker": torch_loaded, "status": status}))
"""
# The previous mechanism: a forkserver worker (it re-imports the caller's __main__ before running its target).
_OLD_GRADER = """
import multiprocessing
def worker(conn):
    from math_verify import parse, verify
    conn.send("ready")
    answer, gold = conn.recv()
    conn.send("correct" if verify(parse(gold), parse(answer)) else "incorrect")
    try:
        conn.recv()  # stay alive (a persistent worker, like ours) until measured and killed
    except EOFError:
        pass
if __name__ == "__main__":
    start = time.perf_counter()
    context = multiprocessing.get_context("forkserver")
    parent, child = context.Pipe()
    process = context.Process(target=worker, args=(child,), daemon=True)
    process.start()
    assert parent.recv() == "ready"
    parent.send(("4", "4"))
    status = parent.recv()
    seconds = time.perf_counter() - start
    rss, torch_loaded = worker_facts(process.pid)
    process.kill()
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "torch_in_worker": torch_loaded, "status": status}))
"""
START_UP_SCRIPTS = {
    "bare script": _BARE_IMPORTS + _MEASURE + _NEW_GRADER,
    "heavy process (trl-erprm label)": _HEAVY_IMPORTS + _MEASURE + _NEW_GRADER,
    "heavy process, forkserver worker (previous)": _HEAVY_IMPORTS + _MEASURE + _OLD_GRADER,
}


def rollout_like_data(num_problems: int, rollouts: int = 16, steps: int = 4, seed: int = 0):
    """Completions and golds shaped like MC labeling: `num_problems * steps * rollouts` graded completions.

    Args:
        num_problems (`int`):
            Number of problems (integer gold answers, log-uniform in [1, 100000], like GSM8K's).
        rollouts (`int`, *optional*, defaults to `16`):
            Rollouts per step prefix.
        steps (`int`, *optional*, defaults to `4`):
            Step prefixes per problem.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the answer sampler.

    Returns:
        `tuple[list[str], list[str]]`: Completions and their gold answers.
    """
    rng = random.Random(seed)
    completions, golds = [], []
    for _ in range(num_problems):
        value = int(10 ** rng.uniform(0, 5))
        gold = str(value)
        wrong = [str(value + 1), str(value - 1), str(value * 2), str(value // 2 + 3)]
        for step in range(steps):
            p_correct = 0.3 + 0.15 * step  # later prefixes reach the answer more often
            for _ in range(rollouts):
                u = rng.random()
                if u < 0.05:
                    completions.append("I could not finish the computation.")
                    golds.append(gold)
                    continue
                answer = gold if u < 0.05 + p_correct else rng.choice(wrong)
                style = rng.random()
                if style < 0.5:
                    completions.append(f"So the total is {answer}.\nThe answer is {answer}")
                else:
                    completions.append(f"Therefore the result is $\\boxed{{{answer}}}$.")
                golds.append(gold)
    return completions, golds


def _grade_once(completions, golds, cache: bool, num_workers: int) -> dict:
    """One timing on a fresh grader whose workers are started (and warmed up) outside the timed region."""
    from trl_erprm.labeling.grading import MathVerifyGrader

    with MathVerifyGrader(num_workers=num_workers, cache=cache) as grader:
        grader.grade(["\\boxed{0}"], ["0"])
        start = time.perf_counter()
        results = grader.grade(completions, golds)
        seconds = time.perf_counter() - start
        graded = grader.stats()["graded"] - 1
    return {"seconds": seconds, "graded": graded, "statuses": [r.status for r in results], "results": results}


def start_up(repeats: int) -> dict[str, dict[str, list]]:
    """First-grade latency and worker memory of each of [`START_UP_SCRIPTS`], each run in a fresh process, rotating
    their order over repeats.

    Args:
        repeats (`int`):
            Runs of each script.

    Returns:
        `dict[str, dict[str, list]]`: Per script, `seconds`, `rss_mb`, `torch_in_worker` and `status` per repeat.
    """
    out: dict[str, dict[str, list]] = {name: {} for name in START_UP_SCRIPTS}
    names = list(START_UP_SCRIPTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                script = Path(folder) / "grade.py"  # the same file name for all: only the imports differ
                script.write_text(START_UP_SCRIPTS[name])
                result = subprocess.run(
                    [sys.executable, str(script)], capture_output=True, text=True, timeout=900, env=env, cwd=folder
                )
                if result.returncode != 0:
                    raise RuntimeError(f"{name}: {result.stderr[-2000:]}")
                for key, value in json.loads(result.stdout.strip().splitlines()[-1]).items():
                    out[name].setdefault(key, []).append(value)
    return out


def run(quick: bool = False) -> dict:
    """Measure grading throughput with and without the answer cache, alternating their order over repeats; then the
    start-up comparison ([`start_up`]).

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            30 problems (1920 completions) instead of 100 problems (6400 completions); 5 repeats either way.

    Returns:
        `dict`: `settings` (`completions`, `unique_pairs` graded by math-verify with the cache, `distinct_pairs`,
        `num_workers`, `repeats`), per-repeat `cached_completions_per_s`, `uncached_completions_per_s` and
        `distinct_items_per_s_per_worker` (all-distinct fractions: the raw math-verify rate, since without our cache
        repeated strings still hit math-verify's own LRU caches inside each worker), `first_grade_seconds` and
        `worker_rss_mb` per start-up script, `ratios` (cache speedup; first-grade latency and worker memory of the
        heavy process against the bare script, and of the previous forkserver worker against ours, per repeat),
        `checks` (the cache changes no verdict; no worker of ours loads torch), `accuracy`.
    """
    num_workers, repeats = 2, 5
    completions, golds = rollout_like_data(30 if quick else 100)
    # All-distinct pairs: no cache of ours nor math-verify's in-worker LRU caches can help.
    distinct = [
        (f"\\boxed{{\\frac{{{k}}}{{{k + 3}}}}}", f"{k}/{k + 3 + k % 2}") for k in range(1, 101 if quick else 801)
    ]
    times: dict[str, list[float]] = {"cached": [], "uncached": [], "distinct": []}
    same, unique, accuracy = True, None, None
    for repeat in range(repeats):
        runs = {}
        for cache in (True, False) if repeat % 2 == 0 else (False, True):
            runs[cache] = _grade_once(completions, golds, cache=cache, num_workers=num_workers)
            times["cached" if cache else "uncached"].append(runs[cache]["seconds"])
        same = same and runs[True]["statuses"] == runs[False]["statuses"]
        unique = runs[True]["graded"]
        accuracy = sum(r.reward for r in runs[True]["results"]) / len(completions)
        fresh = _grade_once([c for c, _ in distinct], [g for _, g in distinct], cache=True, num_workers=num_workers)
        times["distinct"].append(fresh["seconds"])
    start = start_up(2 if quick else 3)
    bare, heavy = start["bare script"], start["heavy process (trl-erprm label)"]
    old = start["heavy process, forkserver worker (previous)"]
    return {
        "settings": {
            "completions": len(completions),
            "unique_pairs": unique,
            "distinct_pairs": len(distinct),
            "num_workers": num_workers,
            "repeats": repeats,
            "start_up_repeats": len(bare["seconds"]),
        },
        "cached_completions_per_s": [len(completions) / t for t in times["cached"]],
        "uncached_completions_per_s": [len(completions) / t for t in times["uncached"]],
        "distinct_items_per_s_per_worker": [len(distinct) / t / num_workers for t in times["distinct"]],
        "first_grade_seconds": {name: values["seconds"] for name, values in start.items()},
        "worker_rss_mb": {name: values["rss_mb"] for name, values in start.items()},
        "ratios": {
            "with cache / without cache completions/s": [u / c for c, u in zip(times["cached"], times["uncached"])],
            "first grade latency, heavy process / bare script": [
                h / b for h, b in zip(heavy["seconds"], bare["seconds"])
            ],
            "worker memory, heavy process / bare script": [h / b for h, b in zip(heavy["rss_mb"], bare["rss_mb"])],
            "first grade latency, previous forkserver worker / ours (heavy process)": [
                o / h for o, h in zip(old["seconds"], heavy["seconds"])
            ],
            "worker memory, previous forkserver worker / ours (heavy process)": [
                o / h for o, h in zip(old["rss_mb"], heavy["rss_mb"])
            ],
        },
        "checks": {
            "the cache changes no verdict": same,
            "no worker of ours loads torch, from a bare script or a heavy process": not any(
                bare["torch_in_worker"] + heavy["torch_in_worker"]
            ),
            "every start-up run graded its answer correct": all(
                s == "correct" for v in start.values() for s in v["status"]
            ),
        },
        "accuracy": round(accuracy, 4),
        "notes": (
            "Our cache keys on (extracted final answer, gold). Without it every completion's answer still goes to a "
            "worker, where math-verify's own LRU caches make a repeated answer cheap: that is why the uncached rate is "
            "far above the all-distinct rate. The cache saves the round trip to the workers for every repeat."
        ),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
