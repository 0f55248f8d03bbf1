"""LM-head vs token-classification PRM on the quickstart's arithmetic task: same data, same training budget.

    python benchmarks/prm_heads.py [--quick] [--seed S] [--output prm_heads.json]

Both PRMs start from the quickstart's tiny policy, trained exactly as the quickstart trains its PRMs (its
`ERPRMConfig` and scorer for either `head`): the LM-head PRM reads the policy's own logits of " +" / " -" at the " ки"
tag after every step (the quickstart's default), the token-classification PRM puts a new 2-label head on the policy's
body. Both train with `ERPRMTrainer` on the same labels, the same epochs, batch size, learning rate and seed: the
MC-rollout labels (ER labels with the quickstart's headline eta) and, as a control, the checker's true step labels.
Then all four score the same held-out candidates. The sizes are the quickstart's defaults (256 problems x 4 sampled
solutions labelled with 8 rollouts per step, 200 x 16 held-out candidates). Reported: step accuracy against the
checker's truth, the ProcessBench-style step F1, Best-of-N accuracy at every N (mean over random candidate subsets)
and each PRM's training time, with majority vote, pass@N and the first sample as references. The policy is the
quickstart's cached one (trained on first use, a few minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path


def run(quick: bool = False, seed: int = 0, learning_rate: float = 1e-3) -> dict:
    """Train both PRMs on the same labels and evaluate them on the same candidates.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Smaller sizes (a check of the script, not a measurement).
        seed (`int`, *optional*, defaults to `0`):
            Seed of everything.
        learning_rate (`float`, *optional*, defaults to `1e-3`):
            Learning rate of both PRMs (the quickstart's `prm_learning_rate`).

    Returns:
        `dict`: Settings, per-head metrics and timings.
    """
    import torch
    from datasets import Dataset

    from trl_erprm import ERPRMTrainer
    from trl_erprm.models import load_model
    from trl_erprm.quickstart import bon, pipeline, task
    from trl_erprm.quickstart.common import sample_candidates, stage_seed
    from trl_erprm.quickstart.config import QuickstartConfig, prm_name
    from trl_erprm.quickstart.labels import _prm_args, label_training_solutions, prm_scorer
    from trl_erprm.quickstart.policy import format_prompt

    sizes = {}  # the quickstart's defaults: 256 x 4 training solutions, 8 rollouts, 200 x 16 held-out candidates
    if quick:
        sizes = {"num_train_problems": 8, "num_test_problems": 8, "num_candidates": 4, "num_rollouts": 2}
    config = QuickstartConfig(seed=seed, prm_learning_rate=learning_rate, num_subset_draws=10, **sizes)
    out = Path(tempfile.mkdtemp(prefix="prm-heads-"))
    policy_path, model, tokenizer, _ = pipeline._policy(config, seed)
    train_problems = task.distinct_problems(config.num_train_problems, None, stage_seed(seed, "problems"))
    test_problems = task.distinct_problems(config.num_test_problems, None, stage_seed(seed, "test"), train_problems)
    train, outcomes, label_quality, data = label_training_solutions(
        config, seed, policy_path, model, tokenizer, train_problems, out
    )
    prompts = {p.text: format_prompt(tokenizer, p) for p in train_problems + test_problems}
    train_prompts = [prompts[train_problems[c.problem].text] for c in train]
    labelled = {
        # the MC-rollout labels (ER labels at batch time), as the quickstart trains its PRMs
        "er": [
            {"prompt": p, "completions": c.steps, "step_outcomes": o}
            for p, c, o in zip(train_prompts, train, outcomes)
        ],
        # the checker's true step labels: a control with clean labels
        "oracle": [
            {"prompt": p, "completions": c.steps, "labels": [float(t) for t in c.step_truth]}
            for p, c in zip(train_prompts, train)
        ],
    }

    scorers, training = {}, {}
    for labels, rows in labelled.items():
        for head in ("token_classification", "lm"):
            key = f"{head}/{labels}"
            head_config = dataclasses.replace(config, head=head)  # the quickstart's PRM settings for this head
            torch.manual_seed(stage_seed(seed, "prm"))  # the same start for every PRM
            kind = "causal_lm" if head == "lm" else "token_classification"
            prm = load_model(policy_path, kind, **({"num_labels": 2} if head != "lm" else {}))
            args = _prm_args(head_config, key.replace("/", "-"), config.er_eta, seed, out)
            args.disable_tqdm = True
            trainer = ERPRMTrainer(
                model=prm, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
            )
            started = time.perf_counter()
            result = trainer.train()
            training[key] = {"train_loss": result.training_loss, "seconds": round(time.perf_counter() - started, 1)}
            scorers[key] = prm_scorer(head_config, trainer.model.eval(), tokenizer)

    test = sample_candidates(
        model,
        tokenizer,
        test_problems,
        config.num_candidates,
        stage_seed(seed, "test_sampling"),
        config.max_new_tokens,
    )
    test_prompts = [prompts[test_problems[c.problem].text] for group in test for c in group]
    subsets = stage_seed(seed, "subsets")
    best_of_n, step_f1 = bon.evaluate_prms(config, scorers, test, test_prompts, train, train_prompts, subsets)
    curves = best_of_n["curves"]
    table = {
        name: {
            "step_accuracy": step_f1[name]["step_accuracy"],
            "step_f1_at_0.5": step_f1[name]["at_0.5"]["f1"],
            "step_f1_calibrated": step_f1[name]["calibrated"]["f1"],
            **{f"bon@{n}": curves[f"bon_{name}"][n]["mean"] for n in best_of_n["n_values"]},
            **training[name],
        }
        for name in scorers
    }
    references = {
        "first_sample": best_of_n["first_sample"],
        **{f"majority@{n}": curves["majority"][n]["mean"] for n in best_of_n["n_values"]},
        **{f"pass@{n}": curves["pass@n"][n]["mean"] for n in best_of_n["n_values"] if "pass@n" in curves},
    }
    return {
        "settings": {
            **{k: getattr(config, k) for k in ("num_train_problems", "samples_per_problem", "num_rollouts")},
            **{k: getattr(config, k) for k in ("num_test_problems", "num_candidates", "prm_batch_size")},
            **{"eta": config.er_eta, "epochs": config.prm_epochs, "learning_rate": learning_rate, "seed": seed},
        },
        "data": data,
        "label_step_accuracy_er": label_quality[prm_name(config.er_eta)]["step_accuracy"],
        "heads": table,
        "references": references,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Toy sizes: check the script.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    cli = parser.parse_args()
    results = run(cli.quick, cli.seed, cli.learning_rate)
    text = json.dumps(results, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    print(text)
    if cli.output:
        Path(cli.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
