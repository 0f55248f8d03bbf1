"""The quickstart's report: metrics of each seed, mean ± std over seeds, the comparisons that exceed the spread, the
tables and the plots.

Every number of the tables is a metric of [`seed_metrics`] (one value per seed), summarised by [`summarize_seeds`]
(mean, population standard deviation and the per-seed values). [`compare`] states for each headline comparison
whether the difference of the means exceeds the spread: `|mean_a - mean_b| > std_a + std_b` over seeds (with one seed
there is no spread over seeds, and the report says so instead of judging).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .common import pct
from .config import prm_name


def seed_metrics(results: dict) -> dict[str, float]:
    """The scalar metrics of one seed's results, by name.

    Args:
        results (`dict`):
            One seed's results (`best_of_n`, `step_metrics`, `mc_labels`, optional `raft` and `search`).

    Returns:
        `dict[str, float]`: `first_sample`, `bon/<method>/<N>` (mean over the subset draws), `pairwise/<prm>`,
        `local_auc/<prm>`, `labels/<kind>`, `raft/<selector>/<round>`, `raft_kept/<selector>`,
        `search/<method>/<N>` and `search_tokens/<method>/<N>`.
    """
    bon = results["best_of_n"]
    out = {"first_sample": bon["first_sample"]}
    for method, by_n in bon["curves"].items():
        out.update({f"bon/{method}/{n}": stats["mean"] for n, stats in by_n.items()})
    out.update({f"pairwise/{name}": value for name, value in bon["pairwise_accuracy"].items()})
    out.update({f"local_auc/{name}": m["local_auc"] for name, m in results["step_metrics"].items()})
    out.update({f"labels/{kind}": q["step_accuracy"] for kind, q in results["mc_labels"].items()})
    for name, run in (results.get("raft") or {}).get("selectors", {}).items():
        out.update({f"raft/{name}/{k}": a for k, a in enumerate(run["accuracy"]) if a is not None})
        if len(run["rounds"]) > 1 and run["rounds"][1].get("selected_accuracy") is not None:
            out[f"raft_kept/{name}"] = run["rounds"][1]["selected_accuracy"]
    for kind in ("curves", "tokens"):
        prefix = "search" if kind == "curves" else "search_tokens"
        for method, by_n in (results.get("search") or {}).get(kind, {}).items():
            out.update({f"{prefix}/{method}/{n}": stats["mean"] for n, stats in by_n.items()})
    return {k: float(v) for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def summarize_seeds(per_seed: list[dict[str, float]]) -> dict[str, dict]:
    """Mean, population standard deviation and per-seed values of every metric present in all seeds.

    Args:
        per_seed (`list[dict[str, float]]`):
            [`seed_metrics`] of each seed, in seed order.

    Returns:
        `dict[str, dict]`: `{metric: {"mean", "std", "values"}}`.
    """
    names = [k for k in per_seed[0] if all(k in m for m in per_seed)]
    return {
        k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
        for k in names
        for v in [[m[k] for m in per_seed]]
    }


def compare(summary: dict, a: str, b: str, what: str) -> dict | None:
    """Whether metric `a` differs from metric `b` by more than their spreads over seeds.

    Args:
        summary (`dict`):
            [`summarize_seeds`]'s output.
        a (`str`):
            The first metric.
        b (`str`):
            The second metric.
        what (`str`):
            How the report names the comparison.

    Returns:
        `dict` or `None`: `what`, `a`, `b`, `difference` (mean of a minus mean of b), `paired` (per-seed
        differences), `spread` (`std_a + std_b`) and `verdict` (`"exceeds the spread"`, `"within the spread"`, or
        `"one seed: no spread"`); `None` when a metric is missing.
    """
    if a not in summary or b not in summary:
        return None
    sa, sb = summary[a], summary[b]
    difference, spread = sa["mean"] - sb["mean"], sa["std"] + sb["std"]
    if len(sa["values"]) < 2:
        verdict = "one seed: no spread"
    else:
        verdict = "exceeds the spread" if abs(difference) > spread else "within the spread"
    paired = [x - y for x, y in zip(sa["values"], sb["values"])]
    return {"what": what, "a": a, "b": b, "difference": difference, "paired": paired, "spread": spread,
            "verdict": verdict}  # fmt: skip


def comparisons(config: dict, summary: dict, n_max: int) -> list[dict]:
    """The headline comparisons of the report (Best-of-N at the largest N, and RAFT's last round).

    Args:
        config (`dict`):
            The run's settings (as in `results.json`).
        summary (`dict`):
            [`summarize_seeds`]'s output.
        n_max (`int`):
            The largest N.

    Returns:
        `list[dict]`: The outcomes of [`compare`] that could be computed.
    """
    er = prm_name(float(config["er_eta"]))
    bon = {name: f"bon/bon_{name}/{n_max}" for name in ("soft", "hard", er, "control", "implicit")}
    pairs = [
        (bon[er], "first_sample", f"BoN@{n_max} {er} vs first sample"),
        (bon[er], f"bon/majority/{n_max}", f"BoN@{n_max} {er} vs majority vote"),
        (bon[er], f"bon/weighted_majority_{er}/{n_max}", f"BoN@{n_max} {er} vs PRM-weighted vote ({er})"),
        (bon[er], bon["implicit"], f"BoN@{n_max} {er} vs implicit PRM"),
        *[(bon["control"], bon[k], f"BoN@{n_max} control vs {k}") for k in ("soft", er, "hard")],
        (bon[er], bon["soft"], f"BoN@{n_max} {er} vs soft"),
        (bon[er], bon["hard"], f"BoN@{n_max} {er} vs hard"),
        (bon["hard"], bon["soft"], f"BoN@{n_max} hard vs soft"),
    ]
    last = int(config["raft_rounds"])
    if last:
        raft = {s: f"raft/{s}/{last}" for s in config["raft_selectors"]}
        best = er if er in raft else next(iter(raft))
        pairs.append((raft[best], f"raft/{best}/0", f"RAFT {best} (round {last}) vs start policy"))
        pairs += [(raft[best], raft[s], f"RAFT {best} vs RAFT {s}") for s in raft if s != best]
    return [c for a, b, what in pairs if (c := compare(summary, a, b, what)) is not None]


# ---------------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------------


def _cell(summary: dict, key: str, per_seed: bool) -> str:
    if key not in summary:
        return ""
    s = summary[key]
    if len(s["values"]) < 2:
        return pct(s["mean"])
    text = f"{pct(s['mean'])} ± {pct(s['std'])}"
    return text + " (" + ", ".join(pct(v) for v in s["values"]) + ")" if per_seed else text


def _method_rows(config: dict) -> list[tuple[str, str]]:
    er = prm_name(float(config["er_eta"]))
    rows = [("majority vote", "majority"), ("pass@N (an oracle picks)", "pass@n")]
    for eta in config["etas"]:
        name = prm_name(float(eta))
        label = {"soft": "soft labels (eta=0)", "hard": "hard labels (eta=inf)"}.get(
            name, f"ER labels (eta={name[2:]})"
        )
        rows.append((f"BoN, PRM on {label}" + (" = the ER-PRM" if name == er else ""), f"bon_{name}"))
    rows += [
        ("BoN, control PRM (true step labels)", "bon_control"),
        (f"PRM-weighted vote, {er}", f"weighted_majority_{er}"),
        ("PRM-weighted vote, control", "weighted_majority_control"),
        ("BoN, implicit PRM", "bon_implicit"),
        ("BoN, implicit PRM without reference (log pi)", "bon_implicit_noref"),
    ]
    return rows


def format_report(results: dict) -> str:
    """The printed report (markdown): Best-of-N, the eta sweep, RAFT, the comparisons and the optional search.

    Args:
        results (`dict`):
            The content of `results.json` ([`~trl_erprm.quickstart.run_quickstart`]).

    Returns:
        `str`: The tables.
    """
    cfg, summary, seeds = results["config"], results["summary"], results["seeds"]
    n_values, data = results["n_values"], results["per_seed"][0]["data"]
    n_max, many = n_values[-1], len(seeds) > 1
    spread = (
        f"mean ± std over {len(seeds)} seeds {seeds}, per-seed values in brackets at N={n_max}"
        if many
        else f"one seed ({seeds[0]}): run --seeds 3 for the spread over seeds"
    )
    lines = [
        f"Best-of-N accuracy (%) on {cfg['num_test_problems']} held-out problems, {cfg['num_candidates']} candidates "
        f"each (each seed: mean over {cfg['num_subset_draws']} random subsets per N; {spread}). PRM score = "
        f"{cfg['aggregation']} over steps; PRMs trained on {data['num_labelled_solutions']} solutions labelled "
        f"with {cfg['num_rollouts']} rollouts per step ({cfg['head']} head).",
        "",
        "| method | " + " | ".join(f"N={n}" for n in n_values) + " |",
        "|---|" + "---:|" * len(n_values),
        "| first sample | " + " | ".join(_cell(summary, "first_sample", many and n == n_max) for n in n_values) + " |",
    ]
    for label, method in _method_rows(cfg):
        cells = [_cell(summary, f"bon/{method}/{n}", many and n == n_max) for n in n_values]
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Eta sweep, all PRMs from the same stored rollout outcomes (%): step accuracy of the MC labels on the training "
        "solutions; within-problem step AUC and pairwise accuracy of each PRM on the held-out candidates.",
        "",
        f"| labels | label step accuracy | PRM local step AUC | PRM pairwise accuracy | BoN@{n_max} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in [prm_name(float(eta)) for eta in cfg["etas"]] + ["control", "implicit"]:
        cells = [_cell(summary, key, False) for key in (f"labels/{name}", f"local_auc/{name}", f"pairwise/{name}")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(summary, f'bon/bon_{name}/{n_max}', False)} |")
    if cfg["raft_rounds"]:
        rounds = range(int(cfg["raft_rounds"]) + 1)
        raft = results["per_seed"][0]["raft"]
        lines += [
            "",
            f"RAFT: held-out accuracy (%) of the start policy (round 0) and after each round "
            f"({raft['eval_samples_per_problem']} samples per problem at temperature 1); round 1 of every selector "
            f"kept the best of the same {cfg['raft_num_samples']} samples per training problem. Kept = fraction of "
            "the kept samples with a right final answer.",
            "",
            "| selector | " + " | ".join(f"round {k}" for k in rounds) + " | kept (round 1) |",
            "|---|" + "---:|" * (len(rounds) + 1),
        ]
        for name in cfg["raft_selectors"]:
            cells = [_cell(summary, f"raft/{name}/{k}", many and k == rounds[-1]) for k in rounds]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(summary, f'raft_kept/{name}', False)} |")
    lines += ["", "Comparisons (difference of the means, in points; spread = std_a + std_b over seeds):", ""]
    for c in results["comparisons"]:
        paired = ", ".join(f"{100 * d:+.1f}" for d in c["paired"]) if many else ""
        lines.append(
            f"- {c['what']}: {100 * c['difference']:+.1f}" + (f" (per seed {paired}; spread {100 * c['spread']:.1f})"
            if many else "") + f": {c['verdict']}"
        )  # fmt: skip
    if "search" in results["per_seed"][0]:
        lines += ["", _search_table(results, summary)]
    return "\n".join(lines)


def _search_table(results: dict, summary: dict) -> str:
    from ..search.compare import base_method

    search = results["per_seed"][0]["search"]
    n_values = search["n_values"]
    lines = [
        f"Search with the ER-PRM on {search['num_problems']} held-out problems: accuracy (%) / generated tokens per "
        f"problem (beam width {search['beam_width']}; each seed: mean over {search['num_seeds']} repetitions; ± is "
        + ("the std over seeds)." if len(results["seeds"]) > 1 else "the std over the repetitions)."),
        "",
        "| method | " + " | ".join(f"N={n}" for n in n_values) + " |",
        "|---|" + "---:|" * len(n_values),
    ]
    for method in search["curves"]:
        cells = []
        for n in n_values:
            tokens = summary.get(f"search_tokens/{base_method(method)}/{n}")
            cost = f" / {tokens['mean']:.0f}" if tokens else ""
            cell = _cell(summary, f"search/{method}/{n}", False)
            if len(results["seeds"]) == 1:  # the spread over the repetitions of the one seed
                cell += f" ± {pct(search['curves'][method][str(n)]['std'])}"
            cells.append(cell + cost)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, out: Path) -> dict[str, str]:
    """Best-of-N accuracy against N with the spread (the references, the soft, ER, hard, control and implicit PRMs), the
    eta sweep, and RAFT accuracy per round (PNG, Agg backend).

    The spread is the std over seeds, or, with one seed, over the random candidate subsets of that seed.

    Args:
        results (`dict`):
            The content of `results.json`.
        out (`Path`):
            The output folder.

    Returns:
        `dict[str, str]`: The files written, by plot.
    """
    from ..evaluation.report import plot_curves

    cfg, summary, n_values = results["config"], results["summary"], results["n_values"]
    one = results["per_seed"][0]["best_of_n"]["curves"]
    curves = {}
    er = prm_name(float(cfg["er_eta"]))
    shown = {"majority", "pass@n", "bon_soft", f"bon_{er}", "bon_hard", "bon_control", "bon_implicit"}
    for label, method in [("first sample", None), *_method_rows(cfg)]:
        if method is not None and method not in shown:  # the other etas are in the eta-sweep plot
            continue
        key = "first_sample" if method is None else None
        by_n = {}
        for n in n_values:
            s = summary.get(key or f"bon/{method}/{n}")
            if s is None:
                break
            std = s["std"] if len(results["seeds"]) > 1 or method is None else one[method][str(n)]["std"]
            by_n[n] = {"mean": s["mean"], "std": std}
        if len(by_n) == len(n_values):
            curves[label] = by_n
    files = {"bon_plot": plot_curves(curves, out / "bon_accuracy_vs_n.png", title="Best-of-N on the quickstart task")}
    plt = _plt()
    names = [prm_name(float(eta)) for eta in cfg["etas"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n_max = n_values[-1]
    for key, label in ((f"bon/bon_{{}}/{n_max}", f"BoN@{n_max}"), ("labels/{}", "label step accuracy")):
        points = [summary.get(key.format(name)) for name in names]
        xs = [i for i, p in enumerate(points) if p]
        ax.errorbar(xs, [100 * points[i]["mean"] for i in xs], yerr=[100 * points[i]["std"] for i in xs],
                    marker="o", capsize=3, label=label)  # fmt: skip
    for key, label, style in ((f"bon/bon_control/{n_max}", "control PRM", "--"), (f"bon/majority/{n_max}",
                              "majority vote", ":"), ("first_sample", "first sample", "-.")):  # fmt: skip
        if key in summary:
            ax.axhline(100 * summary[key]["mean"], linestyle=style, color="gray", label=label)
    ax.set_xticks(range(len(names)), [n.replace("er", "eta=") if n.startswith("er") else n for n in names])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Eta sweep: PRMs from the same rollout outcomes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "eta_sweep.png", dpi=120)
    plt.close(fig)
    files["eta_plot"] = str(out / "eta_sweep.png")
    if cfg["raft_rounds"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rounds = list(range(int(cfg["raft_rounds"]) + 1))
        for name in cfg["raft_selectors"]:
            points = [summary.get(f"raft/{name}/{k}") for k in rounds]
            xs = [k for k in rounds if points[k]]
            ax.errorbar(xs, [100 * points[k]["mean"] for k in xs], yerr=[100 * points[k]["std"] for k in xs],
                        marker="o", capsize=3, label=name)  # fmt: skip
        ax.set_xticks(rounds)
        ax.set_xlabel("RAFT round (0: the start policy)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title("RAFT: the policy fine-tuned on the samples each selector keeps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "raft_accuracy.png", dpi=120)
        plt.close(fig)
        files["raft_plot"] = str(out / "raft_accuracy.png")
    return files
