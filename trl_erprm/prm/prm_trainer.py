"""Drop-in `PRMTrainer` for TRL releases without `trl.experimental.prm` (TRL >= 1.14).

It reproduces the behaviour of TRL 1.13.0's `trl.experimental.prm.PRMTrainer`: the same constructor, the same
stepwise-supervision dataset format (`prompt`, `completions`, `labels`), the same label placement (the last token of
every step + separator), `train_on_last_step_only`, truncation rules, PEFT support, accuracy metric and model-card
tags. The tokenization helper [`tokenize_stepwise_row`] is shared with [`ERPRMTrainer`], which keeps labels as floats.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from accelerate import PartialState
from datasets import Dataset, features
from transformers import (
    DataCollator,
    DataCollatorForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from transformers.trainer_utils import EvalPrediction
from transformers.utils import is_peft_available

from .prm_config import PRMConfig


try:  # TRL's base trainer adds model cards with `_tag_names` / `_paper`, as on every TRL trainer
    from trl.trainer.base_trainer import _BaseTrainer
except ImportError:  # pragma: no cover - a TRL without the private base trainer
    from transformers import Trainer as _BaseTrainer

try:
    from trl.trainer.utils import disable_dropout_in_model
except ImportError:  # pragma: no cover

    def disable_dropout_in_model(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0


if is_peft_available():
    from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training


PRM_PAPER = {
    "title": "Solving math word problems with process-and outcome-based feedback",
    "id": "2211.14275",
    "citation": textwrap.dedent("""\
        @article{uesato2022solving,
            title        = {{Solving Math Word Problems With Process- and Outcome-Based Feedback}},
            author       = {Uesato, Jonathan and Kushman, Nate and Kumar, Ramana and Song, Francis and Siegel, Noah and Wang, Lisa and Creswell, Antonia and Irving, Geoffrey and Higgins, Irina},
            year         = 2022,
            journal      = {arXiv preprint arXiv:2211.14275}
        }"""),
}


def tokenize_stepwise_row(
    features: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    step_separator: str,
    max_length: int | None,
    max_completion_length: int | None,
    train_on_last_step_only: bool,
    is_eval: bool,
    label_type: Callable[[Any], Any] = int,
) -> tuple[list[int], list[Any], list[int]]:
    """Tokenize one stepwise-supervision row the way TRL's PRMTrainer does.

    The prompt is tokenized without special tokens and prefixed with the BOS token if the tokenizer has one; each step
    is tokenized separately and followed by the separator ids; the step's label sits on the last token of
    step + separator, every other position is `-100`. The completion is cut to `max_completion_length`, then the whole
    sequence to `max_length`.

    Args:
        features (`dict[str, Any]`):
            Row with `"prompt"` (`str`), `"completions"` (`list[str]`) and `"labels"` (one per step).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of the model.
        step_separator (`str`):
            Separator appended to every step.
        max_length (`int` or `None`):
            Maximum length of prompt + completion, or `None`.
        max_completion_length (`int` or `None`):
            Maximum length of the completion, or `None`.
        train_on_last_step_only (`bool`):
            Label only the last step (training rows only).
        is_eval (`bool`):
            Whether the row belongs to an evaluation set (every step is labelled then).
        label_type (`Callable`, *optional*, defaults to `int`):
            Conversion applied to each label: `int` as in TRL (hard labels), `float` for soft labels.

    Returns:
        `tuple[list[int], list, list[int]]`: The input ids, the labels (`-100` where unlabelled), and the indices of
        the steps whose label survived truncation, in order.
    """
    prompt_ids = tokenizer(features["prompt"], add_special_tokens=False)["input_ids"]
    separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
    steps_ids = [
        tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids for step in features["completions"]
    ]
    step_labels = [label_type(label) for label in features["labels"]]
    labelled = list(range(len(step_labels)))
    if train_on_last_step_only and not is_eval:
        labelled = labelled[-1:]

    completion_ids, labels, label_steps = [], [], []
    for index, (ids, label) in enumerate(zip(steps_ids, step_labels, strict=True)):
        completion_ids += ids
        labels += [-100] * (len(ids) - 1) + [label if index in labelled else -100]
        label_steps.append(index)

    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    if max_completion_length is not None:
        completion_ids, labels = completion_ids[:max_completion_length], labels[:max_completion_length]
    input_ids = prompt_ids + completion_ids
    labels = [-100] * len(prompt_ids) + labels
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]

    # Steps whose label position survived truncation (positions are in step order).
    positions = np.cumsum([len(ids) for ids in steps_ids]) - 1 + len(prompt_ids)
    kept = [i for i in labelled if positions[i] < len(input_ids)]
    return input_ids, labels, kept


def map_stepwise_dataset(
    dataset: Dataset,
    tokenize_row: Callable[..., dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    args: PRMConfig,
    is_eval: bool,
    name: str,
    label_dtype: str = "int64",
    extra_kwargs: dict[str, Any] | None = None,
    extra_features: dict[str, Any] | None = None,
) -> Dataset:
    """Tokenize a stepwise dataset with `tokenize_row`, declaring the label dtype so `datasets` keeps it.

    Args:
        dataset ([`~datasets.Dataset`]):
            Stepwise rows.
        tokenize_row (`Callable`):
            Row function taking the row and the keyword arguments built from `args` (plus `extra_kwargs`).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of the model.
        args ([`PRMConfig`]):
            Config giving `step_separator`, `max_length`, `max_completion_length`, `train_on_last_step_only` and
            `dataset_num_proc`.
        is_eval (`bool`):
            Whether these are evaluation rows (every step labelled).
        name (`str`):
            Name shown in the progress bar.
        label_dtype (`str`, *optional*, defaults to `"int64"`):
            Feature dtype of `labels`: `"int64"` as in TRL, `"float32"` for soft labels.
        extra_kwargs (`dict[str, Any]`, *optional*):
            More keyword arguments for `tokenize_row`.
        extra_features (`dict[str, Any]`, *optional*):
            Features of extra output columns.

    Returns:
        [`~datasets.Dataset`]: Rows with `input_ids`, `labels` and the extra columns.
    """
    fn_kwargs = {
        "tokenizer": tokenizer,
        "step_separator": args.step_separator,
        "max_length": args.max_length,
        "max_completion_length": args.max_completion_length,
        "train_on_last_step_only": args.train_on_last_step_only,
        "is_eval": is_eval,
        **(extra_kwargs or {}),
    }
    schema = {
        "labels": features.Sequence(features.Value(label_dtype)),
        "input_ids": features.Sequence(features.Value("int64")),
        **(extra_features or {}),
    }
    return dataset.map(
        tokenize_row,
        fn_kwargs=fn_kwargs,
        num_proc=args.dataset_num_proc,
        remove_columns=dataset.column_names,
        desc=f"Tokenizing {name} dataset",
        features=features.Features(schema),
    )


def tokenize_train_and_eval(
    train_dataset: Dataset,
    eval_dataset: Dataset | dict[str, Dataset] | None,
    tokenize: Callable[[Dataset, bool, str], Dataset],
) -> tuple[Dataset, Dataset | dict[str, Dataset] | None]:
    """Apply `tokenize(dataset, is_eval, name)` to the training set and to every evaluation set, main process first.

    Args:
        train_dataset ([`~datasets.Dataset`]):
            Training rows.
        eval_dataset ([`~datasets.Dataset`], `dict[str, Dataset]` or `None`):
            Evaluation rows, several named sets, or none.
        tokenize (`Callable[[Dataset, bool, str], Dataset]`):
            The tokenization of one dataset.

    Returns:
        `tuple`: The tokenized training and evaluation datasets.
    """
    with PartialState().main_process_first():
        train_dataset = tokenize(train_dataset, False, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: tokenize(ds, True, f"eval ({key})") for key, ds in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = tokenize(eval_dataset, True, "eval")
    return train_dataset, eval_dataset


def compute_accuracy(eval_pred: EvalPrediction) -> dict[str, float]:
    """Accuracy of a PRM, as TRL's PRMTrainer reports it.

    For token-classification predictions of shape `(batch, seq_len, num_labels)`: argmax against the label at every
    labelled position. For pairwise predictions of shape `(batch, 2)`: how often the first score wins, ties ignored.

    Args:
        eval_pred ([`~transformers.trainer_utils.EvalPrediction`]):
            Predictions and labels gathered by the evaluation loop.

    Returns:
        `dict[str, float]`: `{"accuracy": ...}`.
    """
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if predictions.ndim == 3:
        keep = labels != -100
        hits = predictions.argmax(-1)[keep] == labels[keep]
    else:
        distinct = predictions[:, 0] != predictions[:, 1]
        hits = predictions[distinct].argmax(1) == labels[distinct]
    return {"accuracy": float(np.mean(hits)) if hits.size else float("nan")}


def prepare_peft_model(model: PreTrainedModel, peft_config: PeftConfig | None, args: PRMConfig) -> nn.Module:
    """Wrap a model for (Q)LoRA training, as TRL trainers do.

    Quantized (4/8-bit) models go through `peft.prepare_model_for_kbit_training`, which also enables gradient
    checkpointing (so `args.gradient_checkpointing` is turned off); otherwise gradient checkpointing is enabled with
    input gradients so that adapters receive gradients.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The base model, or a `PeftModel` (then `peft_config` must be `None`).
        peft_config (`peft.PeftConfig` or `None`):
            The adapter configuration.
        args ([`PRMConfig`]):
            Training arguments (`gradient_checkpointing`, `gradient_checkpointing_kwargs`).

    Returns:
        `torch.nn.Module`: The model to train.
    """
    if not is_peft_available():
        raise ImportError("PEFT training needs the `peft` package: `pip install peft`.")
    if isinstance(model, PeftModel) and peft_config is not None:
        raise ValueError(
            "You passed a PeftModel together with a peft_config. Merge and unload the existing adapter first, or pass "
            "peft_config=None to keep training the existing adapter."
        )
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    gc_kwargs = args.gradient_checkpointing_kwargs or {}
    if quantized and not isinstance(model, PeftModel):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
        args.gradient_checkpointing = False
    elif args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    return model


class PRMTrainer(_BaseTrainer):
    """Trainer for token-classification process reward models on stepwise supervision.

    A drop-in for `trl.experimental.prm.PRMTrainer` (TRL <= 1.13): same arguments, same behaviour. Import it from
    `trl_erprm`, which gives TRL's own class where the installed TRL still has it.

    Args:
        model ([`~transformers.PreTrainedModel`] or `torch.nn.Module`):
            The model to train, preferably an `AutoModelForTokenClassification` with `num_labels=2`.
        args ([`PRMConfig`]):
            Training arguments.
        data_collator ([`~transformers.DataCollator`], *optional*):
            Defaults to [`~transformers.DataCollatorForTokenClassification`] over `processing_class`.
        train_dataset ([`~datasets.Dataset`]):
            Stepwise-supervision rows (`prompt`, `completions`, `labels`), or rows already tokenized (`input_ids`,
            `labels`).
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Evaluation rows, in the same format.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer; required to tokenize the datasets and for the default collator.
        model_init (`Callable[[], PreTrainedModel]`, *optional*):
            Model initializer, as in [`~transformers.Trainer`].
        compute_metrics (`Callable[[EvalPrediction], dict]`, *optional*, defaults to [`compute_accuracy`]):
            Evaluation metrics.
        callbacks (`list[TrainerCallback]`, *optional*):
            Training callbacks.
        optimizers (`tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]`, *optional*, defaults to `(None, None)`):
            Optimizer and scheduler.
        preprocess_logits_for_metrics (`Callable[[torch.Tensor, torch.Tensor], torch.Tensor]`, *optional*):
            Applied to the logits before they are gathered for `compute_metrics`.
        peft_config (`peft.PeftConfig`, *optional*):
            If given, the model is wrapped in a PEFT model (use `task_type="TOKEN_CLS"`).
    """

    _tag_names = ["trl", "prm"]
    _name = "PRM"
    _paper = PRM_PAPER

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: PRMConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR] = (None, None),
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        peft_config: PeftConfig | None = None,
    ):
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if args is None:
            args = PRMConfig(output_dir="prm-output")
        if peft_config is not None and not is_peft_available():
            raise ImportError("You passed `peft_config` but `peft` is not installed: `pip install peft`.")
        if peft_config is not None and not isinstance(peft_config, PeftConfig):
            raise TypeError(f"`peft_config` must be a `peft.PeftConfig` (e.g. LoraConfig), got {type(peft_config)}.")
        if peft_config is not None or (is_peft_available() and isinstance(model, PeftModel)):
            model = prepare_peft_model(model, peft_config, args)
        if args.disable_dropout:
            disable_dropout_in_model(model)
        if compute_metrics is None:
            compute_metrics = compute_accuracy
        if data_collator is None:
            if processing_class is None:
                raise ValueError("A processing_class is needed for the default DataCollatorForTokenClassification.")
            data_collator = DataCollatorForTokenClassification(processing_class)

        if "input_ids" not in train_dataset.column_names:

            def tokenize(dataset: Dataset, is_eval: bool, name: str) -> Dataset:
                return map_stepwise_dataset(dataset, self.tokenize_row, processing_class, args, is_eval, name)

            train_dataset, eval_dataset = tokenize_train_and_eval(train_dataset, eval_dataset, tokenize)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    @staticmethod
    def tokenize_row(
        features: dict[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        step_separator: str,
        max_length: int | None,
        max_completion_length: int | None,
        train_on_last_step_only: bool,
        is_eval: bool,
    ) -> dict[str, list[int]]:
        """Tokenize a stepwise row with integer labels (see [`tokenize_stepwise_row`] for the layout).

        Args:
            features (`dict[str, Any]`):
                Row with `"prompt"`, `"completions"` and `"labels"`.
            tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
                Tokenizer of the model.
            step_separator (`str`):
                Separator appended to each step.
            max_length (`int` or `None`):
                Maximum length of prompt + completion.
            max_completion_length (`int` or `None`):
                Maximum length of the completion.
            train_on_last_step_only (`bool`):
                Label only the last step of training rows.
            is_eval (`bool`):
                Whether the row is an evaluation row.

        Returns:
            `dict[str, list[int]]`: `input_ids` and `labels`.
        """
        input_ids, labels, _ = tokenize_stepwise_row(
            features, tokenizer, step_separator, max_length, max_completion_length, train_on_last_step_only, is_eval
        )
        return {"input_ids": input_ids, "labels": labels}

    def _save_checkpoint(self, model, trial):
        model_name = Path(self.args.output_dir).name if self.args.hub_model_id is None else self.args.hub_model_id
        self.create_model_card(model_name=model_name.split("/")[-1])
        super()._save_checkpoint(model, trial)
