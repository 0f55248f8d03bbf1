"""Every access of trl-erprm to a private name of TRL or transformers, in one place.

TRL changes its internals often (`grpo_trainer.py` saw 134 commits in six months). Each function, constant and
override below names the TRL versions it was checked on; `tests/test_compat.py` holds the contract (it runs on the
oldest and the newest supported TRL and fails if TRL stops doing what the code here relies on). Code outside this
module reaches TRL and transformers through their public API only.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


# =====================================================================================================================
# GRPOTrainer internals
# =====================================================================================================================
#
# Used by `trl_erprm.grpo` (PRIMETrainer, PRLTrainer and their mixin). Checked on trl 1.13.0 and 1.16.0 with
# transformers 5.24.0.

#: Keys of the dict `GRPOTrainer._generate_and_score_completions` returns that `trl_erprm.grpo` reads or writes.
#: The first five are always present; `old_per_token_logps` only when the policy may have moved since sampling
#: (`num_iterations > 1`, or `steps_per_generation > gradient_accumulation_steps`, or vLLM importance sampling);
#: `ref_per_token_logps` only when `beta != 0`; `tool_mask` only with tool calling (trl 1.13.0, 1.16.0).
ROLLOUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")
OLD_LOGPS_KEY = "old_per_token_logps"
REF_LOGPS_KEY = "ref_per_token_logps"
TOOL_MASK_KEY = "tool_mask"


class Rollout(NamedTuple):
    """The tensors of one generation batch (local rows) as `GRPOTrainer._generate_and_score_completions` returns them.

    Args:
        prompt_ids (`torch.Tensor`): `(B, P)`, left-padded.
        prompt_mask (`torch.Tensor`): `(B, P)`.
        completion_ids (`torch.Tensor`): `(B, T)`, right-padded.
        completion_mask (`torch.Tensor`): `(B, T)` (0 after EOS and, with `mask_truncated_completions`, on truncated
            completions).
        loss_mask (`torch.Tensor`): `(B, T)`: `completion_mask`, times `tool_mask` with tool calling.
        advantages (`torch.Tensor`): GRPO's own advantages, `(B,)`.
        old_logps (`torch.Tensor` or `None`): `(B, T)` log-probs under the sampling policy, when GRPO computed them.
        ref_logps (`torch.Tensor` or `None`): `(B, T)` log-probs under GRPO's reference model (`beta != 0` only).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None
    ref_logps: torch.Tensor | None


def read_rollout(output: dict) -> Rollout:
    """Read the output dict of `GRPOTrainer._generate_and_score_completions` (trl 1.13.0, 1.16.0)."""
    mask = output["completion_mask"]
    tool_mask = output.get(TOOL_MASK_KEY)
    return Rollout(
        prompt_ids=output["prompt_ids"],
        prompt_mask=output["prompt_mask"],
        completion_ids=output["completion_ids"],
        completion_mask=mask,
        loss_mask=mask if tool_mask is None else mask * tool_mask,
        advantages=output["advantages"],
        old_logps=output.get(OLD_LOGPS_KEY),
        ref_logps=output.get(REF_LOGPS_KEY),
    )


def set_advantages(output: dict, advantages: torch.Tensor) -> None:
    """Replace the advantages of the output dict; `GRPOTrainer._compute_loss` takes `(B,)` or `(B, T)` ones (it
    unsqueezes 1-D advantages "to support subclasses that provide advantages with shape (B, T)"; trl 1.13.0,
    1.16.0)."""
    output["advantages"] = advantages


def per_token_logps(trainer, model, input_ids, attention_mask, logits_to_keep: int, batch_size: int | None = None):
    """`(B, logits_to_keep)` log-probs of the last `logits_to_keep` tokens under `model`, as GRPO computes them (its
    temperature, its autocast, chunks of `batch_size` rows): `GRPOTrainer._get_per_token_logps_and_entropies`, which
    returns `(logps, entropies, aux_loss)` on trl 1.13.0 and 1.16.0 (two values before June 2026)."""
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
    )
    return logps


def log_metric(trainer, name: str, value: float, mode: str = "train") -> None:
    """Append a value to GRPO's metric buffer `GRPOTrainer._metrics[mode][name]` (a `defaultdict(list)`), averaged
    and logged with GRPO's own metrics at the next logging step (trl 1.13.0, 1.16.0)."""
    trainer._metrics[mode][name].append(float(value))


