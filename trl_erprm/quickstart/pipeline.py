r"""`trl-erprm quickstart`: the ER-PRM paper's two experiments end to end, offline, on a CPU, over one or more seeds.

On the embedded arithmetic task (where the truth of every step is known), for each seed:

1. train (or reuse) the tiny policy ([`~trl_erprm.quickstart.policy`]), taught a designed misconception
   ([`~trl_erprm.quickstart.task.demonstration_steps`]) so that its errors are systematic and locally visible;
2. draw training and held-out problems with different arithmetic ([`~trl_erprm.quickstart.task.distinct_problems`]);
3. sample solutions of the training problems and label every step ONCE with Monte-Carlo rollouts (stored
   `step_outcomes`, [`~trl_erprm.quickstart.labels`]);
4. train one PRM per eta of the sweep from those outcomes (0 soft, inf hard, the others ER), a control PRM on the true
   step labels, and an implicit PRM on the outcome labels;
5. sample candidates of the held-out problems; Best-of-N with every PRM against the first sample, majority vote,
   PRM-weighted vote and pass@N, and step metrics against the truth ([`~trl_erprm.quickstart.bon`]);
6. RAFT with each selector from one shared sampling pass ([`~trl_erprm.quickstart.raft`]);
7. optionally (`--search`), beam search and DVTS against Best-of-N with the ER-PRM ([`~trl_erprm.quickstart.search`]).

Then the report ([`~trl_erprm.quickstart.report`]): mean ± std over seeds with the per-seed values, which differences
exceed the spread, `results.json`, `table.md` and the plots in `output_dir`; each seed's labels, PRMs and RAFT runs in
`output_dir/seed-<seed>/`. `trl-erprm quickstart --help` lists the options; `--fast` runs every stage at toy sizes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from .common import environment, json_safe, load_average, say, stage, stage_seed
from .config import QuickstartConfig, default_policy_dir, make_quickstart_parser, prm_name


STAGES = (
    "policy",
    "training and held-out problems",
    "training solutions and their MC-rollout labels",
    "PRMs: the eta sweep and the control",
    "implicit PRM",
    "held-out candidates",
    "scores, Best-of-N and step metrics",
    "RAFT",
    "search",
)


def _policy(config: QuickstartConfig, seed: int) -> tuple:
    """Train (or reuse) the seed's tiny policy; return its path, the model, the tokenizer and its record."""
    from .policy import PolicyConfig, load_policy, train_policy

    folder = config.policy_dir or default_policy_dir()
    policy_config = PolicyConfig(max_steps=config.policy_steps, misconception=config.misconception, seed=seed)
    path = train_policy(folder, policy_config)
    model, tokenizer = load_policy(path)
    record = json.loads((Path(path) / "policy_config.json").read_text())
    say(f"    {path} ({record['num_parameters']} parameters)")
    return path, model, tokenizer, {"path": path, **{k: record.get(k) for k in ("train_seconds", "num_parameters")}}


def run_seed(config: QuickstartConfig, seed: int) -> dict:
    """Run every stage for one seed and write `seed-<seed>/results.json`.

    Args:
        config ([`QuickstartConfig`]):
            The settings.
        seed (`int`):
            The seed.

    Returns:
        `dict`: The seed's results: `seed`, `stage_seeds`, `policy`, `data`, `mc_labels`, `prms`, `best_of_n`,
        `step_metrics`, `raft` (if `raft_rounds`), `search` (with `--search`), `timings`, `total_wall_s`.
    """
    from .bon import evaluate_prms
    from .common import sample_candidates
    from .labels import label_training_solutions, train_implicit_prm, train_prms
    from .policy import format_prompt
    from .task import distinct_problems

    out = Path(config.output_dir) / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    started, timings = time.perf_counter(), {}
    names = ("problems", "test", "train_sampling", "test_sampling", "rollouts", "prm", "implicit_prm", "subsets")
    names += ("raft", "raft_samples", "search")
    results = {"seed": seed, "stage_seeds": {name: stage_seed(seed, name) for name in names}, "prms": {}}
    total = len(STAGES) - (not config.search) - (not config.raft_rounds)

    def step(name):
        return stage(name, len(timings) + 1, total, timings)

    with step("policy"):
        policy_path, model, tokenizer, results["policy"] = _policy(config, seed)
    with step("training and held-out problems"):
        task = None  # the quickstart's task: TaskConfig's defaults, as the policy was trained on
        train_problems = distinct_problems(config.num_train_problems, task, stage_seed(seed, "problems"))
        test_problems = distinct_problems(config.num_test_problems, task, stage_seed(seed, "test"), train_problems)
    with step("training solutions and their MC-rollout labels"):
        train, outcomes, results["mc_labels"], results["data"] = label_training_solutions(
            config, seed, policy_path, model, tokenizer, train_problems, out
        )
    prompts = {p.text: format_prompt(tokenizer, p) for p in train_problems + test_problems}
    train_prompts = [prompts[train_problems[c.problem].text] for c in train]
    prm_args = (config, seed, policy_path, tokenizer, train_prompts, train, outcomes, out)
    with step("PRMs: the eta sweep and the control"):
        scorers, stats = train_prms(*prm_args)
        results["prms"].update(stats)
    with step("implicit PRM"):
        implicit, results["prms"]["implicit"] = train_implicit_prm(*prm_args)
        scorers.update(implicit)
    with step("held-out candidates"):
        test = sample_candidates(
            model, tokenizer, test_problems, config.num_candidates, stage_seed(seed, "test_sampling"),
            config.max_new_tokens,
        )  # fmt: skip
        results["data"].update(
            num_test_problems=len(test_problems),
            num_test_candidates=sum(len(group) for group in test),
            test_answer_accuracy=sum(c.correct for g in test for c in g) / sum(len(g) for g in test),
        )
    with step("scores, Best-of-N and step metrics"):
        test_prompts = [prompts[test_problems[c.problem].text] for group in test for c in group]
        results["best_of_n"], results["step_metrics"] = evaluate_prms(
            config, scorers, test, test_prompts, train, train_prompts, stage_seed(seed, "subsets")
        )
    if config.raft_rounds:
        from .raft import run_raft_stage

        with step("RAFT"):
            results["raft"] = run_raft_stage(
                config, seed, policy_path, model, tokenizer, train_problems, test_problems, scorers, out
            )
    if config.search:
        from .search import run_search_stage

        with step("search"):
            er = scorers[prm_name(config.er_eta)]
            results["search"] = run_search_stage(config, seed, model, tokenizer, test_problems, er)
    results["timings"] = timings
    results["total_wall_s"] = round(time.perf_counter() - started, 2)
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2) + "\n")
    return results


