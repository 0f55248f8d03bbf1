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
from pathlib import Path
from typing import Any


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
