"""Contract tests of `trl_erprm/_compat.py`: every private TRL / transformers name trl-erprm relies on exists and
behaves as relied on. Run on the oldest and the newest supported TRL; a failure here after an upgrade points at the
one module to fix."""

import dataclasses
import inspect
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from trl_erprm import _compat
from trl_erprm.erprm_config import ERPRMConfig
from trl_erprm.erprm_trainer import ERPRMTrainer
from trl_erprm.implicit_prm_config import ImplicitPRMConfig
from trl_erprm.prm import PRMConfig, PRMTrainer


def _rows():
    return Dataset.from_list(
        [
            {"prompt": "What is 2+3?", "completions": ["2+3=5.", "So 5."], "labels": [1.0, 0.0]},
            {"prompt": "What is 4*2?", "completions": ["4*2=8."], "labels": [1.0]},
        ]
    )


# ---------------------------------------------------------------------------------------------------------------------
# TRL: base classes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # TRL's own class warns
def test_base_config_is_trls_with_trls_defaults():
    from trl.trainer.base_config import _BaseConfig

    assert _compat.BaseConfig is _BaseConfig
    assert issubclass(_BaseConfig, TrainingArguments) and dataclasses.is_dataclass(_BaseConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(_BaseConfig)}
    assert defaults["logging_steps"] == 10 and defaults["gradient_checkpointing"] is True
    assert defaults["bf16"] is None  # resolved in __post_init__: bf16 unless fp16
    assert _BaseConfig(output_dir="x", use_cpu=True, fp16=False, bf16=False).bf16 is False


def test_base_trainer_is_trls_and_builds_model_cards_from_class_attributes(token_cls_model, tokenizer, tmp_path):
    from trl.trainer.base_trainer import _BaseTrainer

    assert _compat.BaseTrainer is _BaseTrainer and issubclass(_BaseTrainer, Trainer)
    args = PRMConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False
    )
    trainer = PRMTrainer(model=token_cls_model, args=args, train_dataset=_rows(), processing_class=tokenizer)
    # `_BaseTrainer.create_model_card` reads the class attributes `_tag_names`, `_name` and `_paper`.
    trainer.create_model_card(model_name="tiny-prm")
    card = (tmp_path / "README.md").read_text()
    assert "prm" in card and PRMTrainer._paper["id"] in card and PRMTrainer._paper["title"] in card
    assert f"with {PRMTrainer._name}" in card


def test_unknown_private_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _compat.NoSuchThing  # noqa: B018


# ---------------------------------------------------------------------------------------------------------------------
# transformers: TrainingArguments
# ---------------------------------------------------------------------------------------------------------------------


def test_dict_fields_are_parsed_from_json():
    assert isinstance(TrainingArguments._VALID_DICT_FIELDS, list)
    assert "model_init_kwargs" in ImplicitPRMConfig._VALID_DICT_FIELDS
    assert "model_init_kwargs" not in TrainingArguments._VALID_DICT_FIELDS  # the decorator copies, never mutates
    config = ImplicitPRMConfig(output_dir="x", use_cpu=True, bf16=False, model_init_kwargs='{"dtype": "float32"}')
    assert config.model_init_kwargs == {"dtype": "float32"}


@pytest.mark.parametrize("config_class", [PRMConfig, ERPRMConfig, ImplicitPRMConfig])
def test_configs_do_not_warn_about_their_own_checkpointing_defaults(config_class):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        on = config_class(output_dir="x", use_cpu=True, bf16=False)
        off = config_class(output_dir="x", use_cpu=True, bf16=False, gradient_checkpointing=False)
    assert on.gradient_checkpointing is True and off.gradient_checkpointing is False
    if hasattr(on, "activation_checkpointing"):  # transformers >= 5.2x reads the new name
        assert on.activation_checkpointing is True and off.activation_checkpointing is False


def test_turn_off_activation_checkpointing_reaches_the_name_transformers_reads():
    args = PRMConfig(output_dir="x", use_cpu=True, bf16=False)
    _compat.turn_off_activation_checkpointing(args)
    assert args.gradient_checkpointing is False
    assert getattr(args, "activation_checkpointing", False) is False


def test_enable_activation_checkpointing(token_cls_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _compat.enable_activation_checkpointing(token_cls_model)
    assert any(getattr(m, "gradient_checkpointing", False) for m in token_cls_model.modules())


# ---------------------------------------------------------------------------------------------------------------------
# transformers: Trainer hooks
# ---------------------------------------------------------------------------------------------------------------------


def test_save_checkpoint_hook_writes_the_model_card(token_cls_model, tokenizer, cpu_train_kwargs):
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    args = PRMConfig(**{**cpu_train_kwargs, "save_strategy": "steps"}, save_steps=1, max_steps=1)
    trainer = PRMTrainer(model=token_cls_model, args=args, train_dataset=_rows(), processing_class=tokenizer)
    trainer.train()
    output = Path(trainer.args.output_dir)
    assert any(p.name.startswith("checkpoint-") for p in output.iterdir())
    assert PRMTrainer._paper["id"] in (output / "README.md").read_text()


def test_keep_columns_hook_keeps_the_outcomes_column(token_cls_model, tokenizer, cpu_train_kwargs):
    assert "_signature_columns" in inspect.getsource(Trainer._set_signature_columns_if_needed)
    rows = Dataset.from_list([{"prompt": "Q", "completions": ["a.", "b."], "step_outcomes": [[1.0, 0.0], [1.0]]}] * 2)
    args = ERPRMConfig(**cpu_train_kwargs, remove_unused_columns=True, eta=0.0)
    trainer = ERPRMTrainer(model=token_cls_model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer._set_signature_columns_if_needed()
    assert "step_outcomes" in trainer._signature_columns and "input_ids" in trainer._signature_columns
    assert "step_outcomes" in trainer._remove_unused_columns(trainer.train_dataset).column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert torch.equal(batch["labels"][batch["labels"] != -100], torch.tensor([0.5, 1.0, 0.5, 1.0]))


def test_prepare_inputs_moves_a_batch_to_the_trainer_device(token_cls_model, tokenizer, cpu_train_kwargs):
    trainer = PRMTrainer(
        model=token_cls_model, args=PRMConfig(**cpu_train_kwargs), train_dataset=_rows(), processing_class=tokenizer
    )
    batch = {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[1, 1]])}
    moved = _compat.prepare_inputs(trainer, batch)
    assert set(moved) == set(batch) and all(v.device == trainer.args.device for v in moved.values())
