"""trl-erprm: entropy-regularized process reward models, implicit PRMs and PRIME for Hugging Face TRL.

Names are imported from their modules on first use (TRL's lazy-module pattern), so `import trl_erprm` costs little
more than `import trl`.
"""

import sys
from typing import TYPE_CHECKING

from ._lazy import LazyModule


__version__ = "0.1.0"

_import_structure = {
    "data.converters": [
        "convert_prm800k",
        "erprm_to_stepwise",
        "gsm8k_to_stepwise",
        "math_shepherd_to_stepwise",
        "prm800k_to_stepwise",
        "stepwise_to_erprm",
        "stepwise_to_math_shepherd",
    ],
    "data.stepwise": ["ERPRMDataCollator"],
    "erprm_config": ["ERPRMConfig"],
    "erprm_trainer": ["ERPRMTrainer", "compute_soft_metrics"],
    "functional": ["ETA_ALIASES", "STEP_AGGREGATIONS", "aggregate_steps", "er_label", "resolve_eta"],
    "implicit_prm": ["ImplicitPRM"],
    "implicit_prm_config": ["ImplicitPRMConfig"],
    "implicit_prm_trainer": ["ImplicitPRMTrainer"],
    "labeling.grading": ["GradeResult", "MathVerifyGrader"],
    "labeling.labeler": ["ERPRMLabeler"],
    "labeling.labeler_config": ["ERPRMLabelerConfig"],
    "grpo": ["PRIMEConfig", "PRIMETrainer", "PRLConfig", "PRLTrainer", "PRMGRPOConfig", "PRMGRPOTrainer"],
    "prm": ["TRL_HAS_PRM", "PRMConfig", "PRMTrainer"],
    "prm_reward": ["PRMReward"],
    "raft": ["RAFTConfig", "run_raft"],
    "search": ["SearchConfig", "SearchParams", "beam_search", "dvts", "run_search"],
    "steps": ["STEP_SPLITTERS", "StepFormat", "separator_token_ids", "split_steps"],
}

if TYPE_CHECKING:
    from .data.converters import (
        convert_prm800k,
        erprm_to_stepwise,
        gsm8k_to_stepwise,
        math_shepherd_to_stepwise,
        prm800k_to_stepwise,
        stepwise_to_erprm,
        stepwise_to_math_shepherd,
    )
    from .data.stepwise import ERPRMDataCollator
    from .erprm_config import ERPRMConfig
    from .erprm_trainer import ERPRMTrainer, compute_soft_metrics
    from .functional import ETA_ALIASES, STEP_AGGREGATIONS, aggregate_steps, er_label, resolve_eta
    from .grpo import PRIMEConfig, PRIMETrainer, PRLConfig, PRLTrainer, PRMGRPOConfig, PRMGRPOTrainer
    from .implicit_prm import ImplicitPRM
    from .implicit_prm_config import ImplicitPRMConfig
    from .implicit_prm_trainer import ImplicitPRMTrainer
    from .labeling.grading import GradeResult, MathVerifyGrader
    from .labeling.labeler import ERPRMLabeler
    from .labeling.labeler_config import ERPRMLabelerConfig
    from .prm import TRL_HAS_PRM, PRMConfig, PRMTrainer
    from .prm_reward import PRMReward
    from .raft import RAFTConfig, run_raft
    from .search import SearchConfig, SearchParams, beam_search, dvts, run_search
    from .steps import STEP_SPLITTERS, StepFormat, separator_token_ids, split_steps
else:
    sys.modules[__name__] = LazyModule(
        __name__, __file__, _import_structure, __spec__, {"__version__": __version__, "__doc__": __doc__}
    )
