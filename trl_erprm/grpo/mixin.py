r"""The mechanism shared by the GRPO subclasses of trl-erprm: replace GRPO's advantages by those of a named estimator.

TRL's own GRPO variants subclass [`~trl.GRPOTrainer`] and override its generate-and-score step; so does
[`ProcessAdvantageMixin`] (through `GRPOTrainerHooks` of the compatibility module, which holds every private name
of TRL that trl-erprm uses, with contract tests on the oldest and newest supported TRL). Per
training generation batch, after GRPOTrainer has generated, scored (rewards gathered over processes) and computed its
own `(B,)` advantages:

1. the mixin builds a [`~trl_erprm.grpo.advantages.RolloutBatch`] of the global batch: the gathered rewards, GRPO's
   advantages, completions and loss mask of every process (gathered, right-padded to the longest completion);
2. the trainer's `prepare_rollout_batch(batch, rollout)` adds what its estimator needs to `batch.tensors` (gathered
   with `gather_rows`), doing any work on its own rows first (PRIME scores and trains its PRM there);
3. the estimator named by the trainer's `advantage_estimator` computes advantages for every row
   ([`~trl_erprm.grpo.advantages.ADVANTAGE_ESTIMATORS`]);
4. the rows of this process are sliced out, exactly as GRPOTrainer slices its own (`[rank * B, (rank + 1) * B)`),
   and replace GRPO's advantages (GRPO's loss takes `(B, T)` advantages as they are).

Group statistics are therefore always computed on the global batch, and a run on 2 processes gives the advantages of
a run on 1. Evaluation batches keep GRPO's advantages.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from .._compat import GRPOTrainerHooks, Rollout, log_metric, per_token_logps, read_rollout, set_advantages
from .._compat import takes_token_advantages as _takes_token_advantages
from .advantages import ADVANTAGE_ESTIMATORS, RolloutBatch


__all__ = ["ProcessAdvantageMixin"]


class ProcessAdvantageMixin(GRPOTrainerHooks):
    r"""Mixin for [`~trl.GRPOTrainer`] subclasses whose advantages come from a named estimator (see the module
    docstring). Put it first in the bases: `class MyTrainer(ProcessAdvantageMixin, GRPOTrainer)`.

    A subclass sets the class attributes `advantage_estimator` (a key of
    [`~trl_erprm.grpo.advantages.ADVANTAGE_ESTIMATORS`]) and `metric_prefix`, overrides
    `prepare_rollout_batch(batch, rollout)` to put its estimator's inputs into `batch.tensors`, and calls
    `self.check_process_advantages()` at the end of its `__init__`.

    Attributes:
        advantage_estimator (`str`): Name of the estimator (`"grpo"`: GRPO's advantages, unchanged).
        metric_prefix (`str`): Prefix of the metrics the trainer logs (`"prime"`, `"prl"`).
        last_batch (`dict[str, torch.Tensor]`): Tensors of the last training generation batch, local rows:
            `advantages` (`(B, T)` or `(B,)`), `grpo_advantages` `(B,)`, `input_ids`, `attention_mask`,
            `completion_ids`, `completion_mask` (the loss mask), and what the subclass adds.
    """

    advantage_estimator = "grpo"
    metric_prefix = ""

    def __init__(self, *args, **kwargs):
        _check_grpo_trainer(self)  # before the parent loads any model
        super().__init__(*args, **kwargs)

    def check_process_advantages(self) -> None:
        """Check that the trainer is a `GRPOTrainer`, that the estimator exists and that the trainer's loss takes
        token-level advantages.

        Raises:
            TypeError: The trainer is no `trl.GRPOTrainer` (e.g. `trl.RLOOTrainer`, whose loss is sequence-level).
            ValueError: Unknown estimator, or the Liger GRPO loss of trl 1.13 (it takes `(B,)` advantages only).
        """
        _check_grpo_trainer(self)
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"Unknown advantage_estimator {self.advantage_estimator!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}."
            )
        if not _takes_token_advantages(self):
            raise ValueError(
                f"{type(self).__name__} gives per-token advantages, which the Liger GRPO loss of this TRL version does "
                "not accept. Set `use_liger_kernel=False`."
            )
        self.last_batch: dict[str, torch.Tensor] = {}

    # -- per training generation batch --------------------------------------------------------------------------------

    def process_rollouts(self, output: dict, rewards: torch.Tensor) -> dict:
        """Replace GRPO's advantages of a training generation batch (see the module docstring).

        Args:
            output (`dict`):
                What GRPOTrainer's generate-and-score step returned for this process's rows.
            rewards (`torch.Tensor`):
                Rewards of every reward function for the global batch, `(B_global, num_reward_funcs)`.

        Returns:
            `dict`: `output`, with the new advantages.
        """
        rollout = read_rollout(output)
        B, T = rollout.completion_ids.shape
        rank = self.accelerator.process_index
        batch = RolloutBatch(
            rewards=rewards.float(),
            reward_weights=self.reward_weights.float().to(rewards.device),
            group_size=self.num_generations,
            completion_ids=self.gather_rows(rollout.completion_ids),
            mask=self.gather_rows(rollout.loss_mask),
            grpo_advantages=self.accelerator.gather(rollout.advantages.float()),
            process_index=rank,
        )
        self.last_batch = {
            "grpo_advantages": rollout.advantages,
            "input_ids": torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1),
            "attention_mask": torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1),
            "completion_ids": rollout.completion_ids,
            "completion_mask": rollout.loss_mask,
        }
        self.prepare_rollout_batch(batch, rollout)
        advantages = ADVANTAGE_ESTIMATORS[self.advantage_estimator](batch, self.args)
        local = slice(rank * B, (rank + 1) * B)  # as GRPOTrainer slices its own advantages
        advantages = advantages[local] if advantages.dim() == 1 else advantages[local, :T]
        advantages = advantages.to(rollout.advantages.device).contiguous()
        set_advantages(output, advantages)
        self.last_batch["advantages"] = advantages
        return output

    def prepare_rollout_batch(self, batch: RolloutBatch, rollout: Rollout) -> None:
        """Put the estimator's inputs into `batch.tensors` (the default adds nothing, for `"grpo"`).

        Args:
            batch ([`~trl_erprm.grpo.advantages.RolloutBatch`]):
                The global batch; add gathered tensors to `batch.tensors` with [`gather_rows`].
            rollout (`Rollout`):
                This process's rows (prompts, completions, masks, GRPO's advantages and log-probs).
        """

    # -- helpers for subclasses ---------------------------------------------------------------------------------------

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Gather a tensor of this process's rows, `(B, ...)`, into the global batch, in process order; `(B, T)`
        tensors are right-padded with 0 to the largest `T` of any process. Every process must call it.

        Args:
            x (`torch.Tensor`):
                `(B,)` or `(B, T)`; bool tensors come back as bool.

        Returns:
            `torch.Tensor`: `(B_global,)` or `(B_global, T_max)`.
        """
        is_bool = x.dtype == torch.bool
        x = x.long() if is_bool else x
        if x.dim() > 1:
            x = self.accelerator.pad_across_processes(x, dim=1, pad_index=0)
        x = self.accelerator.gather(x.contiguous())
        return x.bool() if is_bool else x

    def sampling_logps(self, rollout: Rollout, rows: torch.Tensor | None = None) -> torch.Tensor:
        """`(n, T)` log-probs of the completions (all rows, or the given ones) under the sampling policy: GRPO's
        `old_per_token_logps`, or one forward pass of the policy without gradient when GRPO skipped them (it does when
        the policy has not moved since sampling, so the current policy *is* the sampling policy).

        Args:
            rollout (`Rollout`):
                This process's rows.
            rows (`torch.Tensor`, *optional*):
                Row indices; all rows when `None`.

        Returns:
            `torch.Tensor`: float32, at GRPO's temperature.
        """
        if rollout.old_logps is not None:
            old = rollout.old_logps if rows is None else rollout.old_logps[rows]
            return old.float()
        input_ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
        attention_mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
        if rows is not None:
            input_ids, attention_mask = input_ids[rows], attention_mask[rows]
        T = rollout.completion_ids.shape[1]
        if len(input_ids) == 0:
            return torch.zeros(0, T, device=input_ids.device)
        with torch.no_grad():
            logps = per_token_logps(
                self, self.model, input_ids, attention_mask, T, batch_size=self.args.per_device_train_batch_size
            )
        return logps.float()

    def log_rollout_metric(self, name: str, value: float) -> None:
        """Log `<metric_prefix>/<name>` with GRPO's training metrics (averaged over the logging steps).

        Args:
            name (`str`):
                Metric name, without the prefix.
            value (`float`):
                Its value for this generation batch (already the same on every process).
        """
        log_metric(self, f"{self.metric_prefix}/{name}", value)

    def global_mean(self, total: float, count: float) -> float:
        """Mean over all processes of a quantity each process has summed over `count` items (0 when none).

        Args:
            total (`float`):
                This process's sum.
            count (`float`):
                This process's number of items.

        Returns:
            `float`: The global mean.
        """
        device = self.accelerator.device
        stats = self.accelerator.gather(torch.tensor([[total, count]], dtype=torch.float64, device=device))
        total, count = stats.sum(0).tolist()
        return total / count if count > 0 else 0.0


def _check_grpo_trainer(trainer) -> None:
    if not isinstance(trainer, GRPOTrainer):
        bases = ", ".join(b.__name__ for b in type(trainer).__mro__[1:] if b.__module__.startswith("trl."))
        raise TypeError(
            f"{type(trainer).__name__} puts ProcessAdvantageMixin on {bases or 'no TRL trainer'}, but the mixin works "
            "on trl.GRPOTrainer subclasses only: it replaces the advantages by per-token `(B, T)` ones, which "
            "GRPOTrainer's loss takes, while RLOOTrainer's loss is sequence-level (one importance ratio per "
            "completion times `(B,)` advantages) and other trainers have no such seam. Subclass "
            "`class MyTrainer(ProcessAdvantageMixin, trl.GRPOTrainer)` (see docs/prime.md, 'RLOOTrainer')."
        )
