"""[`ERPRMTrainer`]: a PRMTrainer that trains on soft, entropy-regularized step labels (ER-PRM, arXiv:2412.11006).

TRL's PRMTrainer turns soft labels into 0 in three places (`int(label)` in `tokenize_row`, `int64` dataset features,
`DataCollatorForTokenClassification`'s int64 tensors) and scores them with an argmax accuracy. This trainer keeps
labels as floats end to end, trains with the two-class soft cross-entropy of `functional.soft_cross_entropy`, reports
metrics that mean something for soft labels, and can compute labels at batch time from stored rollout outcomes.

Both PRM conventions train here (`ERPRMConfig.head`): a token-classification head (TRL's layout) or an LM head that
reads a "good" and a "bad" token at the tag after every step (Math-Shepherd / ER-PRM's released models), which can
start from a policy's own LM head.
"""

from __future__ import annotations

import json
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
from .data.lm_head import lm_head_candidate_ids, tokenize_lm_head_row
from .data.stepwise import (
    ERPRMDataCollator,
    check_labelled_rows,
    drop_failed_rows,
    map_stepwise_dataset,
    tokenize_stepwise_row,
    tokenize_train_and_eval,
    validate_stepwise_dataset,
)
from .erprm_config import ERPRMConfig
from .functional import er_label, lm_head_soft_cross_entropy, resolve_eta, soft_cross_entropy, two_token_logits
from .model_card import lm_head_snippets
from .models import load_model, load_tokenizer
from .prm.prm_trainer import PRMTrainer
from .steps import StepFormat


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


