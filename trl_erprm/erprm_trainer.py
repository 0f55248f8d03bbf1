"""[`ERPRMTrainer`]: a PRMTrainer that trains on soft, entropy-regularized step labels (ER-PRM, arXiv:2412.11006).

TRL's PRMTrainer turns soft labels into 0 in three places (`int(label)` in `tokenize_row`, `int64` dataset features,
`DataCollatorForTokenClassification`'s int64 tensors) and scores them with an argmax accuracy. This trainer keeps
labels as floats end to end, trains with the two-class soft cross-entropy of `functional.soft_cross_entropy`, reports
metrics that mean something for soft labels, and can compute labels at batch time from stored rollout outcomes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from datasets import Dataset, features
from transformers import DataCollator, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_utils import EvalPrediction
from transformers.utils import logging

from ._compat import KeepColumnsMixin
from .data.stepwise import (
    ERPRMDataCollator,
    map_stepwise_dataset,
    tokenize_stepwise_row,
    tokenize_train_and_eval,
    validate_stepwise_dataset,
)
from .erprm_config import ERPRMConfig
from .functional import er_label, soft_cross_entropy
from .models import load_model, load_tokenizer
from .prm.prm_trainer import PRMTrainer


__all__ = ["ERPRMTrainer", "compute_soft_metrics"]

logger = logging.get_logger(__name__)

ER_PRM_PAPER = {
    "title": "Entropy-Regularized Process Reward Model",
    "id": "2412.11006",
    "citation": textwrap.dedent("""\
        @misc{zhang2024entropyregularizedprocessrewardmodel,
            title        = {{Entropy-Regularized Process Reward Model}},
            author       = {Hanning Zhang and Pengcheng Wang and Shizhe Diao and Yong Lin and Rui Pan and Hanze Dong and Dylan Zhang and Pavlo Molchanov and Tong Zhang},
            year         = 2024,
            eprint       = {2412.11006},
            archivePrefix= {arXiv},
            primaryClass = {cs.LG}
        }"""),
}


def compute_soft_metrics(eval_pred: EvalPrediction, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of a PRM against soft step labels, over the labelled positions.

    - `accuracy`: agreement of `p >= threshold` with `label >= threshold` (the rounded label);
    - `precision` / `recall` / `f1` of the "good step" decision against the rounded label;
    - `mae`: mean absolute error `|p - label|`; `brier`: mean squared error `(p - label)^2`;
    - `label_mean` / `prob_mean`: how optimistic the labels and the model are.

    Here `p = softmax(logits)[..., 1]` is the predicted probability that the step is good.

    Args:
        eval_pred ([`~transformers.trainer_utils.EvalPrediction`]):
            Predictions (logits `(batch, seq_len, 2)` or probabilities `(batch, seq_len)`) and labels
            `(batch, seq_len)` with `-100` where unlabelled.
        threshold (`float`, *optional*, defaults to `0.5`):
            Decision threshold on labels and probabilities.

    Returns:
        `dict[str, float]`: The metrics above.
    """
    predictions, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids, dtype=np.float64)
    if isinstance(eval_pred.predictions, tuple):
        predictions = np.asarray(eval_pred.predictions[0])
    if predictions.ndim == labels.ndim + 1:
        logits = predictions.astype(np.float64)
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits[..., 1]) / np.exp(logits).sum(-1)
    else:
        probs = predictions.astype(np.float64)
    keep = labels != -100
    p, v = probs[keep], labels[keep]
    if p.size == 0:
        return {"accuracy": float("nan"), "mae": float("nan"), "brier": float("nan")}
    pred_good, label_good = p >= threshold, v >= threshold
    tp = float(np.sum(pred_good & label_good))
    precision = tp / max(float(pred_good.sum()), 1.0)
    recall = tp / max(float(label_good.sum()), 1.0)
    return {
        "accuracy": float(np.mean(pred_good == label_good)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "mae": float(np.mean(np.abs(p - v))),
        "brier": float(np.mean((p - v) ** 2)),
        "label_mean": float(np.mean(v)),
        "prob_mean": float(np.mean(p)),
    }


class ERPRMTrainer(KeepColumnsMixin, PRMTrainer):
    """Trainer for ER-PRM: a token-classification PRM trained on soft step labels.

    A subclass of [`PRMTrainer`] (trl-erprm's drop-in for TRL 1.13's, on every TRL version), with the same arguments. Datasets use TRL's stepwise-supervision format, with float labels in [0, 1]
    (`{"prompt": str, "completions": [step, ...], "labels": [0.7, 0.25, ...]}`), or with the rollout outcomes of each
    step (`step_outcomes`, from [`ERPRMLabeler`]) and `args.eta`, in which case labels are computed at batch time.
    Each step's label sits on the last token of step + `step_separator`; the loss is the two-class soft
    cross-entropy against `[1 - v, v]`, averaged over labelled tokens.

    Args:
        model ([`~transformers.PreTrainedModel`], `torch.nn.Module` or `str`):
            The model to train (an `AutoModelForTokenClassification` with 2 labels), or a path / Hub id loaded with
            [`~trl_erprm.models.load_model`]`(model, "token_classification", num_labels=2, **args.model_init_kwargs)`
            (safetensors only, no remote code unless set there).
        args ([`ERPRMConfig`], *optional*):
            Training arguments. Defaults to `ERPRMConfig(output_dir="erprm-output")`.
        data_collator ([`~transformers.DataCollator`], *optional*):
            Defaults to [`ERPRMDataCollator`] (float labels; labels from outcomes when `args.eta` is set).
        train_dataset ([`~datasets.Dataset`]):
            Stepwise rows, validated before training (see [`validate_stepwise_dataset`]).
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Evaluation rows, tokenized like the training rows (every step labelled).
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The tokenizer. Loaded from `model` when `model` is a path.
        model_init (`Callable[[], PreTrainedModel]`, *optional*):
            Model initializer, as in [`~transformers.Trainer`].
        compute_metrics (`Callable[[EvalPrediction], dict]`, *optional*, defaults to [`compute_soft_metrics`]):
            Evaluation metrics.
        callbacks (`list[TrainerCallback]`, *optional*):
            Training callbacks.
        optimizers (`tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]`, *optional*, defaults to `(None, None)`):
            Optimizer and scheduler.
        preprocess_logits_for_metrics (`Callable[[torch.Tensor, torch.Tensor], torch.Tensor]`, *optional*):
            Applied to the logits before they are gathered for `compute_metrics`.
        peft_config (`peft.PeftConfig`, *optional*):
            PEFT configuration (e.g. `LoraConfig(task_type="TOKEN_CLS")`); the model is wrapped as TRL does,
            including k-bit preparation of quantized models.
    """

    _tag_names = ["trl", "prm", "er-prm"]
    _name = "ER-PRM"
    _paper = ER_PRM_PAPER

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | None = None,
        args: ERPRMConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR] = (None, None),
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        peft_config=None,
    ):
        if args is None:
            args = ERPRMConfig(output_dir="erprm-output")
        if not isinstance(args, ERPRMConfig):
            raise TypeError(f"args must be an ERPRMConfig, got {type(args).__name__}; ERPRMConfig takes every field.")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if isinstance(model, str):
            init_kwargs = {**(args.model_init_kwargs or {}), "num_labels": 2}
            if processing_class is None:
                processing_class = load_tokenizer(model, trust_remote_code=init_kwargs.get("trust_remote_code", False))
            model = load_model(model, "token_classification", **init_kwargs)
        if processing_class is None:
            raise ValueError("ERPRMTrainer needs `processing_class` (the tokenizer) to tokenize the datasets.")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token

        column = args.outcomes_column
        use_outcomes = column in train_dataset.column_names
        if "input_ids" not in train_dataset.column_names:

            def tokenize(dataset: Dataset, is_eval: bool, name: str) -> Dataset:
                return self._tokenize_soft(dataset, processing_class, args, is_eval, name)

            train_dataset, eval_dataset = tokenize_train_and_eval(train_dataset, eval_dataset, tokenize)

        if use_outcomes:
            logger.info(f"Step labels are computed at batch time from '{column}' with eta={args.eta}.")
        if data_collator is None:
            data_collator = ERPRMDataCollator(
                processing_class, eta=args.eta if use_outcomes else None, outcomes_column=column
            )
        if compute_metrics is None:

            def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
                return compute_soft_metrics(eval_pred, threshold=args.label_threshold)

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
            peft_config=peft_config,
        )

    @staticmethod
    def tokenize_row(
        features: dict[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        step_separator: str,
        max_length: int | None,
        max_completion_length: int | None,
        train_on_last_step_only: bool,
        is_eval: bool,
        eta: float | None = None,
        outcomes_column: str = "step_outcomes",
    ) -> dict[str, Any]:
        """Tokenize a stepwise row keeping float labels (same layout as TRL's PRMTrainer).

        Args:
            features (`dict[str, Any]`):
                Row with `"prompt"`, `"completions"`, and `"labels"` and/or the outcomes column.
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
            eta (`float` or `None`, *optional*, defaults to `None`):
                Used to compute labels from outcomes when the row has no `labels`.
            outcomes_column (`str`, *optional*, defaults to `"step_outcomes"`):
                Name of the outcomes column.

        Returns:
            `dict[str, Any]`: `input_ids`, float `labels` (`-100` where unlabelled) and, when the row has outcomes,
            the outcomes of the labelled steps that survived truncation, in position order.
        """
        outcomes = features.get(outcomes_column)
        if features.get("labels") is None:
            features = {**features, "labels": [er_label(rewards, eta) for rewards in outcomes]}
        input_ids, labels, kept = tokenize_stepwise_row(
            features,
            tokenizer,
            step_separator,
            max_length,
            max_completion_length,
            train_on_last_step_only,
            is_eval,
            label_type=float,
        )
        row = {"input_ids": input_ids, "labels": labels}
        if outcomes is not None:
            row[outcomes_column] = [[float(r) for r in outcomes[k]] for k in kept]
        return row

    @classmethod
    def _tokenize_soft(cls, dataset: Dataset, tokenizer, args: ERPRMConfig, is_eval: bool, name: str) -> Dataset:
        validate_stepwise_dataset(dataset, args.step_separator, args.outcomes_column, name=name)
        column = args.outcomes_column
        has_outcomes = column in dataset.column_names
        return map_stepwise_dataset(
            dataset,
            cls.tokenize_row,
            tokenizer,
            args,
            is_eval,
            f"{name} (soft labels)",
            label_dtype="float32",
            extra_kwargs={"eta": args.eta, "outcomes_column": column},
            extra_features={column: features.Sequence(features.Sequence(features.Value("float32")))}
            if has_outcomes
            else None,
        )

    def keep_columns(self) -> list[str]:
        """The rollout-outcomes column, which the collator reads to compute labels at batch time.

        Returns:
            `list[str]`: `[args.outcomes_column]`.
        """
        return [self.args.outcomes_column]

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """Soft two-class cross-entropy at the labelled positions.

        The loss is the sum of [`soft_cross_entropy`] over labelled tokens divided by their number: the tokens of this
        batch, or `num_items_in_batch` (all labelled tokens of the gradient-accumulation window across processes)
        when the Trainer provides it, which makes gradient accumulation and data parallelism exact.

        Args:
            model (`torch.nn.Module`):
                The model.
            inputs (`dict[str, torch.Tensor]`):
                A batch from [`ERPRMDataCollator`]; `labels` is `(batch, seq_len)` float with `-100` elsewhere.
            return_outputs (`bool`, *optional*, defaults to `False`):
                Whether to return the model outputs too.
            num_items_in_batch (`torch.Tensor` or `int`, *optional*):
                Number of labelled tokens in the whole accumulation window, from the Trainer.

        Returns:
            The loss, or `(loss, outputs)` when `return_outputs` is set.
        """
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", self.args.outcomes_column)}
        outputs = model(**model_inputs)
        per_token = soft_cross_entropy(outputs.logits, labels)
        if num_items_in_batch is not None:
            loss = per_token.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * self.accelerator.num_processes
        else:
            loss = per_token.sum() / (labels != -100).sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss
