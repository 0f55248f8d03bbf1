from __future__ import annotations

import textwrap
from typing import Any

import torch
from trl import GRPOTrainer

from .._compat import policy_tokenizer
from ..functional import step_end_mask_from_token_ids
from ..steps import separator_token_ids
from .mixin import ProcessAdvantageMixin
from .prl_config import PRLConfig


class PRLTrainer(ProcessAdvantageMixin, GRPOTrainer):
    r"""Trainer for PRL ([Process Reward Learning](https://huggingface.co/papers/2601.10201)): GRPO with per-step
    advantages from the policy's own KL to the reference, with no reward model.

    The only change w.r.t. [`~trl.GRPOTrainer`] is the advantage of a training generation batch (see
    [`~trl_erprm.grpo.mixin.ProcessAdvantageMixin`]). With `A_i` GRPO's own group-normalised outcome advantage,
    `S_t = sum_{j>=t} (log pi_old(a_j) - log pi_ref(a_j))` over the remaining completion tokens and
    `R_t = A_i - S_t / eta`, every token of a step gets `R` at the step's last token (the `"prl"` estimator,
    [`~trl_erprm.functional.prl_advantages`]). Steps end at every token whose text contains `step_separator` (found by
    scanning the vocabulary with [`separator_token_ids`], so never the BOS id) and/or every `step_len` tokens, and at
    the last token.

    `pi_ref` is GRPO's reference, whose log-probs GRPO computes only when `beta != 0` ([`PRLConfig`] defaults to
    `beta=1e-3`). `pi_old` is GRPO's `old_per_token_logps`, or one extra forward pass of the policy when GRPO skipped
    them (then the current policy is the sampling policy). Both are taken at GRPO's `temperature`.

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            The policy, as for [`~trl.GRPOTrainer`].
        reward_funcs (reward function or `list`):
            The outcome reward functions, as for GRPOTrainer.
        args ([`~trl_erprm.grpo.PRLConfig`], *optional*):
            Configuration; defaults to `PRLConfig("<model name>-PRL")`.
        **kwargs:
            Every other argument of [`~trl.GRPOTrainer`] (`train_dataset`, `processing_class`, `peft_config`, ...), by
            keyword. Tool calling is not supported (tool tokens would split the steps).

    Attributes:
        separator_ids (`list[int]`): Token ids that end a step.
        last_batch (`dict[str, torch.Tensor]`): Tensors of the last training generation batch, local rows:
            `advantages` `(B, T)`, `grpo_advantages` `(B,)`, `step_ends` `(B, T)`, `old_logps` `(B, T)`, `ref_logps`
            `(B, T)`, `completion_ids`, `completion_mask`.

    Logged metrics (train): `prl/kl_to_go/mean` (`S` at the first token), `prl/steps_per_completion`,
    `prl/advantages/mean`, `prl/advantages/std`.
    """

    _tag_names = ["trl", "grpo", "prl", "trl-erprm"]
    _name = "PRL"
    _paper = {
        "title": "PRL: Process Reward Learning Improves LLMs' Reasoning Ability and Broadens the Reasoning Boundary",
        "id": "2601.10201",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{yao2026prl,
                title        = {{PRL: Process Reward Learning Improves LLMs' Reasoning Ability and Broadens the Reasoning Boundary}},
                author       = {Jiarui Yao and Ruida Wang and Tong Zhang},
                year         = 2026,
                journal      = {arXiv preprint arXiv:2601.10201},
            }"""),
    }
    advantage_estimator = "prl"
    metric_prefix = "prl"

    def __init__(self, model, reward_funcs=None, args: PRLConfig | None = None, **kwargs: Any):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "name_or_path", None) or "model"
            args = PRLConfig(f"{name.rstrip('/').split('/')[-1]}-PRL")
        if not isinstance(args, PRLConfig):
            raise TypeError(f"PRLTrainer needs a PRLConfig (a GRPOConfig with PRL's fields), got {type(args)}.")
        if kwargs.get("tools"):
            raise ValueError("PRLTrainer does not support tool calling (tool tokens would split the steps).")
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self.check_process_advantages()
        self.separator_ids: list[int] = []
        if args.step_separator is not None:
            self.separator_ids = separator_token_ids(policy_tokenizer(self), args.step_separator)
            if not self.separator_ids:
                raise ValueError(
                    f"No token of the policy's vocabulary contains step_separator={args.step_separator!r}. Use another "
                    "separator or split with step_len."
                )

    def prepare_rollout_batch(self, batch, rollout) -> None:
        """Old and reference log-probs and step ends of this process's rows, gathered into `batch.tensors`
        (`old_logps`, `ref_logps`, `step_ends`).

        Args:
            batch ([`~trl_erprm.grpo.advantages.RolloutBatch`]):
                The global batch.
            rollout (`Rollout`):
                This process's rows.
        """
        mask = rollout.loss_mask
        old = self.sampling_logps(rollout)
        ref = rollout.ref_logps.float()
        ends = step_end_mask_from_token_ids(rollout.completion_ids, mask, self.separator_ids, self.args.step_len)
        batch.tensors.update(
            old_logps=self.gather_rows(old), ref_logps=self.gather_rows(ref), step_ends=self.gather_rows(ends)
        )
        self.last_batch.update(step_ends=ends, old_logps=old, ref_logps=ref)

    def process_rollouts(self, output: dict, rewards: torch.Tensor) -> dict:
        """The mixin's step (see [`~trl_erprm.grpo.mixin.ProcessAdvantageMixin.process_rollouts`]), then PRL's metrics.

        Args:
            output (`dict`):
                What GRPOTrainer's generate-and-score step returned for this process's rows.
            rewards (`torch.Tensor`):
                Rewards of the global batch, `(B_global, num_reward_funcs)`.

        Returns:
            `dict`: `output`, with PRL's advantages.
        """
        output = super().process_rollouts(output, rewards)
        batch = self.last_batch
        mask, advantages = batch["completion_mask"], batch["advantages"]
        valid = mask.bool()
        kl_to_go = ((batch["old_logps"] - batch["ref_logps"]) * mask).sum(-1)
        self.log_rollout_metric("kl_to_go/mean", self.global_mean(kl_to_go.sum().item(), len(kl_to_go)))
        self.log_rollout_metric("steps_per_completion", self.global_mean(batch["step_ends"].sum().item(), len(mask)))
        n = valid.sum().item()
        mean = self.global_mean(advantages[valid].sum().item(), n)
        var = self.global_mean(((advantages[valid] - mean) ** 2).sum().item(), n)
        self.log_rollout_metric("advantages/mean", mean)
        self.log_rollout_metric("advantages/std", var**0.5)
        return output
