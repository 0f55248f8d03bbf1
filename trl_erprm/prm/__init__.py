"""`PRMConfig` and `PRMTrainer`: trl-erprm's faithful drop-in for TRL 1.13's `trl.experimental.prm`, on every TRL.

TRL removed `trl.experimental.prm` in 1.14; 1.13.0 is the last release with it. trl-erprm's classes are used on every
TRL version (so [`~trl_erprm.ERPRMTrainer`] has one base everywhere) and behave like TRL 1.13's: the same constructor,
tokenization, PEFT preparation, gradient-checkpointing settings, accuracy metric and model-card tags
(`tests/test_prm.py` proves tokenization and metrics identical to TRL's class on trl 1.13). `TRL_HAS_PRM` tells
whether the installed TRL still ships its own class.
"""

import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


def _trl_has_prm() -> bool:
    """Whether the installed TRL ships `trl.experimental.prm` (TRL <= 1.13), found without importing TRL."""
    spec = importlib.util.find_spec("trl")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    return any(os.path.isfile(os.path.join(root, "experimental", "prm", "prm_trainer.py")) for root in roots)


_import_structure = {
    "prm_config": ["PRMConfig"],
    "prm_trainer": ["PRMTrainer", "compute_accuracy", "prepare_peft_model"],
}

if TYPE_CHECKING:
    from .prm_config import PRMConfig
    from .prm_trainer import PRMTrainer, compute_accuracy, prepare_peft_model

    TRL_HAS_PRM: bool
else:
    sys.modules[__name__] = LazyModule(
        __name__, __file__, _import_structure, __spec__, {"TRL_HAS_PRM": _trl_has_prm(), "__doc__": __doc__}
    )
