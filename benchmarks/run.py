"""Run the benchmarks and write `benchmarks/RESULTS.md` and `benchmarks/results.json`.

    python benchmarks/run.py [--quick] [--only trainer,grading] [--device cpu|cuda] [--output PATH]

Each benchmark is a module `benchmarks/bench_<name>.py` with `run(quick: bool) -> dict` (or
`run(quick: bool, device: str) -> dict` if it lists `"cuda"` in its `DEVICES`) and an optional `DESCRIPTION`. A
benchmark repeats its own measurements and compares against its baseline within the same run. In the dict it returns,
a list of numbers is a set of per-repeat samples, reported as median and spread (min - max); `ratios` holds the
per-repeat ratios against the in-run baseline (collected at the top of the page), `checks` named pass/fail verdicts,
`settings` the sizes used, `notes` free text. Absolute times on a shared machine are noise: read the ratios.

CPU figures are the default. `--device cuda` runs the benchmarks that support it on the GPU, with larger models, and
writes `RESULTS_cuda.md` / `results_cuda.json` instead, so GPU figures never mix with CPU ones.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path


HERE = Path(__file__).resolve().parent
#: Order of the page; any other `bench_*.py` found in the folder follows, alphabetically.
ORDER = ["trainer", "grading", "labeler", "implicit_prm", "prime", "prm_reward", "prm_grpo", "import"]
SUMMARY_KEYS = ("median", "min", "max", "n")
#: Keys of a benchmark result rendered outside the measurement table.
SPECIAL_KEYS = ("description", "settings", "ratios", "checks", "environments", "notes", "seconds", "error", "skipped")
PACKAGES = ["torch", "transformers", "trl", "trl-erprm", "accelerate", "datasets", "peft", "math-verify"]


def discover(bench_dir: Path = HERE) -> list[str]:
    """Names of the benchmarks in a folder: `bench_<name>.py` files, in page order.

    Args:
        bench_dir (`Path`, *optional*, defaults to this file's folder):
            Folder holding the `bench_<name>.py` modules.

    Returns:
        `list[str]`: The names of [`ORDER`] that exist, then the others alphabetically.
    """
    found = sorted(p.stem[len("bench_") :] for p in Path(bench_dir).glob("bench_*.py"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def load(name: str, bench_dir: Path = HERE):
    """Import `bench_<name>.py` from `bench_dir` as a module.

    Args:
        name (`str`):
            Benchmark name.
        bench_dir (`Path`, *optional*, defaults to this file's folder):
            Folder holding the module.

    Returns:
        The module, or `None` if the file does not exist.
    """
    path = Path(bench_dir) / f"bench_{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def summarize(value):
    """Median and spread of every list of per-repeat numbers in a result; other values unchanged.

    Args:
        value: A number, a list, a string, a bool or a nested dict of those.

    Returns:
        The same structure with every non-empty list of numbers (bools excluded) replaced by
        `{"median", "min", "max", "n"}`.
    """
    if isinstance(value, dict):
        return {k: summarize(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        return {"median": statistics.median(value), "min": min(value), "max": max(value), "n": len(value)}
    return value


def run_benchmark(module, quick: bool, device: str = "cpu") -> dict:
    """Run one benchmark module and summarize its result; an exception becomes `{"error": traceback}`.

    Args:
        module:
            A loaded `bench_<name>` module.
        quick (`bool`):
            Passed to `module.run`.
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"`, or a device the module lists in its `DEVICES` (then passed as `device=`). A module that does not
            list it is skipped.

    Returns:
        `dict`: The summarized result with `description` and `seconds` (wall time) added, or `{"error": ...}` or
        `{"skipped": reason}` with `seconds`.
    """
    start = time.perf_counter()
    devices = tuple(getattr(module, "DEVICES", ("cpu",)))
    if device not in devices:
        result = {"skipped": f"runs on {', '.join(devices)} only"}
    else:
        try:
            kwargs = {"device": device} if "device" in inspect.signature(module.run).parameters else {}
            raw = module.run(quick=quick, **kwargs)
            if not isinstance(raw, dict):
                raise TypeError(f"run() must return a dict, got {type(raw).__name__}")
            result = summarize(raw)
            result.setdefault("description", getattr(module, "DESCRIPTION", ""))
        except Exception:
            result = {"error": traceback.format_exc(limit=8)}
    result["seconds"] = time.perf_counter() - start
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """Description of the machine, the library versions and the commit, without importing the libraries.

    Args:
        device (`str`, *optional*, defaults to `"cpu"`):
            With `"cuda"`, the GPU name is added (this imports torch).

    Returns:
        `dict[str, str]`: Date, platform, CPU, cores, memory, Python, versions, commit (and GPU).
    """
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError):
        memory = "unknown"
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": memory,
        "python": platform.python_version(),
    }
    for package in PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    try:  # a bare GPU machine may have no git (or no .git): the results must still be written
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
        info["commit"] = commit.stdout.strip() or "unknown"
    except OSError:
        info["commit"] = "unknown"
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    return info


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _is_summary(value) -> bool:
    return isinstance(value, dict) and set(value) == set(SUMMARY_KEYS)


def _cells(value) -> str:
    """`median | spread | repeats` cells of a summarized list, or of a single value."""
    if _is_summary(value):
        return f"{_fmt(value['median'])} | {_fmt(value['min'])} - {_fmt(value['max'])} | {value['n']}"
    return f"{_fmt(value)} | | 1" if _is_number(value) else f"{_fmt(value)} | | -"


def _rows(prefix: str, value, out: list[str]) -> None:
    if isinstance(value, dict) and not _is_summary(value):
        for k, v in value.items():
            _rows(f"{prefix} {k}".strip(), v, out)
    elif not isinstance(value, list):
        out.append(f"| {prefix} | {_cells(value)} |")


def render(results: dict, info: dict, quick: bool, device: str = "cpu", total_seconds: float | None = None) -> str:
    """The Markdown results page.

    Args:
        results (`dict[str, dict]`):
            Summarized result of each benchmark, by name (see [`run_benchmark`]).
        info (`dict`):
            Machine description from [`machine`].
        quick (`bool`):
            Whether the run used `--quick`.
        device (`str`, *optional*, defaults to `"cpu"`):
            Device of the run.
        total_seconds (`float`, *optional*):
            Wall time of the whole run.

    Returns:
        `str`: The page: the ratios and checks of every benchmark first, then the machine, then one section per
        benchmark.
    """
    command = (
        "python benchmarks/run.py" + (" --quick" if quick else "") + (f" --device {device}" if device != "cpu" else "")
    )
    total = f" in {total_seconds:.0f} s" if total_seconds is not None else ""
    lines = [
        f"# Benchmark results ({device.upper()})",
        "",
        f"Written by `{command}` on {info['date']}{total}. Every ratio compares two configurations measured in the "
        "same run (per repeat, against the baseline of the same repeat); figures are medians with their min - max "
        "spread over repeats. Absolute figures on a shared machine are noise; the ratios are the result.",
        "",
        "## Ratios against the in-run baselines",
        "",
        "| benchmark | ratio | median | spread (min - max) | repeats |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for key, value in (result.get("ratios") or {}).items():
            _rows(f"{name} | {key}", value, lines)
    checks = [(name, k, v) for name, r in results.items() for k, v in (r.get("checks") or {}).items()]
    if checks:
        lines += ["", "## Checks", ""]
        lines += [f"- {name}: {key}: **{'pass' if ok else 'FAIL'}**" for name, key, ok in checks]
    lines += ["", "## Machine", "", *[f"- {k}: {v}" for k, v in info.items()]]
    for name, result in results.items():
        lines += ["", f"## {name}", ""]
        if "error" in result:
            lines += ["Failed:", "", "```", result["error"].rstrip(), "```"]
        elif "skipped" in result:
            lines += [f"Skipped: {result['skipped']}."]
        else:
            if result.get("description"):
                lines += [result["description"], ""]
            if result.get("settings"):
                settings = ", ".join(f"{k}: {_fmt(v)}" for k, v in result["settings"].items())
                lines += [f"Settings: {settings}.", ""]
            table: list[str] = []
            for key, value in result.items():
                if key not in SPECIAL_KEYS:
                    _rows(key, value, table)
            if table:
                lines += ["| measurement | median | spread (min - max) | repeats |", "|---|---|---|---|", *table]
            if result.get("ratios"):
                lines += ["", "Ratios: in the table at the top of the page."]
            if result.get("environments"):
                lines += ["", f"Environments: `{json.dumps(result['environments'])}`"]
            if result.get("notes"):
                lines += ["", str(result["notes"])]
        lines += ["", f"Wall time of this benchmark: {result.get('seconds', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the selected benchmarks and write the results page and its JSON.

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments; defaults to `sys.argv[1:]`.

    Returns:
        `int`: 0 if every selected benchmark ran (or was skipped for the device), 1 if one failed.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer repeats and smaller sizes (< 10 min on 2 cores).")
    parser.add_argument("--only", default=None, help="Comma-separated subset of the benchmarks, e.g. trainer,grading.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where to run (default: cpu).")
    parser.add_argument("--output", default=None, help="Markdown page (default: RESULTS.md, RESULTS_cuda.md).")
    parser.add_argument("--bench-dir", default=str(HERE), help="Folder of the bench_<name>.py modules.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench_dir = Path(args.bench_dir)
    available = discover(bench_dir)
    names = available if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {available}")
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    output = Path(args.output) if args.output else HERE / f"RESULTS{suffix}.md"

    results, start = {}, time.perf_counter()
    for name in names:
        print(f"[{name}] running{' (quick)' if args.quick else ''} on {args.device} ...", flush=True)
        results[name] = run_benchmark(load(name, bench_dir), args.quick, args.device)
        status = "failed" if "error" in results[name] else "skipped" if "skipped" in results[name] else "done"
        print(f"[{name}] {status} in {results[name]['seconds']:.0f} s", flush=True)
    total = time.perf_counter() - start

    info = machine(args.device)
    page = render(results, info, args.quick, args.device, total)
    output.write_text(page)
    record = {"machine": info, "quick": args.quick, "device": args.device, "total_seconds": total, "results": results}
    output.with_name(f"results{suffix}.json").write_text(json.dumps(record, indent=2))
    print(page)
    print(f"Total wall time: {total:.0f} s; wrote {output}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
