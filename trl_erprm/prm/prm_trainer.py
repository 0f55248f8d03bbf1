"""`PRMTrainer`: the drop-in for TRL 1.13's `trl.experimental.prm.PRMTrainer`, used on every TRL version.

It reproduces TRL 1.13.0's class: the same constructor, the same stepwise-supervision dataset format (`prompt`,
`completions`, `labels`), the same tokenization (the label on the last token of every step + separator, see
[`~trl_erprm.data.tokenize_stepwise_row`]), `train_on_last_step_only`, truncation rules, PEFT preparation and
gradient-checkpointing settings ([`prepare_peft_model`]), accuracy metric ([`compute_accuracy`]) and model-card tags.
[`~trl_erprm.ERPRMTrainer`] subclasses it to train on soft labels.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import transformers
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from datasets import Dataset
from packaging.version import Version
from transformers import (
    DataCollator,
    DataCollatorForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from transformers.trainer_utils import EvalPrediction
from transformers.utils import is_peft_available
from trl.trainer.utils import disable_dropout_in_model

from .._compat import (
    BaseTrainer,
    ModelCardOnCheckpointMixin,
    enable_activation_checkpointing,
    turn_off_activation_checkpointing,
)
from ..data.stepwise import (
    check_hard_labels,
    check_labelled_rows,
    map_stepwise_dataset,
    tokenize_stepwise_row,
    tokenize_train_and_eval,
)
from ..model_card import PRMModelCardMixin, token_classification_snippets
from .prm_config import PRMConfig


if is_peft_available():
    from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training


__all__ = ["PRMTrainer", "compute_accuracy", "prepare_peft_model"]

logger = get_logger(__name__)

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


def compute_accuracy(eval_pred: EvalPrediction | tuple) -> dict[str, float]:
    """Accuracy of a PRM, exactly as TRL 1.13's PRMTrainer reports it.

    For token-classification predictions of shape `(batch, seq_len, num_labels)`: argmax against the label at every
    labelled position (label `!= -100`). For pairwise predictions of shape `(batch, 2)`: how often the first score
    wins; ties are left out with a warning.

    Args:
        eval_pred ([`~transformers.trainer_utils.EvalPrediction`] or `tuple`):
            `(predictions, labels)` gathered by the evaluation loop, as an `EvalPrediction` (also one carrying
            `inputs` or `losses`) or a plain tuple; predictions that are a tuple of arrays (models with several
            outputs) are read from their first element. Every input TRL's function accepts gives its result.

    Returns:
        `dict[str, float]`: `{"accuracy": ...}` (`nan` when nothing is labelled).
    """
    predictions, labels = eval_pred[0], eval_pred[1]
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == 3:
        keep = labels != -100
        predictions, labels = predictions.argmax(-1)[keep], labels[keep]
    else:
        equal = predictions[:, 0] == predictions[:, 1]
        if equal.any():
            PartialState()  # the accelerate logger needs an initialised state
            logger.warning(
                f"There are {int(equal.sum())} out of {len(predictions)} instances where the predictions for both "
                "options are equal. These instances are ignored in the accuracy computation."
            )
        predictions, labels = predictions[~equal].argmax(1), labels[~equal]
    hits = np.asarray(predictions == labels, dtype=float)
    return {"accuracy": hits.mean().item() if hits.size else float("nan")}


def _enable_gradient_checkpointing(model: nn.Module, gradient_checkpointing_kwargs: dict | None) -> nn.Module:
    """TRL's `enable_gradient_checkpointing`: default checkpointing on the (base) model; input gradients only for the
    reentrant variant (the default unless `use_reentrant=False` is given), which needs them for adapters to train."""
    enable_activation_checkpointing(model.base_model if is_peft_model(model) else model)
    if (gradient_checkpointing_kwargs or {}).get("use_reentrant", True):
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        else:

            def make_inputs_require_grad(module, input, output):
                output.requires_grad_(True)

            model.get_input_embeddings().register_forward_hook(make_inputs_require_grad)
    return model


def prepare_peft_model(model: PreTrainedModel, peft_config: PeftConfig | None, args: PRMConfig) -> nn.Module:
    """Prepare a model for (Q)LoRA training exactly as TRL 1.13's PRMTrainer does (`trl.experimental.utils`).

    - A quantized (4/8-bit) model that is not sharded (FSDP / ZeRO-3 keep 4-bit weights on CPU or meta) and not yet a
      `PeftModel` goes through `peft.prepare_model_for_kbit_training`, which also enables gradient checkpointing, so
      checkpointing is then turned off in `args`.
    - Otherwise, with `args.gradient_checkpointing`, checkpointing is enabled on the model (on its base model for a
      `PeftModel`) with default settings, and input gradients are enabled unless `use_reentrant=False`.
    - The adapter is added (`autocast_adapter_dtype=False` for sharded 4-bit models); with `args.bf16`, the remaining
      float32 parameters of a 4-bit model (adapters, norms) are cast to bfloat16.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The base model, or a `PeftModel` (then `peft_config` must be `None`).
        peft_config (`peft.PeftConfig` or `None`):
            The adapter configuration.
        args ([`PRMConfig`]):
            Training arguments (`gradient_checkpointing`, `gradient_checkpointing_kwargs`, `bf16`).

    Returns:
        `torch.nn.Module`: The model to train.

    Raises:
        `ImportError`: Without `peft`. `ValueError`: For a `PeftModel` together with a `peft_config`.
    """
    if not is_peft_available():
        raise ImportError("PEFT training needs the `peft` package: `pip install peft`.")
    if isinstance(model, PeftModel) and peft_config is not None:
        raise ValueError(
            "You passed a PeftModel together with a peft_config. Merge and unload the existing adapter first, or pass "
            "peft_config=None to keep training the existing adapter."
        )
    is_4bit = getattr(model, "is_loaded_in_4bit", False)
    is_qlora = is_4bit or getattr(model, "is_loaded_in_8bit", False)
    is_sharded_qlora = False
    if is_4bit:  # FSDP / DeepSpeed ZeRO-3 keep the 4-bit weights on CPU or meta
        for _, param in model.named_parameters():
            if param.__class__.__name__ == "Params4bit":
                is_sharded_qlora = param.data.device.type in {"cpu", "meta"}
                break
    if is_qlora and not is_sharded_qlora and not isinstance(model, PeftModel):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {},
        )
        turn_off_activation_checkpointing(args)  # prepare_model_for_kbit_training enabled it
    elif args.gradient_checkpointing:
        model = _enable_gradient_checkpointing(model, args.gradient_checkpointing_kwargs)
    if peft_config is not None:
        if getattr(model, "is_loaded_in_4bit", False) and is_sharded_qlora:
            model = get_peft_model(model, peft_config, autocast_adapter_dtype=False)
        else:
            model = get_peft_model(model, peft_config)
    if args.bf16 and getattr(model, "is_loaded_in_4bit", False) and not is_sharded_qlora:
        for param in model.parameters():  # a uniform dtype, as FSDP requires
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    return model


class PRMTrainer(PRMModelCardMixin, ModelCardOnCheckpointMixin, BaseTrainer):
    """Trainer for token-classification process reward models on stepwise supervision.

    A drop-in for `trl.experimental.prm.PRMTrainer` of TRL 1.13 (the last TRL with it), used on every TRL version:
    same arguments, same behaviour. A TRL 1.13 PRM script runs by changing only its import to `trl_erprm`. Beyond
    TRL's class: a `None` or NaN label is an error naming its row (TRL crashes inside `datasets.map`), rows that
    truncation leaves without a label are counted in a warning (an error when no training row keeps one), the saved
    folder holds `prm_config.json` (the step separator, read by the scorers) and the model card says how to score
    steps with the PRM. LM-head PRMs are trained by [`~trl_erprm.ERPRMTrainer`] (`head="lm"`), not by this class,
    which mirrors TRL's.

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
    _pipeline_tag = "token-classification"

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
        if peft_config is not None or is_peft_model(model):
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
                check_hard_labels(dataset, name)
                tokenized = map_stepwise_dataset(dataset, self.tokenize_row, processing_class, args, is_eval, name)
                check_labelled_rows(tokenized, name, args.max_length, require_labels=not is_eval)
                return tokenized

            train_dataset, eval_dataset = tokenize_train_and_eval(train_dataset, eval_dataset, tokenize)

        # As TRL 1.13: transformers < 5 defaults to the reentrant variant, which PyTorch no longer recommends.
        if args.gradient_checkpointing and Version(transformers.__version__) < Version("5.0.0"):
            args.gradient_checkpointing_kwargs = args.gradient_checkpointing_kwargs or {}
            args.gradient_checkpointing_kwargs.setdefault("use_reentrant", False)

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
        """Tokenize a stepwise row with integer labels, as TRL 1.13 does (layout: [`~trl_erprm.data.tokenize_stepwise_row`]).

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

    def saved_prm_config(self) -> dict:
        """How this PRM reads steps, written to `prm_config.json` with every saved model (`save_model`).

        Returns:
            `dict`: `head`, `step_separator`, `max_length` and the trainer's name (see
            [`~trl_erprm.models.save_prm_config`]).
        """
        return {
            "head": "token_classification",
            "step_separator": self.args.step_separator,
            "max_length": self.args.max_length,
            "trainer": type(self).__name__,
        }

    def card_summary(self) -> tuple[str, list[tuple[str, str]]]:
        """The card's summary of a token-classification PRM (see [`~trl_erprm.model_card.PRMModelCardMixin`]).

        Returns:
            `tuple[str, list[tuple[str, str]]]`: The summary and the facts about its head and step layout.
        """
        summary = (
            "A process reward model (PRM): a token classifier with 2 labels that gives every step of a solution the "
            "probability that the step is correct (class 1). It was trained on stepwise supervision (a prompt, its "
            "steps and one label per step)."
        )
        separator = self.args.step_separator
        return summary, [
            ("Head", "token classification, 2 labels (class 1 = good step)"),
            (
                "Step layout",
                f"each step tokenized on its own and followed by the separator `{separator!r}`; a step's score sits "
                "on the last token of step + separator (recorded in `prm_config.json`)",
            ),
        ]

    def card_snippets(self, location: str) -> list[tuple[str, str]]:
        """Scoring snippets of the saved token-classification PRM.

        Args:
            location (`str`):
                The PRM's Hub id or folder.

        Returns:
            `list[tuple[str, str]]`: trl-erprm's scorer, then a plain transformers forward pass.
        """
        return token_classification_snippets(location, self.args.step_separator, is_peft_model(self.model))
