"""RAFT's scoring and selection rules: pure functions over the N samples of each problem.

Scores (one float per sample, NaN for a sample that cannot be scored, which is never selected):

- `"prm"`: a PRM's aggregated step scores ([`~trl_erprm.PRMReward`]);
- `"outcome"`: the grader's verdict, 1.0 correct / 0.0 wrong or no answer, NaN for a grading timeout or an unparsable
  gold ([`outcome_scores`]);
- `"majority"`: for a sample giving the problem's majority answer, the share of the samples giving it; 0.0 for a sample
  with another answer or none ([`majority_scores`]).

Which samples may be kept at all ([`keepable`]): with `"outcome"` the correct ones only, with `"majority"` those giving
the majority answer only (a score of 0.0 is a wrong or unsupported answer, never training data); with `"prm"` every
scored one. Selections ([`SELECTIONS`], [`select_samples`]) among them: `"best_of_n"` (the highest score; ties to the
lowest index), `"top_k"` (the `k` highest), `"threshold"` (every sample scoring at least the threshold), optionally
among the graded-correct samples only. A problem with nothing keepable contributes nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


__all__ = ["SCORINGS", "SELECTIONS", "keepable", "majority_scores", "outcome_scores", "select_samples"]

#: Ways to score a sample (`RAFTConfig.scoring`).
SCORINGS = ("prm", "outcome", "majority")
#: Ways to keep samples of a problem (`RAFTConfig.selection`).
SELECTIONS = ("best_of_n", "top_k", "threshold")


def outcome_scores(statuses: Sequence[str]) -> list[float]:
    """Scores from grading statuses: 1.0 for `"correct"`, 0.0 for `"incorrect"` and `"no_answer"`, NaN otherwise (a
    timeout or an unparsable gold is not a verdict on the sample).

    Args:
        statuses (`Sequence[str]`):
            Statuses of [`~trl_erprm.labeling.grading.GradeResult`].

    Returns:
        `list[float]`: One score per sample.
    """
    return [1.0 if s == "correct" else 0.0 if s in ("incorrect", "no_answer") else math.nan for s in statuses]


def majority_scores(answers: Sequence[str | None]) -> list[float]:
    """Self-consistency scores: for a sample giving the majority answer (answers already normalised, see
    [`~trl_erprm.evaluation.metrics.normalize_answer`]; the winner of
    [`~trl_erprm.evaluation.metrics.vote`], a tie going to the answer given first), the share of the samples giving
    it; 0.0 for a sample with another answer or without one.

    Args:
        answers (`Sequence[str | None]`):
            The normalised final answer of each sample of one problem.

    Returns:
        `list[float]`: One score per sample, in [0, 1]; all 0.0 when no sample has an answer.

    Example:

    ```python
    >>> majority_scores(["4", "4", "5", None])
    [0.5, 0.5, 0.0, 0.0]
    ```
    """
    from ..evaluation.metrics import vote

    winner = vote(answers, range(len(answers)))
    if winner is None:
        return [0.0] * len(answers)
    share = Counter(answers)[answers[winner]] / len(answers)
    return [share if a == answers[winner] else 0.0 for a in answers]


def keepable(scoring: str, scores: Sequence[float]) -> list[bool]:
    """Which samples of one problem a scoring lets RAFT keep at all (before the selection).

    `"outcome"` keeps the graded-correct samples only (score 1.0) and `"majority"` those giving the majority answer
    only (a positive [`majority_scores`]): a wrong answer, or one the majority does not support, is never fine-tuned
    on, even when it is the best a problem has. `"prm"` keeps every scored sample (NaN never is).

    Args:
        scoring (`str`):
            One of [`SCORINGS`].
        scores (`Sequence[float]`):
            One score per sample, from that scoring.

    Returns:
        `list[bool]`: One flag per sample.

    Raises:
        `ValueError`: An unknown scoring.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"Unknown scoring {scoring!r}; choose one of {SCORINGS}.")
    if scoring == "prm":
        return [not math.isnan(s) for s in scores]
    return [s > 0 for s in scores]  # NaN > 0 is False


def select_samples(
    scores: Sequence[float],
    method: str = "best_of_n",
    top_k: int = 1,
    threshold: float | None = None,
    allowed: Sequence[bool] | None = None,
) -> list[int]:
    """The samples of one problem that RAFT keeps.

    Args:
        scores (`Sequence[float]`):
            One score per sample; NaN is never kept.
        method (`str`, *optional*, defaults to `"best_of_n"`):
            One of [`SELECTIONS`].
        top_k (`int`, *optional*, defaults to `1`):
            `"top_k"`: how many to keep (fewer when fewer can be kept).
        threshold (`float`, *optional*):
            `"threshold"`: the lowest score kept.
        allowed (`Sequence[bool]`, *optional*):
            Which samples may be kept at all (e.g. the graded-correct ones); all when `None`.

    Returns:
        `list[int]`: The kept sample indices, in decreasing score order (ties: lowest index first); empty when none
        qualifies.

    Raises:
        `ValueError`: An unknown method, `top_k < 1`, a `"threshold"` selection without threshold, or `allowed` of
            another length.
    """
    if method not in SELECTIONS:
        raise ValueError(f"Unknown selection {method!r}; choose one of {SELECTIONS}.")
    if allowed is not None and len(allowed) != len(scores):
        raise ValueError(f"allowed has {len(allowed)} entries for {len(scores)} samples.")
    candidates = [i for i, s in enumerate(scores) if not math.isnan(s) and (allowed is None or allowed[i])]
    ranked = sorted(candidates, key=lambda i: (-scores[i], i))
    if method == "best_of_n":
        return ranked[:1]
    if method == "top_k":
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        return ranked[:top_k]
    if threshold is None:
        raise ValueError("selection='threshold' needs a score_threshold.")
    return [i for i in ranked if scores[i] >= threshold]