def compute_soft_metrics(eval_pred: EvalPrediction | tuple, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of a PRM against soft step labels, over the labelled positions.

    - `accuracy`: agreement of `p >= threshold` with `label >= threshold` (the rounded label);
    - `precision` / `recall` / `f1` of the "good step" decision against the rounded label;
    - `mae`: mean absolute error `|p - label|`; `brier`: mean squared error `(p - label)^2`;
    - `label_mean` / `prob_mean`: how optimistic the labels and the model are.

    Here `p = softmax(logits)[..., 1]` is the predicted probability that the step is good.

    Args:
        eval_pred ([`~transformers.trainer_utils.EvalPrediction`] or `tuple`):
            Predictions (logits `(batch, seq_len, 2)` or probabilities `(batch, seq_len)`; a tuple of arrays, as
            models with several outputs give, is read from its first element) and labels `(batch, seq_len)` with
            `-100` where unlabelled, as an `EvalPrediction` or a plain `(predictions, labels)` tuple.
        threshold (`float`, *optional*, defaults to `0.5`):
            Decision threshold on labels and probabilities.

    Returns:
        `dict[str, float]`: The metrics above.
    """
    predictions, labels = eval_pred[0], eval_pred[1]
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions, labels = np.asarray(predictions), np.asarray(labels, dtype=np.float64)
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


def _warn_if_stored_labels_differ(dataset: Dataset, eta: float, column: str, num_rows: int = 8) -> None:
    """Warn (once per trainer) when the stored `labels` of rows that also carry outcomes are not the labels at `eta`: the trainer
    recomputes them from the outcomes at `eta`, so labels made at another eta (e.g. `--eta 2` in the labeler) would be
    replaced in silence. Reads the eta the labeler recorded in `dataset.info.description`, else compares the first
    `num_rows` rows (cheap on a dataset of any size)."""
    if "labels" not in dataset.column_names:
        return
    fix = (
        f"Set ERPRMConfig.eta (--eta) to the eta of the stored labels, or drop the '{column}' column "
        f"(`dataset.remove_columns('{column}')`) to train on the stored labels."
    )
    try:
        recorded = json.loads(dataset.info.description or "{}")["erprm_labeling"]["eta"]
    except (ValueError, TypeError, KeyError):
        recorded = None
    if recorded is not None:
        if resolve_eta(recorded) != eta:
            logger.warning(
                f"The dataset's 'labels' were computed by the labeler at eta={recorded}, but ERPRMTrainer recomputes "
                f"the labels from '{column}' at ERPRMConfig.eta={eta} and trains on those. {fix}"
            )
        return
    rows = dataset.select(range(min(num_rows, len(dataset)))).select_columns(["labels", column])
    for i, row in enumerate(rows):
        labels, outcomes = row["labels"], row[column]
        if not isinstance(labels, list) or not isinstance(outcomes, list) or len(labels) != len(outcomes):
            continue  # validate_stepwise_dataset names the row
        for k, (label, rewards) in enumerate(zip(labels, outcomes)):
            try:
                recomputed = float(er_label(np.asarray(rewards, dtype=np.float64), eta))
                if abs(float(label) - recomputed) <= 1e-4 + 1e-4 * abs(recomputed):
                    continue
            except (TypeError, ValueError):
                continue  # a bad value: validate_stepwise_dataset names it
            logger.warning(
                f"Row {i} step {k}: the stored label {float(label):.4g} is not the label at ERPRMConfig.eta={eta} "
                f"({recomputed:.4g}) that ERPRMTrainer recomputes from '{column}' and trains on: the stored labels "
                f"were made at another eta. {fix}"
            )
            return


class ERPRMTrainer(KeepColumnsMixin, PRMTrainer):
    """Trainer for ER-PRM: a PRM trained on soft step labels, with a token-classification head or an LM head.

    A subclass of [`PRMTrainer`] (trl-erprm's drop-in for TRL 1.13's, on every TRL version), with the same arguments.
    Datasets use TRL's stepwise-supervision format, with float labels in [0, 1]
    (`{"prompt": str, "completions": [step, ...], "labels": [0.7, 0.25, ...]}`), or with the rollout outcomes of each
    step (`step_outcomes`, from [`ERPRMLabeler`]) and `args.eta`, in which case labels are computed at batch time.

    - `args.head="token_classification"` (default): each step's label sits on the last token of step +
      `step_separator`; the loss is the two-class soft cross-entropy against `[1 - v, v]`.
    - `args.head="lm"`: the text is `prompt + prompt_separator + step_1 + step_tag + step_separator + ...`
      ([`~trl_erprm.data.tokenize_lm_head_row`]); at the token of each tag the loss is the soft cross-entropy over
      the logits of `good_token` and `bad_token` against `[v, 1 - v]` ([`~trl_erprm.functional.lm_head_soft_cross_entropy`]);
      every other logit and position is ignored.

    Either way the loss is averaged over labelled positions (of the whole accumulation window when the Trainer counts
    them), labels are never rounded, the metrics are [`compute_soft_metrics`], and the saved folder holds
    `prm_config.json` so that [`~trl_erprm.evaluation.scorers.load_scorer`] loads the PRM with no flag.

    Args:
        model ([`~transformers.PreTrainedModel`], `torch.nn.Module` or `str`):
            The model to train: an `AutoModelForTokenClassification` with 2 labels (`head="token_classification"`) or
            an `AutoModelForCausalLM` (`head="lm"`, e.g. a policy's folder), or a path / Hub id loaded with
            [`~trl_erprm.models.load_model`] (`num_labels=2` for a token classifier; `args.model_init_kwargs`;
            safetensors only, no remote code unless set there).
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
            PEFT configuration (`LoraConfig(task_type="TOKEN_CLS")`, or `task_type="CAUSAL_LM"` for `head="lm"`); the
            model is wrapped as TRL does, including k-bit preparation of quantized models.

    Raises:
        `ValueError`: For a model of the other head, candidate tokens that are not single tokens, bad rows (naming
        the row and field), rows whose labeler `status` is not `"ok"` (unless `args.skip_failed_rows`), or a
        training set where no row keeps a labelled step after truncation.
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
        is_lm = args.head == "lm"
        if isinstance(model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            if not is_lm:
                init_kwargs["num_labels"] = 2
            if processing_class is None:
                processing_class = load_tokenizer(model, trust_remote_code=init_kwargs.get("trust_remote_code", False))
            model = load_model(model, "causal_lm" if is_lm else "token_classification", **init_kwargs)
        if model is not None:
            _check_head(model, args.head)
        if processing_class is None:
            raise ValueError("ERPRMTrainer needs `processing_class` (the tokenizer) to tokenize the datasets.")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.good_token_id = self.bad_token_id = None
        if is_lm:
            if not getattr(processing_class, "is_fast", False):
                raise ValueError("head='lm' needs a fast tokenizer: step tags are located with offset mappings.")
            self.good_token_id, self.bad_token_id = lm_head_candidate_ids(
                processing_class, args.good_token, args.bad_token
            )
            self._pipeline_tag = None
            if preprocess_logits_for_metrics is None:
                preprocess_logits_for_metrics = self._two_class_logits
        if args.skip_failed_rows:
            train_dataset = drop_failed_rows(train_dataset, "train")
            if isinstance(eval_dataset, dict):
                eval_dataset = {key: drop_failed_rows(ds, f"eval ({key})") for key, ds in eval_dataset.items()}
            elif eval_dataset is not None:
                eval_dataset = drop_failed_rows(eval_dataset, "eval")

        column = args.outcomes_column
        use_outcomes = column in train_dataset.column_names
        if "input_ids" not in train_dataset.column_names:
            if use_outcomes:  # stored step labels (not token labels yet) that the outcomes would replace
                _warn_if_stored_labels_differ(train_dataset, args.eta, column)

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
        step_tag: str = "",
        prompt_separator: str = " ",
    ) -> dict[str, Any]:
        """Tokenize a stepwise row keeping float labels: TRL's PRMTrainer layout, or the LM-head layout with a tag.

        Args:
            features (`dict[str, Any]`):
                Row with `"prompt"`, `"completions"`, and `"labels"` and/or the outcomes column.
            tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
                Tokenizer of the model.
            step_separator (`str`):
                The text that ends a step (after the tag for the LM-head layout).
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
            step_tag (`str`, *optional*, defaults to `""`):
                `""`: TRL's token-classification layout ([`~trl_erprm.data.tokenize_stepwise_row`]). A tag: the
                LM-head layout ([`~trl_erprm.data.tokenize_lm_head_row`]), each label on the token of its tag.
            prompt_separator (`str`, *optional*, defaults to `" "`):
                LM-head layout: the text between the prompt and the first step.

        Returns:
            `dict[str, Any]`: `input_ids`, float `labels` (`-100` where unlabelled) and, when the row has outcomes,
            the outcomes of the labelled steps that survived truncation, in position order.
        """
        outcomes = features.get(outcomes_column)
        if features.get("labels") is None:
            features = {**features, "labels": [er_label(rewards, eta) for rewards in outcomes]}
        if step_tag:
            features = {**features, "labels": [float(label) for label in features["labels"]]}
            input_ids, labels, kept = tokenize_lm_head_row(
                features,
                tokenizer,
                StepFormat(step_separator, tag=step_tag),
                prompt_separator,
                max_length,
                max_completion_length,
                train_on_last_step_only,
                is_eval,
            )
        else:
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
        step_tag = args.step_tag if args.head == "lm" else ""
        validate_stepwise_dataset(dataset, args.step_separator, args.outcomes_column, name=name, step_tag=step_tag)
        column = args.outcomes_column
        has_outcomes = column in dataset.column_names
        extra_kwargs = {"eta": args.eta, "outcomes_column": column}
        if args.head == "lm":
            extra_kwargs.update(step_tag=args.step_tag, prompt_separator=args.prompt_separator)
        tokenized = map_stepwise_dataset(
            dataset,
            cls.tokenize_row,
            tokenizer,
            args,
            is_eval,
            f"{name} (soft labels)",
            label_dtype="float32",
            extra_kwargs=extra_kwargs,
            extra_features={column: features.Sequence(features.Sequence(features.Value("float32")))}
            if has_outcomes
            else None,
        )
        check_labelled_rows(tokenized, name, args.max_length, require_labels=not is_eval)
        return tokenized

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

        The loss is the sum over labelled tokens of [`soft_cross_entropy`] (token classification) or
        [`~trl_erprm.functional.lm_head_soft_cross_entropy`] (LM head, over the two candidate logits) divided by their
        number: the tokens of this batch, or `num_items_in_batch` (all labelled tokens of the gradient-accumulation
        window across processes) when the Trainer provides it, which makes gradient accumulation and data parallelism
        exact. For a causal LM the Trainer counts `labels[..., 1:]`; a step label is never on the first token (the
        prompt comes first), so the count is the same.

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
        if self.args.head == "lm":
            outputs = model(**model_inputs, use_cache=False)
            per_token = lm_head_soft_cross_entropy(outputs.logits, labels, self.good_token_id, self.bad_token_id)
        else:
            outputs = model(**model_inputs)
            per_token = soft_cross_entropy(outputs.logits, labels)
        if num_items_in_batch is not None:
            loss = per_token.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * self.accelerator.num_processes
        else:
            loss = per_token.sum() / (labels != -100).sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss

    def _two_class_logits(self, logits, labels):
        """`preprocess_logits_for_metrics` of the LM head: keep the two candidate logits `(B, T, 2)`, `[bad, good]`."""
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return two_token_logits(logits, self.good_token_id, self.bad_token_id)

    def saved_prm_config(self) -> dict:
        """How this PRM reads steps, written to `prm_config.json` with every saved model.

        Returns:
            `dict`: `head`, `step_separator`, `max_length`, the trainer's name and, for `head="lm"`, `step_tag`,
            `good_token`, `bad_token` and `prompt_separator` (see [`~trl_erprm.models.save_prm_config`]).
        """
        config = super().saved_prm_config()
        if self.args.head == "lm":
            args = self.args
            config.update(
                head="lm",
                step_tag=args.step_tag,
                good_token=args.good_token,
                bad_token=args.bad_token,
                prompt_separator=args.prompt_separator,
            )
        return config

    def card_summary(self) -> tuple[str, list[tuple[str, str]]]:
        """The card's summary: the PRM's head, step layout and labels.

        Returns:
            `tuple[str, list[tuple[str, str]]]`: The summary and the facts.
        """
        labels = (
            f"soft step labels in [0, 1]; from rollout outcomes, `er_label(outcomes, eta={self.args.eta})` "
            "(ER-PRM eq. 1: eta = 0 soft, inf hard)"
        )
        if self.args.head != "lm":
            summary, facts = super().card_summary()
            summary += " The labels were soft (entropy-regularized, ER-PRM) and the loss a soft cross-entropy."
            return summary, [*facts, ("Labels", labels)]
        args = self.args
        summary = (
            "A process reward model (PRM) with an LM head: a causal language model that reads, at the tag written "
            'after every step, the logits of a "good" and a "bad" token; the probability that the step is '
            "correct is `softmax([l_good, l_bad])[0]` (Math-Shepherd / ER-PRM convention). It was trained with a soft "
            "two-class cross-entropy on those two logits (ER-PRM)."
        )
        layout = (
            f"`prompt + {args.prompt_separator!r} + step_1 + {args.step_tag!r} + {args.step_separator!r} + step_2 + "
            f"{args.step_tag!r} ...`; a step's score is read on the token holding the last character of its tag "
            "(recorded in `prm_config.json`)"
        )
        return summary, [
            ("Head", f"LM head, candidates good = `{args.good_token!r}`, bad = `{args.bad_token!r}`"),
            ("Step layout", layout),
            ("Labels", labels),
        ]

    def card_snippets(self, location: str) -> list[tuple[str, str]]:
        """Scoring snippets of the saved PRM, for its head.

        Args:
            location (`str`):
                The PRM's Hub id or folder.

        Returns:
            `list[tuple[str, str]]`: trl-erprm's scorer, then a plain transformers forward pass.
        """
        if self.args.head != "lm":
            return super().card_snippets(location)
        args = self.args
        is_adapter = hasattr(self.model, "get_base_model")
        return lm_head_snippets(
            location,
            args.step_separator,
            args.step_tag,
            args.good_token,
            args.bad_token,
            args.prompt_separator,
            is_adapter,
        )


def _check_head(model: nn.Module, head: str) -> None:
    """Refuse a model of the other PRM convention before any tokenization."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    has_lm_head = callable(getattr(base, "get_output_embeddings", None)) and base.get_output_embeddings() is not None
    if head == "lm" and not has_lm_head:
        raise ValueError(
            f"head='lm' needs a causal LM (AutoModelForCausalLM), got a {name} without an LM head. Pass the policy's "
            "folder or an AutoModelForCausalLM, or use head='token_classification' for this model."
        )
    if head == "token_classification" and has_lm_head:
        raise ValueError(
            f"head='token_classification' needs an AutoModelForTokenClassification with 2 labels, got a {name} with an "
            "LM head: use ERPRMConfig(head='lm') to train it as an LM-head PRM."
        )
