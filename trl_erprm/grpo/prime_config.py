from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .._compat import adopt_activation_checkpointing


UPDATE_MODES = ("single", "double", "none")
REFERENCES = ("prm", "policy")
BASELINES = ("paper", "reference")


@dataclass
class PRIMEConfig(GRPOConfig):
    r"""Configuration class for the [`~trl_erprm.grpo.PRIMETrainer`] (PRIME, arXiv:2502.01456).

    Every [`~trl.GRPOConfig`] field applies (GRPO's `scale_rewards` and `multi_objective_aggregation` do not shape the
    policy update: PRIME's advantages replace GRPO's). The fields below are PRIME's own. Using
    [`~trl.TrlParser`] they become command-line flags.

    Parameters:
        > The implicit PRM (used when the trainer builds it; leave unset when you pass an `ImplicitPRM`)

        prm_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Initial weights of the implicit PRM (path or Hub id). `None`: the policy's (as PRIME does).
        prm_ref_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Frozen reference of the implicit PRM. `None`: the PRM's initial weights.
        prm_beta (`float` or `None`, *optional*, defaults to `None`):
            Scale of the implicit reward `beta * log pi_phi / pi_ref`. `None`: `0.05`.

        > The online prompt filter

        accuracy_lower_bound (`float`, *optional*, defaults to `0.2`):
            Lowest mean outcome of a prompt's group that is kept. Filtered groups get zero advantages and do not train
            the PRM.
        accuracy_upper_bound (`float`, *optional*, defaults to `0.8`):
            Highest mean outcome of a group that is kept. `[0, 1]` keeps every group.
        drop_truncated (`bool`, *optional*, defaults to `False`):
            Also drop every group holding a completion cut at `max_completion_length` (the paper does).

        > The online PRM update

        update_mode (`str`, *optional*, defaults to `"single"`):
            `"single"`: process rewards come from the PRM forward pass before its update. `"double"`: update first,
            then recompute the rewards with the updated PRM (one more forward). `"none"`: keep the PRM frozen.
        prm_learning_rate (`float`, *optional*, defaults to `1e-6`):
            Learning rate of the PRM's AdamW optimizer (constant schedule).
        prm_weight_decay (`float`, *optional*, defaults to `0.0`):
            Weight decay of the PRM's AdamW optimizer.
        prm_max_grad_norm (`float` or `None`, *optional*, defaults to `10.0`):
            Clip the PRM's gradient norm to this value; `None` disables clipping.
        prm_micro_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Sequences per PRM forward/backward pass (bounds memory). `None`: the PRM's `batch_size`.
        reference (`str`, *optional*, defaults to `"prm"`):
            Reference of the implicit rewards. `"prm"`: the PRM's own reference (a frozen copy of its initial
            weights, the PRM with its adapter disabled, or none for a reference-free PRM). `"policy"`: the policy's
            log-probs at sampling time, at temperature 1 as the PRM's (with `temperature != 1` one extra forward pass
            of the policy; the paper reports both references work about equally).
        reuse_ref_logps (`bool` or `None`, *optional*, defaults to `None`):
            With `reference="prm"`, use the reference log-probs GRPO already computed (`beta != 0`) instead of a
            second forward pass. `None`: reuse when both references are separate models that are the same object, or
            were loaded from the same path with the same dtype, and `temperature` is 1. `True` forces reuse.
        log_accuracy_after (`bool`, *optional*, defaults to `True`):
            Log the PRM's accuracy after its update. Free with `update_mode="double"`; one more forward pass without
            gradient with `"single"`.

        > The advantages

        gamma (`float`, *optional*, defaults to `1.0`):
            Discount of the return, in (0, 1]: of the process term (`baseline="paper"`), or of the process and outcome
            terms (`baseline="reference"`).
        outcome_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the outcome term.
        process_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the process term.
        baseline (`str`, *optional*, defaults to `"paper"`):
            `"paper"`: Algorithm 1 of the paper (pure leave-one-out baselines; the outcome term is not discounted).
            `"reference"`: the PRIME reference code (`compute_rloo_returns`): a small self term in the process
            baseline and, with `gamma < 1`, the outcome discounted from the last token like the process rewards (the
            code's `reward_model_gamma` and `verifier_gamma` both set to `gamma`). With `gamma = 1` both give the
            same outcome term. See [`~trl_erprm.functional.prime_advantages`].
        whiten (`bool`, *optional*, defaults to `True`):
            Whiten the advantages over all kept completion tokens of the global batch.
    """

    prm_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Initial weights of the implicit PRM (path or Hub id). Default: the policy's."},
    )
    prm_ref_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Frozen reference of the implicit PRM. Default: the PRM's initial weights."},
    )
    prm_beta: float | None = field(
        default=None,
        metadata={"help": "Scale beta of the implicit reward beta * log pi_phi / pi_ref. Default: 0.05."},
    )
    accuracy_lower_bound: float = field(
        default=0.2,
        metadata={"help": "Lowest mean outcome of a prompt's group that is kept (PRIME's online prompt filter)."},
    )
    accuracy_upper_bound: float = field(
        default=0.8,
        metadata={"help": "Highest mean outcome of a prompt's group that is kept. [0, 1] keeps every group."},
    )
    drop_truncated: bool = field(
        default=False,
        metadata={"help": "Also drop every group holding a completion cut at max_completion_length."},
    )
    update_mode: str = field(
        default="single",
        metadata={
            "help": "Online PRM update: 'single' (rewards from the PRM before its update), 'double' (update, then "
            "recompute the rewards) or 'none' (frozen PRM).",
            "choices": list(UPDATE_MODES),
        },
    )
    prm_learning_rate: float = field(
        default=1e-6, metadata={"help": "Learning rate of the PRM's AdamW optimizer (constant schedule)."}
    )
    prm_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the PRM's AdamW optimizer."})
    prm_max_grad_norm: float | None = field(
        default=10.0, metadata={"help": "Clip the PRM's gradient norm to this value; None disables clipping."}
    )
    prm_micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per PRM forward/backward pass. Default: the PRM's batch_size."},
    )
    reference: str = field(
        default="prm",
        metadata={
            "help": "Reference of the implicit rewards: 'prm' (the PRM's own reference) or 'policy' (the policy's "
            "log-probs at sampling time).",
            "choices": list(REFERENCES),
        },
    )
    reuse_ref_logps: bool | None = field(
        default=None,
        metadata={
            "help": "Use GRPO's reference log-probs (beta != 0) instead of a PRM reference forward pass. Default: "
            "reuse when both references are the same model."
        },
    )
    log_accuracy_after: bool = field(
        default=True,
        metadata={"help": "Log the PRM accuracy after its update (one more forward pass with update_mode='single')."},
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount of the return, in (0, 1]."})
    outcome_coef: float = field(default=1.0, metadata={"help": "Weight of the outcome term of the advantage."})
    process_coef: float = field(default=1.0, metadata={"help": "Weight of the process term of the advantage."})
    baseline: str = field(
        default="paper",
        metadata={
            "help": "'paper' (Algorithm 1: leave-one-out baselines, outcome not discounted) or 'reference' (the "
            "PRIME reference code: self term in the process baseline, outcome discounted from the last token).",
            "choices": list(BASELINES),
        },
    )
    whiten: bool = field(
        default=True, metadata={"help": "Whiten the advantages over the kept completion tokens of the global batch."}
    )

    def __post_init__(self):
        if not 0.0 <= self.accuracy_lower_bound <= self.accuracy_upper_bound <= 1.0:
            raise ValueError(
                "PRIMEConfig: need 0 <= accuracy_lower_bound <= accuracy_upper_bound <= 1, got "
                f"[{self.accuracy_lower_bound}, {self.accuracy_upper_bound}]. Use [0, 1] to keep every group."
            )
        for name, value, choices in [
            ("update_mode", self.update_mode, UPDATE_MODES),
            ("reference", self.reference, REFERENCES),
            ("baseline", self.baseline, BASELINES),
        ]:
            if value not in choices:
                raise ValueError(f"PRIMEConfig: {name}={value!r} is not one of {list(choices)}.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"PRIMEConfig: gamma must be in (0, 1], got {self.gamma}.")
        if self.prm_beta is not None and not self.prm_beta > 0:
            raise ValueError(f"PRIMEConfig: prm_beta must be > 0, got {self.prm_beta}.")
        if self.prm_learning_rate < 0:
            raise ValueError(f"PRIMEConfig: prm_learning_rate must be >= 0, got {self.prm_learning_rate}.")
        if self.prm_micro_batch_size is not None and self.prm_micro_batch_size < 1:
            raise ValueError(f"PRIMEConfig: prm_micro_batch_size must be >= 1, got {self.prm_micro_batch_size}.")
        if self.prm_max_grad_norm is not None and not self.prm_max_grad_norm > 0:
            raise ValueError(f"PRIMEConfig: prm_max_grad_norm must be > 0 or None, got {self.prm_max_grad_norm}.")
        adopt_activation_checkpointing(self)  # no FutureWarning from TRL's own gradient_checkpointing default
        super().__post_init__()
