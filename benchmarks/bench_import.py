"""Start-up cost: `import trl_erprm` and `trl-erprm --help` against `import trl`, each in a fresh interpreter.

Every measurement is one fresh `python -c ...` subprocess, timed from launch to exit (wall time, so interpreter start-up
is included in all of them alike; CPU time of the child, user + system, is given too): a bare interpreter (`pass`), `import trl` (the baseline), `import trl_erprm`, and
the `trl-erprm --help` entry point (`trl_erprm.cli:main(["--help"])`, what the console script runs). The four run in
turn in every repeat, in rotated order, and the ratios are taken per repeat against the `import trl` of the same
repeat. A first use of a public name (`trl_erprm.ERPRMTrainer`) is timed too: it pays for torch, transformers and TRL,
and shows where the cost went.

    python benchmarks/bench_import.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

DESCRIPTION = (
    "Start-up time of `import trl_erprm` and of `trl-erprm --help` as ratios to `import trl` (fresh interpreter per "
    "measurement, wall time launch to exit, rotated order, ratio per repeat); a bare interpreter and the first use of "
    "`trl_erprm.ERPRMTrainer` for scale."
)

#: What each measurement runs with `python -c`.
COMMANDS = {
    "python_bare": "pass",
    "import_trl": "import trl",
    "import_trl_erprm": "import trl_erprm",
    "trl_erprm_help": (
        "import contextlib, io, sys\nfrom trl_erprm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    code = main(['--help'])\nsys.exit(code)"
    ),
    "first_use_ERPRMTrainer": "import trl_erprm\ntrl_erprm.ERPRMTrainer",
}


def _time(code: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one fresh `python -c code`, launch to exit."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(quick: bool = False) -> dict:
    """Time the start-up commands in fresh interpreters.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            5 repeats instead of 15.

    Returns:
        `dict`: `wall_seconds` and `cpu_seconds` (per repeat, of every command), `ratios` (`import trl_erprm` and
        `trl-erprm --help` over `import trl`, per repeat, wall and CPU), `checks`, `settings` and `notes`.
    """
    repeats = 5 if quick else 15
    names = list(COMMANDS)
    for name in names:  # warm the file cache and the bytecode caches once, untimed
        _time(COMMANDS[name])
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds = _time(COMMANDS[name])
            wall[name].append(seconds[0])
            cpu[name].append(seconds[1])

    def ratio(times: dict[str, list[float]], name: str) -> list[float]:
        return [a / b for a, b in zip(times[name], times["import_trl"])]

    return {
        "settings": {"repeats": repeats, "python": sys.executable},
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "ratios": {
            "import trl_erprm / import trl, wall": ratio(wall, "import_trl_erprm"),
            "trl-erprm --help / import trl, wall": ratio(wall, "trl_erprm_help"),
            "import trl_erprm / import trl, CPU": ratio(cpu, "import_trl_erprm"),
            "trl-erprm --help / import trl, CPU": ratio(cpu, "trl_erprm_help"),
        },
        "checks": {
            "import trl_erprm costs at most 1.5x import trl (median CPU ratio)": statistics.median(
                ratio(cpu, "import_trl_erprm")
            )
            <= 1.5
        },
        "notes": (
            "Times include interpreter start-up (see python_bare). CPU time (user + system of the child) barely moves "
            "when other jobs share the machine; wall time does. `import trl_erprm` imports no submodule until a "
            "name is used (TRL's lazy-module pattern), so it may cost less than `import trl`; the first use of a "
            "trainer pays for torch, transformers and TRL (first_use_ERPRMTrainer)."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer repeats.")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))


if __name__ == "__main__":
    main()
