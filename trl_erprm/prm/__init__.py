"""`PRMConfig` and `PRMTrainer`: TRL's own classes where the installed TRL has them, our drop-in otherwise.

TRL removed `trl.experimental.prm` in 1.14; 1.13.0 is the last release with it. On TRL <= 1.13 the names below are
TRL's classes, so `ERPRMTrainer` is a subclass of `trl.experimental.prm.PRMTrainer`; on newer TRL they are the drop-in
classes of `trl_erprm.prm.prm_trainer` / `prm_config`, which behave the same.
"""

import warnings

from .prm_trainer import compute_accuracy, prepare_peft_model, tokenize_stepwise_row


try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL warns on every import of its experimental namespace
        from trl.experimental.prm import PRMConfig, PRMTrainer

    TRL_HAS_PRM = True
except ImportError:
    from .prm_config import PRMConfig
    from .prm_trainer import PRMTrainer

    TRL_HAS_PRM = False


__all__ = ["TRL_HAS_PRM", "PRMConfig", "PRMTrainer", "compute_accuracy", "prepare_peft_model", "tokenize_stepwise_row"]
