"""Run the benchmarks and write `benchmarks/RESULTS.md` and `benchmarks/results.json`.

    python benchmarks/run.py [--quick] [--only trainer,grading] [--output benchmarks/RESULTS.md]

Each benchmark is a module `benchmarks/bench_<name>.py` with `run(quick: bool) -> dict`. A benchmark repeats its own
measurements and compares against its baseline within the same run; values that are lists are per-repeat samples,
reported here as median and spread (min-max). Absolute times on a shared 2-core machine are noise: read the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path


HERE = Path(__file__).resolve().parent
BENCHMARKS = ["trainer", "grading", "labeler", "implicit_prm", "prime"]


def load(name: str):
    """Import `benchmarks/bench_<name>.py` as a module.

    Args:
        name (`str`):
            Benchmark name.

    Returns:
        The module, or `None` if the file does not exist.
    """
    path = HERE / f"bench_{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(HERE))
    return module


def summarize(value):
    """Median and spread of a list of per-repeat numbers; other values unchanged.

    Args:
        value: A number, a list of numbers, a string or a nested dict of those.

    Returns:
        The same structure with every list of numbers replaced by `{"median", "min", "max", "n"}`.
    """
    if isinstance(value, dict):
        return {k: summarize(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return {"median": statistics.median(value), "min": min(value), "max": max(value), "n": len(value)}
    return value


def machine() -> dict:
    """Description of the machine and the library versions."""
    import torch
    import transformers
    import trl

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = float("nan")
    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl (harness)": trl.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _rows(prefix: str, value, out: list[str]) -> None:
    if isinstance(value, dict) and set(value) == {"median", "min", "max", "n"}:
        out.append(
            f"| {prefix} | {_fmt(value['median'])} | {_fmt(value['min'])} - {_fmt(value['max'])} | {value['n']} |"
        )
    elif isinstance(value, dict):
        for k, v in value.items():
            _rows(f"{prefix} {k}".strip(), v, out)
    elif isinstance(value, (int, float)):
        out.append(f"| {prefix} | {_fmt(value)} | | 1 |")


def render(results: dict, info: dict, quick: bool) -> str:
    """The Markdown page."""
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py{' --quick' if quick else ''}` on {info['date']}. Ratios compare "
        "configurations measured in the same run; medians with their min-max spread over repeats.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
    ]
    for name, result in results.items():
        lines += ["", f"## {name}", ""]
        if "error" in result:
            lines += ["Failed:", "", "```", result["error"], "```"]
            continue
        if result.get("description"):
            lines += [result["description"], ""]
        lines += ["| measurement | median | spread (min - max) | repeats |", "|---|---|---|---|"]
        table: list[str] = []
        for key, value in result.items():
            if key in ("notes", "description", "environments", "seconds"):
                continue
            _rows(key, value, table)
        lines += table
        if result.get("environments"):
            lines += ["", f"Environments: `{json.dumps(result['environments'])}`"]
        if result.get("notes"):
            lines += ["", str(result["notes"])]
        lines += ["", f"Wall time of this benchmark: {result.get('seconds', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the selected benchmarks and write the results page.

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments; defaults to `sys.argv[1:]`.

    Returns:
        `int`: 0 if every selected benchmark ran, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer repeats and smaller sizes (< 10 min on 2 cores).")
    parser.add_argument("--only", default=None, help=f"Comma-separated subset of {BENCHMARKS}.")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"), help="Markdown page to write.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = BENCHMARKS if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")

    results, failed = {}, False
    for name in names:
        module = load(name)
        if module is None:
            print(f"[{name}] not available (benchmarks/bench_{name}.py missing)")
            continue
        print(f"[{name}] running{' (quick)' if args.quick else ''} ...", flush=True)
        start = time.perf_counter()
        try:
            raw = module.run(quick=args.quick)
            result = summarize(raw)
            result.setdefault("description", getattr(module, "DESCRIPTION", ""))
        except Exception:
            result, failed = {"error": traceback.format_exc(limit=5)}, True
        result["seconds"] = time.perf_counter() - start
        results[name] = result
        print(f"[{name}] done in {result['seconds']:.0f} s", flush=True)

    info = machine()
    page = render(results, info, args.quick)
    Path(args.output).write_text(page)
    Path(args.output).with_name("results.json").write_text(
        json.dumps({"machine": info, "quick": args.quick, "results": results}, indent=2)
    )
    print(page)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
