"""Evaluation of process reward models: Best-of-N with voting baselines, and ProcessBench-style step F1."""

from .bon import (
    BestOfNArguments,
    aggregate_candidate_scores,
    best_of_n_report,
    bon_main,
    run_best_of_n,
    score_problems,
)
from .metrics import (
    choose_threshold,
    default_n_values,
    first_error_prediction,
    normalize_answer,
    pick_best,
    processbench_metrics,
    selection_curves,
    vote,
)
from .scorers import PRM_TYPES, ImplicitPRMScorer, LMHeadScorer, TokenClassificationScorer, load_scorer
from .stepeval import StepEvalArguments, run_step_eval, stepeval_main, stepwise_to_processbench


__all__ = [
    "PRM_TYPES",
    "BestOfNArguments",
    "ImplicitPRMScorer",
    "LMHeadScorer",
    "StepEvalArguments",
    "TokenClassificationScorer",
    "aggregate_candidate_scores",
    "best_of_n_report",
    "bon_main",
    "choose_threshold",
    "default_n_values",
    "first_error_prediction",
    "load_scorer",
    "normalize_answer",
    "pick_best",
    "processbench_metrics",
    "run_best_of_n",
    "run_step_eval",
    "score_problems",
    "selection_curves",
    "stepeval_main",
    "stepwise_to_processbench",
    "vote",
]
