"""trl-erprm: entropy-regularized process reward models, implicit PRMs and PRIME for Hugging Face TRL."""

__version__ = "0.1.0"

from .erprm_config import ERPRMConfig
from .erprm_trainer import ERPRMDataCollator, ERPRMTrainer, compute_soft_metrics
from .functional import ETA_ALIASES, STEP_AGGREGATIONS, aggregate_steps, er_label, resolve_eta
from .implicit_prm import ImplicitPRM
from .implicit_prm_config import ImplicitPRMConfig
from .implicit_prm_trainer import ImplicitPRMTrainer
from .labeling import ERPRMLabeler, ERPRMLabelerConfig, GradeResult, MathVerifyGrader
from .prime import PRIMECallback, PRIMEConfig
from .prl import PRLCallback, PRLConfig, separator_token_ids
from .prm import TRL_HAS_PRM, PRMConfig, PRMTrainer
from .search import SearchConfig, SearchParams, beam_search, dvts, run_search


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
    "PRIMECallback",
    "PRIMEConfig",
    "PRLCallback",
    "PRLConfig",
    "PRMConfig",
    "PRMTrainer",
    "SearchConfig",
    "SearchParams",
    "aggregate_steps",
    "beam_search",
    "compute_soft_metrics",
    "dvts",
    "er_label",
    "resolve_eta",
    "run_search",
    "separator_token_ids",
]
