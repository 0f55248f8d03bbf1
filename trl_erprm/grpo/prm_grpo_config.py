from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .._compat import adopt_activation_checkpointing
from ..functional import STEP_AGGREGATIONS
from ..steps import STEP_SPLITTERS


@dataclass
class PRMGRPOConfig(GRPOConfig):
    r"""Configuration class for the [`~trl_erprm.grpo.PRMGRPOTrainer`] (process-supervised GRPO, DeepSeekMath
    arXiv:2402.03300 section 4.1.3, with any PRM trl-erprm can load).

    Every [`~trl.GRPOConfig`] field applies. The fields below choose the PRM and how its step rewards become
    advantages. PRM fields left at `None` are the PRM's own conventions (read by
    [`~trl_erprm.evaluation.scorers.load_scorer`]). Using [`~trl.TrlParser`] they become command-line flags.

    Parameters:
        prm_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            The PRM (folder or Hub id): token classification, LM head, or implicit (found by `"auto"` when its
            `prm_config.json` says so, as for a folder saved by `ImplicitPRMTrainer`; else `prm_type="implicit"`).
            Required unless the trainer is given `prm=`.
        prm_type (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"token_classification"`, `"lm_head"` or `"implicit"`.
        prm_step_separator (`str` or `None`, *optional*, defaults to `None`):
            The text that ends a step, as the PRM was trained with; it also cuts the completions into steps.
        prm_step_tag (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the step tag (e.g. `" ки"`).
        prm_good_token (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the "good step" token.
        prm_bad_token (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the "bad step" token.
        prm_ref_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Implicit PRMs: the reference model (`None`: the one recorded in its `prm_config.json`, else
            reference-free).
        prm_beta (`float` or `None`, *optional*, defaults to `None`):
            Implicit PRMs: the reward scale the PRM was trained with (`None`: the recorded one, else `0.05`).
        prm_implicit_value (`str`, *optional*, defaults to `"step_reward"`):
            Implicit PRMs: the step reward `q(end_k) - q(end_{k-1})` (`"step_reward"`) or `q` itself (`"q"`).
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Completions per PRM forward pass.
        prm_max_length (`int` or `None`, *optional*, defaults to `None`):
            Maximum PRM tokens per completion; steps past it get no reward.
        prm_dtype (`str`, *optional*, defaults to `"float32"`):
            dtype of the PRM weights.
        prm_prompt_column (`str` or `None`, *optional*, defaults to `None`):
            A dataset column with the text the PRM reads as the prompt (default: the prompt, or the last user
            message of a conversational prompt).
        prm_aggregation (`str`, *optional*, defaults to `"min"`):
            When the trainer is given no reward function: the aggregation of the [`~trl_erprm.PRMReward`] it uses
            as GRPO's reward (logged as `rewards/prm_reward/mean`; it weighs in the advantages only through
            `outcome_coef`).
        split_method (`str` or `None`, *optional*, defaults to `None`):
            Cut completions into steps with this rule of [`~trl_erprm.steps.STEP_SPLITTERS`] instead of the PRM's
            step format.
        outcome_coef (`float`, *optional*, defaults to `0.0`):
            Weight of GRPO's own outcome advantage (from the reward functions) added to every token. `0.0` is pure
            process supervision.
        empty_step_reward (`float`, *optional*, defaults to `0.0`):
            Reward of a completion in which the PRM scores no step (empty, or every step past `prm_max_length`): one
            step ending at its last token.
    """

    prm_model_name_or_path: str | None = field(default=None, metadata={"help": "The PRM (folder or Hub id)."})
    prm_type: str = field(
        default="auto", metadata={"help": "'auto', 'token_classification', 'lm_head' or 'implicit'."}
    )
    prm_step_separator: str | None = field(
        default=None, metadata={"help": "Text that ends a step, as the PRM was trained with (default: the PRM's)."}
    )
    prm_step_tag: str | None = field(default=None, metadata={"help": "LM-head PRMs: the step tag, e.g. ' ки'."})
    prm_good_token: str | None = field(default=None, metadata={"help": "LM-head PRMs: the 'good step' token."})
    prm_bad_token: str | None = field(default=None, metadata={"help": "LM-head PRMs: the 'bad step' token."})
    prm_ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Implicit PRMs: the reference model (None: reference-free)."}
    )
    prm_beta: float | None = field(default=None, metadata={"help": "Implicit PRMs: the reward scale."})
    prm_implicit_value: str = field(
        default="step_reward", metadata={"help": "Implicit PRMs: 'step_reward' (q difference) or 'q'."}
    )
    prm_batch_size: int = field(default=8, metadata={"help": "Completions per PRM forward pass."})
    prm_max_length: int | None = field(default=None, metadata={"help": "Maximum PRM tokens per completion."})
    prm_dtype: str = field(default="float32", metadata={"help": "dtype of the PRM weights."})
    prm_prompt_column: str | None = field(
        default=None, metadata={"help": "Dataset column with the text the PRM reads as the prompt."}
    )
    prm_aggregation: str = field(
        default="min", metadata={"help": "Aggregation of the default PRMReward reward (no reward_funcs given)."}
    )
    split_method: str | None = field(
        default=None, metadata={"help": "Cut completions with this named rule instead of the PRM's step format."}
    )
    outcome_coef: float = field(
        default=0.0, metadata={"help": "Weight of GRPO's outcome advantage added to every token (0: process only)."}
    )
    empty_step_reward: float = field(
        default=0.0, metadata={"help": "Reward of a completion in which the PRM scores no step."}
    )

    def __post_init__(self):
        if self.prm_aggregation not in STEP_AGGREGATIONS:
            raise ValueError(
                f"PRMGRPOConfig: prm_aggregation={self.prm_aggregation!r}; choose one of {sorted(STEP_AGGREGATIONS)}."
            )
        if self.split_method is not None and self.split_method not in STEP_SPLITTERS:
            raise ValueError(
                f"PRMGRPOConfig: split_method={self.split_method!r}; choose one of {sorted(STEP_SPLITTERS)} or None."
            )
        if self.prm_implicit_value not in ("q", "step_reward"):
            raise ValueError(
                f"PRMGRPOConfig: prm_implicit_value must be 'q' or 'step_reward', got {self.prm_implicit_value!r}."
            )
        if self.prm_batch_size < 1:
            raise ValueError(f"PRMGRPOConfig: prm_batch_size must be >= 1, got {self.prm_batch_size}.")
        adopt_activation_checkpointing(self)  # no FutureWarning from TRL's own gradient_checkpointing default
        super().__post_init__()
