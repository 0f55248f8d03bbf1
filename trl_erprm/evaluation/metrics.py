"""Pure selection and step-level metrics: Best-of-N, majority and PRM-weighted majority vote, pass@N, ProcessBench F1.

No models and no I/O: every function takes per-candidate correctness, answer keys and scores, so published Best-of-N
dumps and freshly scored candidates go through the same code.

Rules (the same everywhere):

- A candidate's score is NaN when it cannot be scored (no steps, a NaN PRM output): NaN ranks below every real score
  in Best-of-N and weighs 0 in weighted voting.
- Ties go to the candidate with the lowest index (Best-of-N), or to the answer group whose first member has the lowest
  index (voting). Subsets are kept sorted, so the tie rule does not depend on the sampling order.
- Majority voting groups candidates by [`normalize_answer`] of their final answer; candidates without an answer do not
  vote; a subset where nobody answered counts as wrong. A group is as correct as its first member.
- A problem with fewer candidates than `n` uses all of its candidates at that `n`; a problem with none counts as wrong.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

import numpy as np


# ---------------------------------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------------------------------

_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")
_DECIMAL_RE = re.compile(r"[-+]?\d+\.\d*")


def normalize_answer(answer: str | None) -> str | None:
    """Grouping key of a final answer for majority voting (string rules, no math).

    Removes `$`, whitespace, `\\left`/`\\right`, LaTeX thin spaces (`\\,`, `\\!`, `\\;`, `\\:`) and a trailing period;
    maps `\\dfrac`/`\\tfrac` to `\\frac`; drops thousands separators of plain numbers ("1,000" -> "1000") and trailing
    zeros of decimals ("2.50" -> "2.5", "3.0" -> "3"). Answers that are equal only mathematically ("1/2" and "0.5")
    stay apart: that is what grading is for.

    Args:
        answer (`str` or `None`):
            An extracted final answer (see [`~trl_erprm.labeling.grading.extract_final_answer`]).

    Returns:
        `str` or `None`: The key, or `None` for a missing or empty answer.
    """
    if answer is None:
        return None
    key = re.sub(r"\\(left|right)(?![a-zA-Z])", "", answer)
    key = key.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    key = re.sub(r"\\[,!;:]", "", key).replace("$", "")
    key = re.sub(r"\s+", "", key).rstrip(".")
    if _THOUSANDS_RE.fullmatch(key):
        key = key.replace(",", "")
    if _DECIMAL_RE.fullmatch(key):
        key = key.rstrip("0").rstrip(".") or "0"
    return key or None


# ---------------------------------------------------------------------------------------------------------------------
# Selection within one subset of candidates
# ---------------------------------------------------------------------------------------------------------------------


def pick_best(scores: Sequence[float], subset: Sequence[int]) -> int:
    """Index of the highest-scoring candidate of `subset` (NaN ranks lowest; ties go to the lowest index).

    Args:
        scores (`Sequence[float]`):
            One aggregated score per candidate of the problem.
        subset (`Sequence[int]`):
            Candidate indices to choose from, non-empty.

    Returns:
        `int`: The chosen candidate index.
    """
    best, best_score = None, -math.inf
    for i in sorted(subset):
        s = scores[i]
        if best is None or (not math.isnan(s) and s > best_score):
            best, best_score = i, (s if not math.isnan(s) else -math.inf)
    return best


def _sigmoid(x: float) -> float:
    return x if math.isnan(x) else 0.5 * (1.0 + math.tanh(0.5 * x))  # sigmoid, without overflow


#: How a candidate's aggregated PRM score becomes its weight in a weighted vote (weights must be >= 0):
#: `"score"`, the score itself (a probability: token-classification and LM-head PRMs); `"sigmoid"`, `sigmoid(score)`,
#: for an implicit PRM's values (`q = beta * log pi/pi_ref`, unbounded): the implicit PRM is trained with a
#: cross-entropy on `sigmoid(beta * log pi/pi_ref)` against the outcome (arXiv:2412.01981, Eq. 3 and section 3.1), so
#: `sigmoid(q)` is its probability that the solution is correct.
VOTE_WEIGHTS = {"score": lambda score: score, "sigmoid": _sigmoid}


def vote_weights(scores: Sequence[float], how: str = "score") -> list[float]:
    """Weights of a weighted vote from aggregated PRM scores ([`VOTE_WEIGHTS`]; NaN stays NaN, which weighs 0).

    Args:
        scores (`Sequence[float]`):
            One aggregated score per candidate.
        how (`str`, *optional*, defaults to `"score"`):
            A key of [`VOTE_WEIGHTS`]: `"score"` or `"sigmoid"` (an implicit PRM's values).

    Returns:
        `list[float]`: One weight per candidate.

    Raises:
        `ValueError`: An unknown `how`.

    Example:

    ```python
    >>> vote_weights([-0.1, 0.0, 2.0], "sigmoid")
    [0.47502081252106, 0.5, 0.8807970779778824]
    ```
    """
    if how not in VOTE_WEIGHTS:
        raise ValueError(f"Unknown vote weight {how!r}; choose one of {sorted(VOTE_WEIGHTS)}.")
    return [VOTE_WEIGHTS[how](float(s)) for s in scores]


def resolve_vote_weight(vote_weight: str, implicit: bool) -> str:
    """The vote weight a run uses: `"auto"` is `"sigmoid"` for an implicit PRM (unbounded values), else `"score"`.

    Args:
        vote_weight (`str`):
            `"auto"` or a key of [`VOTE_WEIGHTS`].
        implicit (`bool`):
            Whether the scores are an implicit PRM's values.

    Returns:
        `str`: A key of [`VOTE_WEIGHTS`].

    Raises:
        `ValueError`: Anything else.
    """
    if vote_weight == "auto":
        return "sigmoid" if implicit else "score"
    if vote_weight not in VOTE_WEIGHTS:
        raise ValueError(f"vote_weight must be 'auto' or one of {sorted(VOTE_WEIGHTS)}, got {vote_weight!r}.")
    return vote_weight


def check_vote_weights(weights: Sequence[float], where: str = "") -> None:
    """Refuse a negative weight: a weighted vote sums weights, and a negative one (an implicit PRM's `q`, a log-prob)
    would count against its answer, so that the answer with the most (negative) support loses.

    Args:
        weights (`Sequence[float]`):
            One weight per candidate (NaN allowed: it weighs 0).
        where (`str`, *optional*, defaults to `""`):
            Where the weights come from, for the message (e.g. `"problem 3, aggregation 'min'"`).

    Raises:
        `ValueError`: A negative weight, naming the candidate and the fix.
    """
    for i, w in enumerate(weights):
        if w < 0:  # NaN < 0 is False
            raise ValueError(
                f"Weighted voting needs non-negative weights, but candidate {i}{' of ' + where if where else ''} "
                f"weighs {w}: a negative score counts against its answer. For an implicit PRM's values (q, step "
                "rewards) vote with their sigmoid (vote_weights(scores, 'sigmoid'), `--vote_weight sigmoid`, the "
                "default with `--prm_type implicit`); otherwise convert the scores to probabilities."
            )


def vote(keys: Sequence[str | None], subset: Sequence[int], weights: Sequence[float] | None = None) -> int | None:
    """Majority (or weighted-majority) vote over answer keys; returns a representative candidate of the winner.

    Args:
        keys (`Sequence[str | None]`):
            Answer key of each candidate ([`normalize_answer`]); `None` does not vote.
        subset (`Sequence[int]`):
            Candidate indices that vote.
        weights (`Sequence[float]`, *optional*):
            Weight of each candidate's vote, `>= 0` (e.g. its PRM score as a probability, see [`vote_weights`]); NaN
            weighs 0. Plain majority when `None`.

    Returns:
        `int` or `None`: The lowest-index member of the winning group, or `None` if no candidate of the subset has an
        answer.

    Raises:
        `ValueError`: A negative weight in the subset ([`check_vote_weights`]).
    """
    if weights is not None:
        check_vote_weights(weights)
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i in sorted(subset):
        key = keys[i]
        if key is None:
            continue
        w = 1.0 if weights is None else weights[i]
        totals[key] = totals.get(key, 0.0) + (0.0 if math.isnan(w) else w)
        first.setdefault(key, i)
    if not totals:
        return None
    winner = max(totals, key=lambda k: (totals[k], -first[k]))
    return first[winner]


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy curves over N
# ---------------------------------------------------------------------------------------------------------------------


#: Grading statuses that are no verdict on a problem, and the count each is reported under: a problem with one of them
#: among its candidates is left out of every accuracy (Best-of-N, search, RAFT statistics), never read as wrong.
UNKNOWN_GRADES = {"gold_unparsable": "problems_gold_unparsable", "timeout": "problems_with_grading_timeouts"}


def graded_problems(statuses: Sequence[Sequence[str | None]]) -> tuple[list[int], dict[str, int]]:
    """Which problems have a known accuracy, under the one rule of Best-of-N, search and RAFT.

    A problem whose gold answer math-verify cannot parse (`"gold_unparsable"`), or with a candidate whose grading timed
    out even on the grader's retry (`"timeout"`), has an unknown accuracy: it is left out of every accuracy (numerator
    and denominator) and counted. A timeout is never a wrong answer; a grading `"error"` is (the worker failed on that
    answer).

    Args:
        statuses (`Sequence[Sequence[str | None]]`):
            Per problem, the grading status of each candidate (see `GRADE_STATUSES`; `None` for an ungraded one).

    Returns:
        `tuple[list[int], dict[str, int]]`: The indices of the problems to evaluate, and the counts of those left out
        (`problems_gold_unparsable`, then `problems_with_grading_timeouts` for the others with a timeout).

    Example:

    ```python
    >>> graded_problems([["correct"], ["incorrect", "timeout"], ["gold_unparsable", "timeout"]])
    ([0], {'problems_gold_unparsable': 1, 'problems_with_grading_timeouts': 1})
    ```
    """
    kept, counts = [], dict.fromkeys(UNKNOWN_GRADES.values(), 0)
    for index, problem in enumerate(statuses):
        reason = next((UNKNOWN_GRADES[s] for s in UNKNOWN_GRADES if s in problem), None)
        if reason is None:
            kept.append(index)
        else:
            counts[reason] += 1
    return kept, counts


def grading_timeout_message(num_problems: int) -> str:
    """The warning of a run that left problems out of its accuracies for grading timeouts (one text for every command).

    Args:
        num_problems (`int`):
            Problems left out (`problems_with_grading_timeouts` of [`graded_problems`]).

    Returns:
        `str`: The message.
    """
    return (
        f"{num_problems} problem(s) have a candidate whose grading timed out (even on the retry with a longer limit): "
        "they are left out of every accuracy, not counted as wrong. Raise --grading_timeout or --grading_num_workers if "
        "the machine is loaded."
    )


def default_n_values(max_n: int) -> list[int]:
    """`1, 2, 4, ...` up to `max_n`, plus `max_n` itself when it is not a power of two.

    Args:
        max_n (`int`):
            Largest number of candidates.

    Returns:
        `list[int]`: The values of N.
    """
    values = [2**k for k in range(max(1, max_n).bit_length()) if 2**k <= max_n]
    if max_n >= 1 and values[-1] != max_n:
        values.append(max_n)
    return values


def _problem_outcomes(correct, keys, scores: dict, weights: dict, subset: list[int]) -> dict[str, float]:
    """Correctness of every method on one subset of one problem's candidates (`weights`: the vote weights)."""
    if not subset:
        return dict.fromkeys(_method_names(scores), 0.0)
    out = {"pass@n": float(max(correct[i] for i in subset))}
    winner = vote(keys, subset)
    out["majority"] = 0.0 if winner is None else float(correct[winner])
    for agg, values in scores.items():
        out[f"bon_{agg}"] = float(correct[pick_best(values, subset)])
        winner = vote(keys, subset, weights[agg])
        out[f"weighted_majority_{agg}"] = 0.0 if winner is None else float(correct[winner])
    return out


def _method_names(scores: dict) -> list[str]:
    names = [f"bon_{agg}" for agg in scores] + ["majority"] + [f"weighted_majority_{agg}" for agg in scores]
    return [*names, "pass@n"]


def selection_curves(
    correct: Sequence[Sequence[float]],
    keys: Sequence[Sequence[str | None]],
    scores: dict[str, Sequence[Sequence[float]]],
    n_values: Sequence[int] | None = None,
    num_seeds: int = 5,
    seed: int = 0,
    subsets: str = "random",
    vote_weight: str | dict[str, str] = "score",
) -> dict[str, dict[int, dict]]:
    """Accuracy at each N of Best-of-N per aggregation, majority vote, weighted majority per aggregation and pass@N.

    For each N and each seed, every problem draws one random subset of `min(N, k)` of its `k` candidates (the same
    subsets for every method, so methods are compared on equal draws); the accuracy is the mean over problems, and
    the mean and standard deviation are taken over seeds. With `subsets="all"` every subset of size `min(N, k)` is
    enumerated instead and the exact expectation is returned (std 0): small problems only.

    Args:
        correct (`Sequence[Sequence[float]]`):
            Per problem, the correctness (0/1) of each candidate.
        keys (`Sequence[Sequence[str | None]]`):
            Per problem, each candidate's answer key for voting ([`normalize_answer`]).
        scores (`dict[str, Sequence[Sequence[float]]]`):
            Per aggregation name (e.g. `"min"`), per problem, each candidate's aggregated PRM score (NaN allowed).
        n_values (`Sequence[int]`, *optional*):
            Values of N; defaults to [`default_n_values`] of the largest candidate count.
        num_seeds (`int`, *optional*, defaults to `5`):
            Random subsets drawn per problem and N.
        seed (`int`, *optional*, defaults to `0`):
            Base seed of the subset draws.
        subsets (`str`, *optional*, defaults to `"random"`):
            `"random"` or `"all"` (exhaustive).
        vote_weight (`str` or `dict[str, str]`, *optional*, defaults to `"score"`):
            How `weighted_majority_<agg>` weighs a candidate ([`VOTE_WEIGHTS`]): `"score"` (a probability) or
            `"sigmoid"` (an implicit PRM's values); a dict gives it per aggregation name (`"score"` for a name it
            lacks), for scores of PRMs of both kinds. Best-of-N ranks the scores themselves.

    Returns:
        `dict[str, dict[int, dict]]`: `{method: {N: {"mean": float, "std": float, "values": list[float]}}}` with
        methods `bon_<agg>`, `majority`, `weighted_majority_<agg>` and `pass@n`.

    Raises:
        `ValueError`: Unknown `subsets` or `vote_weight`, `num_seeds < 1`, or a negative vote weight (naming the
            problem, the candidate and the aggregation).
    """
    if subsets not in ("random", "all"):
        raise ValueError(f"subsets must be 'random' or 'all', got {subsets!r}.")
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}.")
    sizes = [len(c) for c in correct]
    if n_values is None:
        n_values = default_n_values(max(sizes, default=1))
    names = _method_names(scores)
    kinds = vote_weight if isinstance(vote_weight, dict) else dict.fromkeys(scores, vote_weight)
    weights = {
        agg: [vote_weights(problem, kinds.get(agg, "score")) for problem in values] for agg, values in scores.items()
    }
    for agg, values in weights.items():
        for p, problem in enumerate(values):
            check_vote_weights(problem, f"problem {p} (aggregation {agg!r})")
    curves: dict[str, dict[int, dict]] = {name: {} for name in names}
    for n in n_values:
        draws = num_seeds if subsets == "random" else 1
        per_draw = {name: [] for name in names}
        for s in range(draws):
            rng = np.random.default_rng([seed, n, s])
            totals = dict.fromkeys(names, 0.0)
            for p, k in enumerate(sizes):
                size = min(n, k)
                if subsets == "all":
                    combos = [list(c) for c in itertools.combinations(range(k), size)] or [[]]
                else:
                    combos = [sorted(rng.choice(k, size=size, replace=False).tolist()) if k else []]
                problem_scores = {agg: values[p] for agg, values in scores.items()}
                problem_weights = {agg: values[p] for agg, values in weights.items()}
                for combo in combos:
                    outcome = _problem_outcomes(correct[p], keys[p], problem_scores, problem_weights, combo)
                    for name in names:
                        totals[name] += outcome[name] / len(combos)
            for name in names:
                per_draw[name].append(totals[name] / max(1, len(sizes)))
        for name in names:
            values = per_draw[name]
            curves[name][n] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return curves


