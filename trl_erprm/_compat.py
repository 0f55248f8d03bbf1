"""Every access to a private name of TRL or transformers, in one module (internal).

trl-erprm supports a window of TRL releases (see `pyproject.toml`); private names (a leading underscore) can change in
any release, so none is used anywhere else in the package. Each one here has a contract test in `tests/test_compat.py`
that checks, on the oldest and the newest supported TRL, that the name exists and behaves as trl-erprm relies on.
When a TRL or transformers upgrade breaks a contract test, this module is the only place to fix.

Import-time rule: this module is imported by trainer and config modules only, never by `trl_erprm/__init__`, and it
imports no TRL module at its top: TRL classes are resolved on first use through [`__getattr__`] (`_LAZY` below), so a
section added here never makes `import trl_erprm` slower.

Not in this module: the class attributes `_tag_names`, `_name` and `_paper` that every trainer declares. They are
TRL's documented convention for model cards (TRL's own trainers declare them the same way); `_BaseTrainer` reads them
and the contract test checks that it still does.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


# =====================================================================================================================
# TRL: the base classes of TRL's trainers and configs
# =====================================================================================================================

#: Private TRL classes, resolved on first access: `from trl_erprm._compat import BaseConfig`.
_LAZY = {
    # TRL's base config: `TrainingArguments` with the TRL-wide defaults (`logging_steps=10`,
    # `gradient_checkpointing=True`, `bf16` unless `fp16`), as in every TRL config.
    "BaseConfig": ("trl.trainer.base_config", "_BaseConfig"),
    # TRL's base trainer: `Trainer` plus model cards built from the class attributes `_tag_names`, `_name`, `_paper`.
    "BaseTrainer": ("trl.trainer.base_trainer", "_BaseTrainer"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


# =====================================================================================================================
# transformers: TrainingArguments internals, and the gradient -> activation checkpointing rename (transformers 5.2x)
# =====================================================================================================================


def add_dict_fields(*names: str):
    """Class decorator: let `TrainingArguments` parse these config fields from JSON strings (`'{"dtype": ...}'`), as it
    does for its own dict fields (its private `_VALID_DICT_FIELDS` list).

    Args:
        *names (`str`):
            Names of the dict-valued fields of the decorated config.

    Returns:
        The decorator.
    """

    def decorate(cls):
        cls._VALID_DICT_FIELDS = [*cls._VALID_DICT_FIELDS, *(n for n in names if n not in cls._VALID_DICT_FIELDS)]
        return cls

    return decorate


def adopt_activation_checkpointing(args) -> None:
    """Carry `gradient_checkpointing(_kwargs)` over to `activation_checkpointing(_kwargs)` before
    `TrainingArguments.__post_init__` runs.

    transformers >= 5.2x renamed the fields and warns (`FutureWarning`) whenever the old name is set, and TRL's base
    config sets `gradient_checkpointing=True` by default: every config construction warned, even with checkpointing
    off. Resolving the alias the way transformers does (only when the new name is unset) silences that noise and
    changes no value. A no-op on transformers without the new fields. Call it first in `__post_init__`.

    Args:
        args ([`~transformers.TrainingArguments`]):
            The config being initialised.
    """
    names = {f.name for f in dataclasses.fields(args)}
    for old, new in (
        ("gradient_checkpointing", "activation_checkpointing"),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    ):
        if new in names and getattr(args, new) is None and getattr(args, old) is not None:
            setattr(args, new, getattr(args, old))


def turn_off_activation_checkpointing(args) -> None:
    """Turn gradient checkpointing off in an already initialised config, under both of its transformers names.

    After `__post_init__`, transformers >= 5.2x reads only `activation_checkpointing`, so setting the old
    `gradient_checkpointing` alone (as TRL's `prepare_peft_model` does after k-bit preparation) no longer takes effect.

    Args:
        args ([`~transformers.TrainingArguments`]):
            The config.
    """
    args.gradient_checkpointing = False
    if hasattr(args, "activation_checkpointing"):
        args.activation_checkpointing = False


def enable_activation_checkpointing(model) -> None:
    """Enable gradient (activation) checkpointing on a model with its default settings, under the name the installed
    transformers uses (`activation_checkpointing_enable`, or `gradient_checkpointing_enable` before 5.2x, which now
    warns that it is deprecated).

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The model (for a PEFT model, pass its `base_model`).
    """
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


# =====================================================================================================================
# transformers: Trainer hooks that TRL's own trainers override the same way
# =====================================================================================================================


class ModelCardOnCheckpointMixin:
    """Write the model card (TRL's `create_model_card`) with every checkpoint, as TRL's trainers do, by extending
    `Trainer._save_checkpoint`. Put it before the trainer base class in the bases."""

    def _save_checkpoint(self, model, trial):
        model_name = Path(self.args.output_dir).name if self.args.hub_model_id is None else self.args.hub_model_id
        self.create_model_card(model_name=model_name.split("/")[-1])
        super()._save_checkpoint(model, trial)


class KeepColumnsMixin:
    """Keep the dataset columns named by `keep_columns()` when the Trainer drops the columns that the model's
    `forward` does not take (`remove_unused_columns=True`), by extending `Trainer._set_signature_columns_if_needed`.
    Put it before the trainer base class in the bases."""

    def keep_columns(self) -> list[str]:
        """Names of the dataset columns the collator needs besides the model's inputs.

        Returns:
            `list[str]`: The column names (none by default).
        """
        return []

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for column in self.keep_columns():
            if column not in self._signature_columns:
                self._signature_columns.append(column)


def prepare_inputs(trainer, inputs: dict[str, Any]) -> dict[str, Any]:
    """Move a collated batch to the trainer's device as the training loop does (`Trainer._prepare_inputs`).

    Args:
        trainer ([`~transformers.Trainer`]):
            The trainer.
        inputs (`dict[str, Any]`):
            A batch from the data collator.

    Returns:
        `dict[str, Any]`: The batch on the right device.
    """
    return trainer._prepare_inputs(inputs)


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


def log_metric_owner(log_metric) -> Any:
    """The trainer whose `log_metric` a reward function was given: GRPOTrainer passes its bound method
    `self._log_metric` (trl 1.13.0, 1.16.0); `None` for any other callable."""
    return getattr(log_metric, "__self__", None)


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


class RewardInputs(NamedTuple):
    """The local rows of a generation batch as `GRPOTrainer._calculate_rewards` receives them (trl 1.13.0, 1.16.0).

    Args:
        inputs (`list[dict]`): The dataset rows, one per completion (each prompt repeated `num_generations` times).
        prompts (`list`): The prompts (strings, or lists of messages).
        completions (`list`): The decoded completions (strings, or a list holding one assistant message).
    """

    inputs: list
    prompts: list
    completions: list


class GRPOTrainerHooks:
    """Mixin for subclasses of `trl.GRPOTrainer`: the private methods it overrides, each forwarding to a hook with a
    public name. Put it before `GRPOTrainer` in the bases.

    - `_calculate_rewards(inputs, prompts, completions, completion_ids_list)` returns the rewards of every reward
      function for every completion of the *global* batch, `(B_global, num_reward_funcs)`, gathered over processes,
      NaN where a function returned `None`; `_generate_and_score_completions(inputs)` calls it once per batch
      (trl 1.13.0, 1.16.0). The override keeps what it returned, and what it was given for this process's rows
      ([`reward_inputs`]): the dataset rows, the prompts and the completions (text, or one assistant message), in
      the row order of the output's `completion_ids`.
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
        self._trl_erprm_reward_inputs = RewardInputs(list(inputs), list(prompts), list(completions))
        return rewards

    def reward_inputs(self) -> RewardInputs:
        """What the reward functions of the current generation batch were given, for this process's rows."""
        return self._trl_erprm_reward_inputs

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


# =====================================================================================================================
# transformers: the attention implementation a model runs
# =====================================================================================================================


def attention_implementation(model) -> str:
    """The attention implementation `model` runs: `"sdpa"`, `"eager"`, `"flash_attention_2"` or a name registered
    with `transformers.AttentionInterface` (`config._attn_implementation`; `model.set_attn_implementation` is the public
    setter, with no public getter). The labeler's transformers backend reads it to restore it after decoding with its
    shared-prefix attention."""
    return model.config._attn_implementation
