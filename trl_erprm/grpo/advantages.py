r"""Advantage estimators of the GRPO subclasses, chosen by name from [`ADVANTAGE_ESTIMATORS`].

An estimator is a plain function `estimator(batch: RolloutBatch, args) -> torch.Tensor`: it reads one generation
batch of the *global* batch (every process's rows, gathered, in process order) and the trainer's config, and returns
`(B, T)` token-level or `(B,)` sequence-level advantages for all rows; the trainer then keeps the rows of its own
process, exactly as GRPOTrainer slices its own advantages. The formulas live in [`trl_erprm.functional`]; an
estimator only picks its inputs out of the batch.

To add one (as `"process_supervision"`, DeepSeekMath section 4.1.3, was added for `PRMGRPOTrainer`): write the
formula in `functional.py`, a function here that reads the tensors your trainer puts into `batch.tensors`, and an entry in
`ADVANTAGE_ESTIMATORS`; the trainer sets `advantage_estimator = "<name>"` and fills `batch.tensors` in its
`prepare_rollout_batch` (see [`~trl_erprm.grpo.mixin.ProcessAdvantageMixin`]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..functional import prime_advantages, prl_advantages, process_supervision_advantages


__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "RolloutBatch",
    "grpo_estimator",
    "prime_estimator",
    "process_supervision_estimator",
    "prl_estimator",
]


@dataclass
class RolloutBatch:
    r"""One generation batch of the global batch (all processes), what an advantage estimator reads.

    Rows are the completions of every process in process order (`num_generations` contiguous rows per prompt);
    per-token tensors are right-padded with 0 to the longest completion of any process (`T`).

    Args:
        rewards (`torch.Tensor`):
            Rewards of every reward function, `(B, F)`, as GRPOTrainer computed and gathered them (NaN where a
            function returned `None`).
        reward_weights (`torch.Tensor`):
            The trainer's `reward_weights`, `(F,)`.
        group_size (`int`):
            Completions per prompt (`num_generations`).
        completion_ids (`torch.Tensor`):
            `(B, T)`.
        mask (`torch.Tensor`):
            Loss mask `(B, T)`: the completion mask (0 after EOS), times the tool mask with tool calling.
        grpo_advantages (`torch.Tensor`):
            GRPO's own group-normalised advantages, `(B,)`.
        process_index (`int`, *optional*, defaults to `0`):
            Index of this process: its rows are `[process_index * B_local, (process_index + 1) * B_local)`.
        tensors (`dict[str, torch.Tensor]`, *optional*, defaults to `{}`):
            What the trainer adds for its estimator, gathered the same way (`(B, T)` or `(B,)`): PRIME adds `outcome`,
            `keep` and `token_rewards`; PRL adds `old_logps`, `ref_logps` and `step_ends`.
    """

    rewards: torch.Tensor
    reward_weights: torch.Tensor
    group_size: int
    completion_ids: torch.Tensor
    mask: torch.Tensor
    grpo_advantages: torch.Tensor
    process_index: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def grpo_estimator(batch: RolloutBatch, args: Any = None) -> torch.Tensor:
    """GRPO's own advantages, passed through unchanged.

    Args:
        batch ([`RolloutBatch`]):
            The global batch.
        args (*optional*):
            Unused.

    Returns:
        `torch.Tensor`: `(B,)`.
    """
    return batch.grpo_advantages


def prime_estimator(batch: RolloutBatch, args: Any) -> torch.Tensor:
    """PRIME's leave-one-out advantages over outcome and implicit process rewards
    ([`~trl_erprm.functional.prime_advantages`]), on the completions of the kept groups only.

    Args:
        batch ([`RolloutBatch`]):
            The global batch, with `tensors["outcome"]` `(B,)`, `tensors["keep"]` `(B,)` (bool, the accuracy filter)
            and `tensors["token_rewards"]` `(B, T)`.
        args ([`~trl_erprm.grpo.PRIMEConfig`]):
            Reads `gamma`, `process_coef`, `outcome_coef`, `baseline` and `whiten`.

    Returns:
        `torch.Tensor`: `(B, T)`, 0 on filtered groups and padding.
    """
    token_rewards = batch.tensors["token_rewards"]
    kept = batch.mask.to(token_rewards.dtype) * batch.tensors["keep"].to(token_rewards.dtype).unsqueeze(-1)
    return prime_advantages(
        batch.tensors["outcome"].to(token_rewards.device),
        token_rewards,
        kept,
        batch.group_size,
        gamma=args.gamma,
        process_coef=args.process_coef,
        outcome_coef=args.outcome_coef,
        baseline=args.baseline,
        whiten=args.whiten,
    )


def prl_estimator(batch: RolloutBatch, args: Any) -> torch.Tensor:
    """PRL's per-step advantages `A_i - S_t / eta` ([`~trl_erprm.functional.prl_advantages`]), from GRPO's own
    outcome advantages.

    Args:
        batch ([`RolloutBatch`]):
            The global batch, with `tensors["old_logps"]`, `tensors["ref_logps"]` `(B, T)` and `tensors["step_ends"]`
            `(B, T)` (bool).
        args ([`~trl_erprm.grpo.PRLConfig`]):
            Reads `eta`.

    Returns:
        `torch.Tensor`: `(B, T)`, 0 on padding.
    """
    old = batch.tensors["old_logps"]
    return prl_advantages(
        batch.grpo_advantages.to(old.device),
        old,
        batch.tensors["ref_logps"],
        batch.mask,
        batch.tensors["step_ends"],
        args.eta,
    )


def process_supervision_estimator(batch: RolloutBatch, args: Any) -> torch.Tensor:
    """Process-supervised GRPO (DeepSeekMath section 4.1.3, [`~trl_erprm.functional.process_supervision_advantages`]):
    the PRM's step rewards normalised over all step rewards of the group, summed over the steps ending at or after
    each token, plus `outcome_coef` times GRPO's own outcome advantage.

    Args:
        batch ([`RolloutBatch`]):
            The global batch, with `tensors["step_rewards"]` `(B, S)`, `tensors["step_ends"]` `(B, S)` (long, token
            index in the completion) and `tensors["step_mask"]` `(B, S)` (bool).
        args ([`~trl_erprm.grpo.PRMGRPOConfig`]):
            Reads `outcome_coef`.

    Returns:
        `torch.Tensor`: `(B, T)`, 0 on padding.
    """
    rewards = batch.tensors["step_rewards"]
    return process_supervision_advantages(
        rewards,
        batch.tensors["step_ends"].to(rewards.device),
        batch.tensors["step_mask"].to(rewards.device),
        batch.mask.to(rewards.device),
        batch.group_size,
        outcome_advantages=batch.grpo_advantages.to(rewards.device),
        outcome_coef=args.outcome_coef,
    )


#: Name -> estimator. A trainer of `trl_erprm.grpo` picks one with its `advantage_estimator` attribute.
ADVANTAGE_ESTIMATORS: dict[str, Callable[[RolloutBatch, Any], torch.Tensor]] = {
    "grpo": grpo_estimator,
    "prime": prime_estimator,
    "prl": prl_estimator,
    "process_supervision": process_supervision_estimator,
}
