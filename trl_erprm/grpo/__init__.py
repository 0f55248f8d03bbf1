"""GRPO subclasses with process-level advantages: PRIME (an implicit PRM trained online), PRL (the policy's own KL
to the reference) and process-supervised GRPO (`PRMGRPOTrainer`, any PRM), on one mechanism ([`~trl_erprm.grpo.mixin.ProcessAdvantageMixin`]) and a registry of advantage
estimators ([`~trl_erprm.grpo.advantages.ADVANTAGE_ESTIMATORS`]).

Names are imported from their modules on first use, so `import trl_erprm.grpo` loads neither torch nor TRL.
"""

import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


_import_structure = {
    "advantages": ["ADVANTAGE_ESTIMATORS", "RolloutBatch"],
    "mixin": ["ProcessAdvantageMixin"],
    "prime_config": ["PRIMEConfig"],
    "prm_grpo_config": ["PRMGRPOConfig"],
    "prm_grpo_trainer": ["PRMGRPOTrainer"],
    "prime_trainer": ["PRIMETrainer"],
    "prl_config": ["PRLConfig"],
    "prl_trainer": ["PRLTrainer"],
}

if TYPE_CHECKING:
    from .advantages import ADVANTAGE_ESTIMATORS, RolloutBatch
    from .mixin import ProcessAdvantageMixin
    from .prime_config import PRIMEConfig
    from .prime_trainer import PRIMETrainer
    from .prl_config import PRLConfig
    from .prl_trainer import PRLTrainer
    from .prm_grpo_config import PRMGRPOConfig
    from .prm_grpo_trainer import PRMGRPOTrainer
else:
    sys.modules[__name__] = LazyModule(__name__, __file__, _import_structure, __spec__, {"__doc__": __doc__})
