"""Evaluation of process reward models: Best-of-N with voting baselines, and ProcessBench-style step F1.

Names are imported from their modules on first use.
"""

import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


_import_structure = {
    "bon": [
        "BestOfNArguments",
        "aggregate_candidate_scores",
        "best_of_n_report",
        "bon_main",
        "run_best_of_n",
        "score_problems",
    ],
    "metrics": [
        "VOTE_WEIGHTS",
        "check_vote_weights",
        "choose_threshold",
        "default_n_values",
        "first_error_prediction",
        "graded_problems",
        "grading_timeout_message",
        "local_step_auc",
        "normalize_answer",
        "pairwise_accuracy",
        "pick_best",
        "processbench_metrics",
        "resolve_vote_weight",
        "selection_curves",
        "vote",
        "vote_weights",
    ],
    "scorers": ["PRM_TYPES", "ImplicitPRMScorer", "LMHeadScorer", "TokenClassificationScorer", "load_scorer"],
    "stepeval": ["StepEvalArguments", "run_step_eval", "stepeval_main", "stepwise_to_processbench"],
}

if TYPE_CHECKING:
    from .bon import (
        BestOfNArguments,
        aggregate_candidate_scores,
        best_of_n_report,
        bon_main,
        run_best_of_n,
        score_problems,
    )
    from .metrics import (
        VOTE_WEIGHTS,
        check_vote_weights,
        choose_threshold,
        default_n_values,
        first_error_prediction,
        graded_problems,
        grading_timeout_message,
        local_step_auc,
        normalize_answer,
        pairwise_accuracy,
        pick_best,
        processbench_metrics,
        resolve_vote_weight,
        selection_curves,
        vote,
        vote_weights,
    )
    from .scorers import PRM_TYPES, ImplicitPRMScorer, LMHeadScorer, TokenClassificationScorer, load_scorer
    from .stepeval import StepEvalArguments, run_step_eval, stepeval_main, stepwise_to_processbench
else:
    sys.modules[__name__] = LazyModule(__name__, __file__, _import_structure, __spec__, {"__doc__": __doc__})
