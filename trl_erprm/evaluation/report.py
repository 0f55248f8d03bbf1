"""Reports of evaluation runs: a markdown table and a PNG plot of accuracy against N (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..jobs import folder_errors, write_json_atomic


def _cell(stats: dict) -> str:
    mean, std = stats["mean"], stats["std"]
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std > 0 else f"{100 * mean:.1f}"


def format_table(curves: dict[str, dict[int, dict]], n_values: list[int]) -> str:
    """Markdown table of accuracies (percent, mean ± std over seeds): one row per method, one column per N.

    Args:
        curves (`dict[str, dict[int, dict]]`):
            `{method: {N: {"mean", "std", ...}}}` as returned by
            [`~trl_erprm.evaluation.metrics.selection_curves`].
        n_values (`list[int]`):
            The columns.

    Returns:
        `str`: The table.
    """
    header = "| method | " + " | ".join(f"N={n}" for n in n_values) + " |"
    rule = "|---|" + "---:|" * len(n_values)
    lines = [header, rule]
    for method, by_n in curves.items():
        lines.append(f"| {method} | " + " | ".join(_cell(by_n[n]) for n in n_values) + " |")
    return "\n".join(lines)


def plot_curves(
    curves: dict[str, dict[int, dict]], path: str | os.PathLike, title: str = "Best-of-N", ylabel: str = "accuracy"
) -> str:
    """Plot accuracy against N (log2 axis) with one line per method and the spread over seeds as error bars.

    Args:
        curves (`dict[str, dict[int, dict]]`):
            `{method: {N: {"mean", "std", ...}}}`.
        path (`str` or `os.PathLike`):
            PNG file to write.
        title (`str`, *optional*, defaults to `"Best-of-N"`):
            Plot title.
        ylabel (`str`, *optional*, defaults to `"accuracy"`):
            Y-axis label.

    Returns:
        `str`: The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, by_n in curves.items():
        ns = sorted(by_n)
        style = "--" if method in ("pass@n", "majority") else "-"
        ax.errorbar(
            ns,
            [100 * by_n[n]["mean"] for n in ns],
            yerr=[100 * by_n[n]["std"] for n in ns],
            label=method,
            linestyle=style,
            marker="o",
            capsize=3,
        )
    ax.set_xscale("log", base=2)
    all_ns = sorted({n for by_n in curves.values() for n in by_n})
    ax.set_xticks(all_ns, [str(n) for n in all_ns])
    ax.minorticks_off()
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel(f"{ylabel} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_reports(output_dir: str | os.PathLike, report: dict, table: str, rules_module: str) -> dict:
    """Write `table.md` and `results.json` of an evaluation run and print the table and the bad-input counts.

    Args:
        output_dir (`str` or `os.PathLike`):
            The run's output folder.
        report (`dict`):
            The report, with a `bad_input` entry; written as `results.json`.
        table (`str`):
            The markdown table; written as `table.md` and printed.
        rules_module (`str`):
            File documenting the bad-input rules, named in the printed line.

    Returns:
        `dict`: The report with the table under `table`.
    """
    out = Path(output_dir)
    with folder_errors(out, "write the reports"):
        (out / "table.md").write_text(table + "\n")
        write_json_atomic(out / "results.json", report)
    print(table)
    print(f"Bad input (see the rules in {rules_module}): {report['bad_input']}")
    return {**report, "table": table}
