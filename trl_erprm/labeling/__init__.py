"""Labeling: ERPRMLabeler (MC-rollout ER labels, resumable jobs), rollout backends, the rollout cache, sandboxed
math-verify grading.

Names are imported from their modules on first use, so a grading worker importing `trl_erprm.labeling.grading` loads
no rollout backend. Step splitting is in [`trl_erprm.steps`], dataset converters in [`trl_erprm.data`].
"""

import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


_import_structure = {
    "backends": ["BACKENDS", "Sampling", "TransformersBackend", "VLLMBackend", "VLLMServerBackend"],
    "grading": ["GRADE_STATUSES", "GradeResult", "MathVerifyGrader", "extract_final_answer"],
    "labeler": ["ERPRMLabeler"],
    "labeler_config": ["ERPRMLabelerConfig"],
    "rollout_cache": ["RolloutCache"],
}

if TYPE_CHECKING:
    from .backends import BACKENDS, Sampling, TransformersBackend, VLLMBackend, VLLMServerBackend
    from .grading import GRADE_STATUSES, GradeResult, MathVerifyGrader, extract_final_answer
    from .labeler import ERPRMLabeler
    from .labeler_config import ERPRMLabelerConfig
    from .rollout_cache import RolloutCache
else:
    sys.modules[__name__] = LazyModule(__name__, __file__, _import_structure, __spec__, {"__doc__": __doc__})
