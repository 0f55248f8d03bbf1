"""trl-erprm: entropy-regularized process reward models, implicit PRMs and PRIME for Hugging Face TRL."""

__version__ = "0.1.0"

from .functional import ETA_ALIASES, STEP_AGGREGATIONS, aggregate_steps, er_label, resolve_eta


__all__ = ["ETA_ALIASES", "STEP_AGGREGATIONS", "aggregate_steps", "er_label", "resolve_eta"]
