"""The Best-of-N stage: every PRM scores the same held-out candidates; Best-of-N, voting and step metrics.

Best-of-N at N = 1, 2, 4, ... up to `num_candidates` over random candidate subsets ([`~trl_erprm.evaluation.metrics
.selection_curves`]) for every PRM, with majority vote, PRM-weighted vote, pass@N and the first sample as references.
Step metrics against the checker's truth: within-problem step AUC and pairwise accuracy (the discrimination that
Best-of-N needs), step accuracy at 0.5, and the ProcessBench F1 of the first step below a threshold.
"""

from __future__ import annotations

import math

from .common import say


#: Training solutions that choose each PRM's step-F1 threshold.
CALIBRATION_SIZE = 256


def _is_probability(name: str) -> bool:
    """Whether a PRM's scores are probabilities (the MC-label PRMs and the control) rather than an implicit PRM's
    unbounded values (`implicit`, `implicit_noref`), which vote with their sigmoid."""
    return not name.startswith("implicit")


def step_f1(test_scores, test_first_errors, calib_scores, calib_first_errors, probabilities: bool) -> dict:
    """ProcessBench metrics of PRM step scores, at threshold 0.5 and at the threshold that is best on other solutions.

    Args:
        test_scores (`list[list[float]]`):
            Step scores of the evaluated solutions.
        test_first_errors (`list[int]`):
            Their true first wrong step (`-1` if none).
        calib_scores (`list[list[float]]`):
            Step scores of the calibration solutions.
        calib_first_errors (`list[int]`):
            Their true first wrong step.
        probabilities (`bool`):
            Whether the scores are probabilities; then the metrics at 0.5 are reported too.

    Returns:
        `dict`: `calibrated` (`threshold`, `calibration_f1` and the metrics on the evaluated solutions; NaN with a
        `note` when the calibration set cannot choose one) and, for probabilities, `at_0.5`.
    """
    from ..evaluation.metrics import choose_threshold, first_error_prediction, processbench_metrics

    out = {}
    if probabilities:
        predictions = [first_error_prediction(s, 0.5) for s in test_scores]
        out["at_0.5"] = processbench_metrics(test_first_errors, predictions)
    try:
        threshold, calibration_f1 = choose_threshold(calib_scores, calib_first_errors)
    except ValueError as error:  # e.g. no error-free calibration solution: say so, invent no threshold
        out["calibrated"] = {"threshold": math.nan, "calibration_f1": math.nan, "f1": math.nan, "note": str(error)}
        return out
    predictions = [first_error_prediction(s, threshold) for s in test_scores]
    metrics = processbench_metrics(test_first_errors, predictions)
    out["calibrated"] = {"threshold": threshold, "calibration_f1": calibration_f1, **metrics}
    return out


def _groups(flat: list, k: int) -> list[list]:
    return [flat[i : i + k] for i in range(0, len(flat), k)]


def step_metrics(name: str, scores, test, train_scores, train) -> dict:
    """Step-level quality of one PRM on the held-out candidates.

    Args:
        name (`str`):
            The PRM (implicit PRMs' scores are not probabilities: no metric at 0.5).
        scores (`list[list[float]]`):
            Step scores of the flattened held-out candidates.
        test (`list[list[Candidate]]`):
            The candidates, per problem.
        train_scores (`list[list[float]]`):
            Step scores of the training solutions (the calibration set of the threshold).
        train (`list[Candidate]`):
            The training solutions.

    Returns:
        `dict`: `local_auc`, `step_accuracy` (probabilities only) and the ProcessBench metrics of [`step_f1`].
    """
    from ..evaluation.metrics import local_step_auc
    from .labels import label_quality

    k = len(test[0])
    flat = [c for group in test for c in group]
    out = {"local_auc": local_step_auc(_groups(scores, k), [[c.first_error for c in g] for g in test])}
    scored = [i for i, c in enumerate(flat) if c.steps]
    mine = [scores[i] for i in scored]
    first_errors = [flat[i].first_error for i in scored]
    probabilities = _is_probability(name)
    out.update(step_f1(mine, first_errors, train_scores, [c.first_error for c in train], probabilities))
    if probabilities:
        out["step_accuracy"] = label_quality(mine, [flat[i].step_truth for i in scored], first_errors)["step_accuracy"]
    return out


def best_of_n(config, test, scores: dict[str, list[list[float]]], seed: int) -> dict:
    """Best-of-N, majority, PRM-weighted majority and pass@N curves over random candidate subsets.

    Args:
        config ([`QuickstartConfig`]):
            The settings (`aggregation`, `num_subset_draws`).
        test (`list[list[Candidate]]`):
            The held-out candidates, per problem (all groups of the same size).
        scores (`dict[str, list[list[float]]]`):
            Per PRM, the step scores of the flattened candidates.
        seed (`int`):
            Seed of the subset draws.

    Returns:
        `dict`: `n_values`, `aggregation`, `first_sample` (accuracy of each problem's first candidate), `curves`
        (`{method: {N: {"mean", "std", "values"}}}`, methods `bon_<prm>`, `weighted_majority_<prm>`, `majority`,
        `pass@n`) and `pairwise_accuracy` per PRM.
    """
    from ..evaluation.bon import aggregate_candidate_scores
    from ..evaluation.metrics import pairwise_accuracy, selection_curves

    k = len(test[0])
    per_problem = {name: _groups(aggregate_candidate_scores(s, config.aggregation), k) for name, s in scores.items()}
    n_values = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n < k] + [k]
    correct = [[float(c.correct) for c in group] for group in test]
    curves = selection_curves(
        correct, [[c.answer_key for c in group] for group in test], per_problem, n_values=n_values,
        num_seeds=config.num_subset_draws, seed=seed,
        vote_weight={name: "score" if _is_probability(name) else "sigmoid" for name in per_problem},
    )  # fmt: skip
    return {
        "n_values": n_values,
        "aggregation": config.aggregation,
        "first_sample": sum(group[0].correct for group in test) / len(test),
        "curves": curves,
        "pairwise_accuracy": {name: pairwise_accuracy(s, correct) for name, s in per_problem.items()},
    }


def evaluate_prms(config, scorers: dict, test, test_prompts, train, train_prompts, seed: int) -> tuple[dict, dict]:
    """Score the held-out candidates (and, to calibrate thresholds, the training solutions) with every PRM.

    Args:
        config ([`QuickstartConfig`]):
            The settings.
        scorers (`dict`):
            The scorers, by PRM name.
        test (`list[list[Candidate]]`):
            The held-out candidates, per problem.
        test_prompts (`list[str]`):
            The chat prompt of each flattened candidate.
        train (`list[Candidate]`):
            The training solutions.
        train_prompts (`list[str]`):
            Their chat prompts (the first [`CALIBRATION_SIZE`] solutions calibrate the step-F1 threshold).
        seed (`int`):
            Seed of the subset draws.

    Returns:
        `tuple[dict, dict]`: The Best-of-N results ([`best_of_n`]) and the step metrics per PRM ([`step_metrics`]).
    """
    flat = [c for group in test for c in group]
    calibration, calibration_prompts = train[:CALIBRATION_SIZE], train_prompts[:CALIBRATION_SIZE]
    test_scores, metrics = {}, {}
    for name, scorer in scorers.items():
        say(f"    scoring with the {name} PRM")
        test_scores[name] = scorer.score(test_prompts, [c.steps for c in flat])
        train_scores = scorer.score(calibration_prompts, [c.steps for c in calibration])
        metrics[name] = step_metrics(name, test_scores[name], test, train_scores, calibration)
    return best_of_n(config, test, test_scores, seed), metrics