# ---------------------------------------------------------------------------------------------------------------------
# ProcessBench-style step evaluation
# ---------------------------------------------------------------------------------------------------------------------


def first_error_prediction(step_scores: Sequence[float], threshold: float) -> int:
    """Predicted index of the first wrong step: the first step scoring strictly below `threshold`, else `-1`.

    A NaN score counts as below the threshold (a step the PRM cannot vouch for).

    Args:
        step_scores (`Sequence[float]`):
            One score per step.
        threshold (`float`):
            Scores below it mark an error.

    Returns:
        `int`: The step index, or `-1` when no step is below the threshold.
    """
    for i, s in enumerate(step_scores):
        if math.isnan(s) or s < threshold:
            return i
    return -1


def processbench_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict:
    """Accuracy on erroneous items, on error-free items, and their harmonic mean (ProcessBench F1).

    Args:
        labels (`Sequence[int]`):
            Index of the first wrong step of each item, `-1` when all steps are right.
        predictions (`Sequence[int]`):
            Predicted indices, same convention.

    Returns:
        `dict`: `error_accuracy` (exact first-error index on items with an error), `correct_accuracy` (predicted `-1`
        on items without), `f1` (0 when both are 0), and the counts `num_error_items`, `num_correct_items`. An
        accuracy over zero items is NaN, and so is the F1 then.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions.")
    errors = [(y, p) for y, p in zip(labels, predictions) if y != -1]
    clean = [(y, p) for y, p in zip(labels, predictions) if y == -1]
    error_acc = sum(y == p for y, p in errors) / len(errors) if errors else math.nan
    correct_acc = sum(p == -1 for _, p in clean) / len(clean) if clean else math.nan
    if math.isnan(error_acc) or math.isnan(correct_acc):
        f1 = math.nan
    elif error_acc + correct_acc == 0:
        f1 = 0.0
    else:
        f1 = 2 * error_acc * correct_acc / (error_acc + correct_acc)
    return {
        "error_accuracy": error_acc,
        "correct_accuracy": correct_acc,
        "f1": f1,
        "num_error_items": len(errors),
        "num_correct_items": len(clean),
    }


def choose_threshold(step_scores: Sequence[Sequence[float]], labels: Sequence[int]) -> tuple[float, float]:
    """Threshold maximising the ProcessBench F1 on a calibration set.

    Candidates are every distinct finite step score (a threshold equal to a score flags the scores strictly below
    it) and one value above the largest score; ties go to the smallest threshold. Runs in `O(M log M)` for `M` scores:
    an item is judged right exactly for thresholds in an interval `(lo, hi]` (for an item whose first error is step
    `y`: above `s_y` and at most the minimum of the earlier steps), so counts come from sorted interval ends.

    Args:
        step_scores (`Sequence[Sequence[float]]`):
            Per item, one score per step.
        labels (`Sequence[int]`):
            Per item, the index of the first wrong step or `-1`.

    Returns:
        `tuple[float, float]`: The threshold and its F1 on the calibration set.
    """
    finite = sorted({float(s) for item in step_scores for s in item if not math.isnan(s)})
    if not finite:
        raise ValueError("No finite step score to choose a threshold from: score some steps first.")
    candidates = np.array([*finite, np.nextafter(finite[-1], math.inf)])
    clean_hi, error_lo, error_hi = [], [], []
    for item, y in zip(step_scores, labels):
        s = [-math.inf if math.isnan(v) else float(v) for v in item]  # NaN is always "below the threshold"
        if y == -1:
            clean_hi.append(min(s, default=math.inf))
        elif 0 <= y < len(s):
            lo, hi = s[y], min(s[:y], default=math.inf)
            error_lo.append(lo if lo < hi else math.inf)  # an empty interval is never right
            error_hi.append(hi if lo < hi else math.inf)
        else:  # the first error lies beyond the scored steps: never found
            error_lo.append(math.inf)
            error_hi.append(math.inf)
    clean_hi, error_lo, error_hi = np.sort(clean_hi), np.sort(error_lo), np.sort(error_hi)
    clean_right = len(clean_hi) - np.searchsorted(clean_hi, candidates, side="left")
    error_right = np.searchsorted(error_lo, candidates, side="left") - np.searchsorted(
        error_hi, candidates, side="left"
    )
    if not len(clean_hi) or not len(error_lo):
        raise ValueError(
            "The calibration set needs items with an error and items without one (label -1) to choose a threshold."
        )
    a, b = error_right / len(error_lo), clean_right / len(clean_hi)
    f1 = np.where(a + b > 0, 2 * a * b / np.where(a + b > 0, a + b, 1.0), 0.0)
    best = int(np.argmax(f1))
    return float(candidates[best]), float(f1[best])


# ---------------------------------------------------------------------------------------------------------------------
# Within-problem discrimination
# ---------------------------------------------------------------------------------------------------------------------


def _win_rate(pairs: list[tuple[float, float]]) -> float:
    """Share of `(higher_expected, lower_expected)` pairs ordered as expected, ties counting one half; NaN if none."""
    if not pairs:
        return math.nan
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def local_step_auc(step_scores: Sequence[Sequence[Sequence[float]]], first_errors: Sequence[Sequence[int]]) -> float:
    """Within-problem step AUC: how often a PRM scores a correct step above the FIRST wrong step at the same index of
    another solution of the same problem.

    For each problem and step index `k`, every pair (a step `k` with a correct prefix, i.e. of a solution whose first
    error is `-1` or after `k`; the step `k` of a solution whose first error is `k`) counts once; ties count one half;
    the pairs of all problems and indices are pooled. A global step AUC mixes problems and step positions, so a PRM
    that only learned which problems are hard looks good on it; this one is 0.5 for such a PRM (used in the
    quickstart's research, where global AUC was 0.8-0.9 while Best-of-N fell below the first sample).

    Args:
        step_scores (`Sequence[Sequence[Sequence[float]]]`):
            Per problem, per solution, one score per step (a solution may have fewer scores than steps; a NaN score
            is left out).
        first_errors (`Sequence[Sequence[int]]`):
            Per problem, per solution, the index of its first wrong step (`-1` if none).

    Returns:
        `float`: The AUC in [0, 1], NaN when no problem has both kinds of steps at some index.

    Raises:
        `ValueError`: If the two arguments do not have the same number of problems and solutions.
    """
    pairs = []
    for p, (scores, errors) in enumerate(zip(step_scores, first_errors, strict=True)):
        if len(scores) != len(errors):
            raise ValueError(f"Problem {p}: {len(scores)} scored solutions but {len(errors)} first errors.")
        for k in range(max((len(s) for s in scores), default=0)):
            at_k = [(s[k], e) for s, e in zip(scores, errors) if len(s) > k and not math.isnan(s[k])]
            good = [v for v, e in at_k if e == -1 or e > k]
            bad = [v for v, e in at_k if e == k]
            pairs += [(g, b) for g in good for b in bad]
    return _win_rate(pairs)


def pairwise_accuracy(scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]) -> float:
    """Within-problem ranking accuracy: how often a solution with the right final answer scores above one with a wrong
    answer to the same problem (a NaN score ranks below every number, as in Best-of-N; ties count one half; the pairs of
    all problems are pooled).

    Args:
        scores (`Sequence[Sequence[float]]`):
            Per problem, one (aggregated) score per solution.
        correct (`Sequence[Sequence[bool]]`):
            Per problem, whether each solution's final answer is right.

    Returns:
        `float`: The accuracy in [0, 1], NaN when no problem has both a right and a wrong solution.

    Raises:
        `ValueError`: If the two arguments do not have the same number of problems and solutions.
    """
    pairs = []
    for p, (row, ok) in enumerate(zip(scores, correct, strict=True)):
        if len(row) != len(ok):
            raise ValueError(f"Problem {p}: {len(row)} scores but {len(ok)} correctness values.")
        row = [-math.inf if math.isnan(s) else s for s in row]
        pairs += [(a, b) for a, a_ok in zip(row, ok) if a_ok for b, b_ok in zip(row, ok) if not b_ok]
    return _win_rate(pairs)
