"""Labeling: ERPRMLabeler (MC-rollout ER labels, resumable jobs), rollout backends, step splitting and dataset
converters, sandboxed math-verify grading."""

from .backends import BACKENDS, Sampling, TransformersBackend, VLLMBackend, VLLMServerBackend
from .grading import GRADE_STATUSES, GradeResult, MathVerifyGrader, extract_final_answer
from .labeler import ERPRMLabeler
from .labeler_config import ERPRMLabelerConfig
from .steps import (
    STEP_SPLITTERS,
    convert_prm800k,
    math_shepherd_to_stepwise,
    prm800k_to_stepwise,
    split_by_separator,
    split_by_step_markers,
    split_steps,
)


__all__ = [
    "BACKENDS",
    "ERPRMLabeler",
    "ERPRMLabelerConfig",
    "Sampling",
    "TransformersBackend",
    "VLLMBackend",
    "VLLMServerBackend",
    "GRADE_STATUSES",
    "STEP_SPLITTERS",
    "GradeResult",
    "MathVerifyGrader",
    "convert_prm800k",
    "extract_final_answer",
    "math_shepherd_to_stepwise",
    "prm800k_to_stepwise",
    "split_by_separator",
    "split_by_step_markers",
    "split_steps",
]