def policy_tokenizer(trainer):
    """The policy's tokenizer: `GRPOTrainer._tokenizer` (the processor's tokenizer for a VLM), else the processing
    class (trl 1.13.0, 1.16.0)."""
    return getattr(trainer, "_tokenizer", None) or trainer.processing_class


def eos_token_ids(trainer) -> list[int]:
    """Token ids that end a completion: `GRPOTrainer.eos_token_ids` (trl >= 1.14; the generation config's EOS ids),
    else the tokenizer's `eos_token_id` (trl 1.13.0)."""
    ids = getattr(trainer, "eos_token_ids", None)
    if ids is None:
        ids = [policy_tokenizer(trainer).eos_token_id]
    return [int(i) for i in ids if i is not None]


def takes_token_advantages(trainer) -> bool:
    """Whether the trainer's loss accepts `(B, T)` advantages: `False` only for the Liger GRPO loss of trl 1.13.0
    (`use_liger_kernel=True` with `compute_liger_loss`, removed in 1.16.0), which takes `(B,)` advantages."""
    return not (getattr(trainer, "use_liger_kernel", False) and hasattr(trainer, "compute_liger_loss"))


def checkpoint_folder(trainer, trial=None) -> str:
    """The folder `Trainer._save_checkpoint` writes the checkpoint of the current step to:
    `Trainer._get_output_dir(trial)/checkpoint-<global_step>` (transformers 5.24.0)."""
    return os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")


class GRPOTrainerHooks:
    """Mixin for subclasses of `trl.GRPOTrainer`: the private methods it overrides, each forwarding to a hook with a
    public name. Put it before `GRPOTrainer` in the bases.

    - `_calculate_rewards(inputs, prompts, completions, completion_ids_list)` returns the rewards of every reward
      function for every completion of the *global* batch, `(B_global, num_reward_funcs)`, gathered over processes,
      NaN where a function returned `None`; `_generate_and_score_completions(inputs)` calls it once per batch
      (trl 1.13.0, 1.16.0). The override keeps what it returned.
    - `_generate_and_score_completions(inputs)` then calls `self.process_rollouts(output, rewards)` on training
      batches (not evaluation ones) and returns its result.
    - `_save_checkpoint(model, trial)` calls `self.save_extra_state(folder)` *before* the trainer writes its own files
      of the checkpoint (`trainer_state.json` among the last), so that a checkpoint with a `trainer_state.json` holds
      the extra state too (transformers 5.24.0).
    - `_load_optimizer_and_scheduler(checkpoint)`, called with the checkpoint folder when training resumes (also
      under DeepSpeed), then calls `self.load_extra_state(checkpoint)` (transformers 5.24.0; GRPOTrainer itself
      restores its adaptive-entropy state there on trl 1.16.0).
    """

    def process_rollouts(self, output: dict, rewards: torch.Tensor) -> dict:
        """Hook: post-process a training generation batch (the default returns it unchanged)."""
        return output

    def save_extra_state(self, folder: str) -> None:
        """Hook: write extra state into the checkpoint folder, before the trainer's own files (default: nothing)."""

    def load_extra_state(self, folder: str) -> None:
        """Hook: restore the extra state from a checkpoint folder when training resumes (default: nothing)."""

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._trl_erprm_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs: Any) -> dict:
        self._trl_erprm_rewards = None
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        if self._trl_erprm_rewards is None:
            raise RuntimeError(
                "GRPOTrainer._generate_and_score_completions did not call _calculate_rewards: this TRL version is "
                f"not supported by {type(self).__name__} (checked on trl 1.13.0 to 1.16.0)."
            )
        return self.process_rollouts(output, self._trl_erprm_rewards)

    def _save_checkpoint(self, model, trial):
        self.save_extra_state(checkpoint_folder(self, trial))
        self._trl_erprm_in_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._trl_erprm_in_checkpoint = False

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_extra_state(checkpoint)

    @property
    def saving_checkpoint(self) -> bool:
        """Whether the trainer is writing a checkpoint (`save_model` is then called from `_save_checkpoint`)."""
        return getattr(self, "_trl_erprm_in_checkpoint", False)