def run_quickstart(config: QuickstartConfig) -> dict:
    """Run the experiment for every seed of `config.seed_list` and write the reports to `config.output_dir`.

    Args:
        config ([`QuickstartConfig`]):
            The settings.

    Returns:
        `dict`: The results, also written to `output_dir/results.json` (NaN and infinities as strings): `config`,
        `seeds`, `environment`, `n_values`, `per_seed` (each seed's results, see [`run_seed`]), `summary` (mean, std
        and per-seed values of every metric, [`~trl_erprm.quickstart.report.summarize_seeds`]), `comparisons`,
        `table`, `files`, `total_wall_s`.
    """
    from .report import comparisons, format_report, seed_metrics, summarize_seeds, write_plots

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"config": dataclasses.asdict(config), "seeds": config.seed_list, "environment": environment()}
    say(
        f"trl-erprm quickstart{' --fast (toy sizes: the numbers mean nothing)' if config.fast else ''}: seeds "
        f"{config.seed_list}, output {out}, {torch.get_num_threads()} torch thread(s), load average "
        f"{results['environment']['load_average_start']}"
    )
    per_seed = []
    for k, seed in enumerate(config.seed_list):
        say(f"\n######## seed {seed} ({k + 1} of {config.seeds})")
        per_seed.append(run_seed(config, seed))
    results["per_seed"] = json.loads(json.dumps(json_safe(per_seed)))  # as written: string keys, no infinities
    results["n_values"] = per_seed[0]["best_of_n"]["n_values"]
    results["summary"] = summarize_seeds([seed_metrics(r) for r in results["per_seed"]])
    results["comparisons"] = comparisons(results["config"], results["summary"], results["n_values"][-1])
    results["table"] = format_report(results)
    results["files"] = {"results": str(out / "results.json"), "table": str(out / "table.md")}
    if config.plot:
        results["files"].update(write_plots(results, out))
    (out / "table.md").write_text(results["table"] + "\n")
    results["total_wall_s"] = round(time.perf_counter() - started, 2)
    results["environment"]["load_average_end"] = load_average()
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2) + "\n")
    say("\n" + results["table"])
    say(f"\nTotal {results['total_wall_s']:.0f} s. Results and plots in {out}/")
    return results


def quickstart_main(argv: list[str] | None = None) -> int:
    """Entry point of `trl-erprm quickstart`: parse the options, run [`run_quickstart`] with `num_threads` threads.

    Args:
        argv (`list[str]`, *optional*):
            Arguments (without the program name); defaults to `sys.argv[1:]`. A YAML file can be given with
            `--config`.

    Returns:
        `int`: The exit status (0).

    Raises:
        [`~trl_erprm.script_utils.UsageError`]: An option value the settings reject (e.g. `--num_rollouts 0`).
    """
    (config,) = make_quickstart_parser().parse_args_and_config(sys.argv[1:] if argv is None else argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        run_quickstart(config)
    finally:
        torch.set_num_threads(previous)
    return 0


if __name__ == "__main__":
    sys.exit(quickstart_main())
