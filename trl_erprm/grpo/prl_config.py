from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .._compat import adopt_activation_checkpointing
from ..functional import resolve_eta


@dataclass
class PRLConfig(GRPOConfig):
    r"""Configuration class for the [`~trl_erprm.grpo.PRLTrainer`] (PRL, Process Reward Learning, arXiv:2601.10201).

    Every [`~trl.GRPOConfig`] field applies; GRPO's `scale_rewards` shapes the outcome advantage `A_i` that PRL starts
    from. The fields below are PRL's own (and `beta`, whose default differs from GRPO's). Using [`~trl.TrlParser`]
    they become command-line flags.

    Parameters:
        eta (`float`, *optional*, defaults to `100.0`):
            Entropy-regularisation coefficient of PRL: the KL correction of the advantages is scaled by `1/eta` (the
            paper uses 100-200). `inf` removes it: plain GRPO advantages.
        step_separator (`str` or `None`, *optional*, defaults to `"\n"`):
            Text that ends a step: every vocabulary token whose text contains it ends a step (see
            [`~trl_erprm.steps.separator_token_ids`]). `None` to split only every `step_len` tokens.
        step_len (`int` or `None`, *optional*, defaults to `None`):
            Also end a step every `step_len` completion tokens (the paper uses 64-256).
        beta (`float`, *optional*, defaults to `0.001`):
            GRPO's KL coefficient. PRL needs the reference log-probs GRPO computes only when `beta > 0`; a small value
            keeps GRPO's own KL loss negligible while PRL's KL correction works through the advantages.
    """

    eta: float = field(
        default=100.0,
        metadata={"help": "PRL's entropy-regularisation coefficient: the KL correction is scaled by 1/eta (100-200)."},
    )
    step_separator: str | None = field(
        default="\n",
        metadata={"help": "Text that ends a step (every token containing it ends one); None to split by step_len."},
    )
    step_len: int | None = field(
        default=None, metadata={"help": "Also end a step every step_len completion tokens (the paper uses 64-256)."}
    )
    beta: float = field(
        default=0.001,
        metadata={"help": "GRPO's KL coefficient; PRL needs beta > 0 (GRPO computes reference log-probs only then)."},
    )

    def __post_init__(self):
        self.eta = resolve_eta(self.eta)
        if self.eta <= 0:
            raise ValueError(f"PRLConfig: eta must be > 0 (the KL correction is scaled by 1/eta), got {self.eta}.")
        if self.step_separator is None and self.step_len is None:
            raise ValueError("PRLConfig: set step_separator (e.g. '\\n'), step_len (e.g. 128), or both.")
        if self.step_separator is not None and not self.step_separator:
            raise ValueError("PRLConfig: step_separator must be a non-empty string or None.")
        if self.step_len is not None and self.step_len < 1:
            raise ValueError(f"PRLConfig: step_len must be >= 1, got {self.step_len}.")
        if self.beta == 0.0:
            raise ValueError(
                "PRLConfig: PRL needs the reference log-probs that GRPO computes only when beta != 0. Set beta=1e-3 "
                "(or larger): PRL's own KL correction goes through the advantages."
            )
        adopt_activation_checkpointing(self)  # no FutureWarning from TRL's own gradient_checkpointing default
        super().__post_init__()
