"""GRPO subclasses with process-level advantages: PRIME (an implicit PRM trained online) and PRL (the policy's own KL
to the reference), on one mechanism ([`~trl_erprm.grpo.mixin.ProcessAdvantageMixin`]) and a registry of advantage
estimators ([`~trl_erprm.grpo.advantages.ADVANTAGE_ESTIMATORS`])."""

from .advantages import ADVANTAGE_ESTIMATORS, RolloutBatch
from .mixin import ProcessAdvantageMixin
from .prime_config import PRIMEConfig
from .prime_trainer import PRIMETrainer
from .prl_config import PRLConfig
from .prl_trainer import PRLTrainer, separator_token_ids


__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "PRIMEConfig",
    "PRIMETrainer",
    "PRLConfig",
    "PRLTrainer",
    "ProcessAdvantageMixin",
    "RolloutBatch",
    "separator_token_ids",
]
