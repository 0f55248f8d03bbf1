"""trl-erprm: entropy-regularized process reward models, implicit PRMs and PRIME for Hugging Face TRL."""

__version__ = "0.1.0"

from .erprm_config import ERPRMConfig
from .erprm_trainer import ERPRMDataCollator, ERPRMTrainer, compute_soft_metrics
from .functional import ETA_ALIASES, STEP_AGGREGATIONS, aggregate_steps, er_label, resolve_eta
from .grpo import PRIMEConfig, PRIMETrainer, PRLConfig, PRLTrainer, separator_token_ids
from .implicit_prm import ImplicitPRM
from .implicit_prm_config import ImplicitPRMConfig
from .implicit_prm_trainer import ImplicitPRMTrainer
from .labeling import ERPRMLabeler, ERPRMLabelerConfig, GradeResult, MathVerifyGrader
from .prm import TRL_HAS_PRM, PRMConfig, PRMTrainer


__all__ = [
    "ETA_ALIASES",
    "STEP_AGGREGATIONS",
    "TRL_HAS_PRM",
    "ERPRMConfig",
    "ERPRMDataCollator",
    "ERPRMTrainer",
    "ERPRMLabeler",
    "ERPRMLabelerConfig",
    "GradeResult",
    "MathVerifyGrader",
    "ImplicitPRM",
    "ImplicitPRMConfig",
    "ImplicitPRMTrainer",
    "PRIMEConfig",
    "PRIMETrainer",
    "PRLConfig",
    "PRLTrainer",
    "PRMConfig",
    "PRMTrainer",
    "aggregate_steps",
    "compute_soft_metrics",
    "er_label",
    "resolve_eta",
    "separator_token_ids",
]
