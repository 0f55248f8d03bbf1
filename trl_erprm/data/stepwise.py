"""Stepwise-supervision data for token-classification PRMs: validation, tokenization, collation.

Rows are TRL's stepwise-supervision format, `{"prompt": str, "completions": [step, ...], "labels": [...]}`, with
labels in [0, 1] (soft labels allowed) and/or the rollout outcomes of each step (`step_outcomes`, from the labeler).
The layout is TRL 1.13's `PRMTrainer.tokenize_row` exactly ([`tokenize_stepwise_row`]); [`ERPRMDataCollator`] keeps
labels as floats and can compute them at batch time from the outcomes. Used by [`~trl_erprm.PRMTrainer`],
[`~trl_erprm.ERPRMTrainer`], the labeler's collator and the token-classification scorer.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset, features
from transformers import PreTrainedTokenizerBase

from ..functional import er_label, resolve_eta
from ..steps import StepFormat


#: Column of the labeler's output that says whether a row was labelled (`"ok"`) or why not.
STATUS_COLUMN = "status"

__all__ = [
    "STATUS_COLUMN",
    "ERPRMDataCollator",
    "check_hard_labels",
    "binary_value",
    "check_labelled_rows",
    "drop_failed_rows",
    "map_stepwise_dataset",
    "tokenize_stepwise_row",
    "tokenize_train_and_eval",
    "validate_stepwise_dataset",
]


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
    is tokenized separately and followed by the separator ids ([`StepFormat.tokenize_steps`]); the step's label sits
    on the last token of
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
    steps_ids = StepFormat(step_separator).tokenize_steps(tokenizer, features["completions"])
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
    args: Any,
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
        args ([`~trl_erprm.PRMConfig`] or any config with the same fields):
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


def _is_blank(text: str, separator: str) -> bool:
    stripped = text.strip()
    if separator.strip():
        stripped = stripped.replace(separator.strip(), "").strip()
    return not stripped


def _is_real(value: Any) -> bool:
    return isinstance(value, (Real, np.number)) and not isinstance(value, complex)


def binary_value(value: Any) -> float | None:
    """A hard 0/1 label or correctness as a float: `True`/`False`, or a number equal to 0 or 1; else `None`.

    A string (`"False"`), `None`, NaN or any other number is not a hard label: callers raise an error naming the row,
    never read it with `bool()` (`bool("False")` is `True`).

    Args:
        value (`Any`):
            The cell.

    Returns:
        `float` or `None`: `1.0`, `0.0`, or `None` when `value` is not a hard label.
    """
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if _is_real(value) and float(value) in (0.0, 1.0):
        return float(value)
    return None


def validate_stepwise_dataset(
    dataset: Dataset,
    step_separator: str,
    outcomes_column: str = "step_outcomes",
    name: str = "train",
    step_tag: str = "",
) -> None:
    """Check every stepwise-supervision row before training, raising a `ValueError` that names the row, the field and
    the fix.

    A valid row has a non-empty string `prompt`, a non-empty list of non-blank string steps in `completions`, and
    `labels` (one real number in [0, 1] per step) and/or `outcomes_column` (one non-empty list of rewards in [0, 1]
    per step: the labels computed from them then lie in [0, 1] too). A prompt or step made only of whitespace and the
    separator is rejected, and so is a row whose `status` (a labeler column) is not `"ok"` (see
    [`drop_failed_rows`]). A step holding the LM head's `step_tag` is rejected (the PRM would read a step end inside
    it); steps holding the separator (multi-line steps with `"\\n"`) are kept, with one warning that counts them: text
    split at the separator at inference (search, [`~trl_erprm.PRMReward`]) gives more steps than training saw.

    Args:
        dataset ([`~datasets.Dataset`]):
            The rows to check.
        step_separator (`str`):
            The step separator of the trainer's config.
        outcomes_column (`str`, *optional*, defaults to `"step_outcomes"`):
            Name of the rollout-outcomes column.
        name (`str`, *optional*, defaults to `"train"`):
            Name of the dataset in error messages.
        step_tag (`str`, *optional*, defaults to `""`):
            The LM head's step tag (`""` for a token-classification PRM).
    """
    columns = dataset.column_names
    missing = [c for c in ("prompt", "completions") if c not in columns]
    if missing:
        raise ValueError(
            f"The {name} dataset has no {missing} column(s) (columns: {columns}). ERPRMTrainer needs stepwise "
            "supervision rows: {'prompt': str, 'completions': [step, ...], 'labels': [float in [0, 1] per step]}."
        )
    has_labels, has_outcomes = "labels" in columns, outcomes_column in columns
    if not (has_labels or has_outcomes):
        raise ValueError(
            f"The {name} dataset has neither a 'labels' nor a '{outcomes_column}' column: give one label in [0, 1] per "
            "step, or the rollout outcomes of each step (see ERPRMLabeler)."
        )
    has_status = STATUS_COLUMN in columns
    wanted = (
        ["prompt", "completions"]
        + (["labels"] if has_labels else [])
        + ([outcomes_column] if has_outcomes else [])
        + ([STATUS_COLUMN] if has_status else [])
    )
    inner_separator = step_separator.strip() or step_separator  # a trailing "\n" splits nothing
    holding_separator = []  # (row, step) of the steps that hold the separator
    for i, row in enumerate(dataset.select_columns(wanted)):
        where = f"{name} dataset row {i}"
        if has_status and row[STATUS_COLUMN] != "ok":
            raise ValueError(
                f"{where}: field '{STATUS_COLUMN}' is {row[STATUS_COLUMN]!r}, not 'ok': the labeler could not label this "
                "row, so it has no labels. Keep the labelled rows with `dataset.filter(lambda row: row['status'] == "
                "'ok')`, or drop the others in the trainer with `ERPRMConfig(skip_failed_rows=True)` "
                "(`--skip_failed_rows` in examples/erprm_train.py)."
            )
        prompt, steps = row["prompt"], row["completions"]
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}.")
        if _is_blank(prompt, step_separator):
            raise ValueError(f"{where}: field 'prompt' is empty or only the step separator; give the problem text.")
        if not isinstance(steps, list) or not steps:
            raise ValueError(f"{where}: field 'completions' must be a non-empty list of steps, got {steps!r}.")
        for k, step in enumerate(steps):
            if not isinstance(step, str):
                raise ValueError(
                    f"{where}: field 'completions' step {k} is a {type(step).__name__}, not a string. Steps are text."
                )
            if _is_blank(step, step_separator):
                raise ValueError(
                    f"{where}: field 'completions' step {k} is empty or only the separator {step_separator!r}; drop "
                    "it or merge it into its neighbour (the trainer appends the separator to each step itself)."
                )
            if step_tag and step_tag.strip() and step_tag.strip() in step:
                raise ValueError(
                    f"{where}: field 'completions' step {k} contains the step tag {step_tag!r}; the LM-head PRM reads "
                    "a tag as the end of a step, so this text would be two steps at inference but one in training. "
                    "Remove the tag from the step text, or train with a step_tag that does not occur in the data."
                )
            if inner_separator and inner_separator in step.strip():
                holding_separator.append((i, k))
        if has_labels:
            labels = row["labels"]
            if not isinstance(labels, list) or len(labels) != len(steps):
                count = len(labels) if isinstance(labels, list) else labels
                raise ValueError(
                    f"{where}: field 'labels' has {count} entries but 'completions' has {len(steps)} steps; give "
                    "exactly one label per step."
                )
            for k, label in enumerate(labels):
                if not _is_real(label) or math.isnan(float(label)) or not 0.0 <= float(label) <= 1.0:
                    raise ValueError(
                        f"{where}: field 'labels' step {k} is {label!r}; labels must be real numbers in [0, 1] "
                        "(1 = the step is good). Rescale the labels or fix the row."
                    )
        if has_outcomes:
            outcomes = row[outcomes_column]
            if not isinstance(outcomes, list) or len(outcomes) != len(steps):
                raise ValueError(
                    f"{where}: field '{outcomes_column}' must hold one list of rollout rewards per step "
                    f"({len(steps)} steps), got {outcomes!r:.80}."
                )
            for k, rewards in enumerate(outcomes):
                if not isinstance(rewards, list) or not rewards:
                    raise ValueError(
                        f"{where}: field '{outcomes_column}' step {k} has no rollout reward; every step needs at least "
                        "one graded rollout (re-run the labeler for this row or drop it)."
                    )
                if any(not _is_real(r) or not math.isfinite(float(r)) for r in rewards):
                    raise ValueError(
                        f"{where}: field '{outcomes_column}' step {k} holds a non-finite or non-numeric reward "
                        f"{rewards!r:.80}; grade every rollout to a real number."
                    )
                if any(not 0.0 <= float(r) <= 1.0 for r in rewards):
                    raise ValueError(
                        f"{where}: field '{outcomes_column}' step {k} holds a reward outside [0, 1] ({rewards!r:.80}); "
                        "the labels computed from it would leave [0, 1] like an invalid 'labels' entry. Grade rollouts "
                        "1 (correct) / 0 (incorrect), e.g. map -1/+1 rewards with (r + 1) / 2."
                    )
    if holding_separator:
        i, k = holding_separator[0]
        rows = len({row for row, _ in holding_separator})
        warnings.warn(
            f"{len(holding_separator)} steps in {rows} rows of the {name} dataset contain the step separator "
            f"{step_separator!r} (the first: row {i} step {k}). Training keeps each as one step, but a solution split "
            "at the separator at inference (search, PRMReward) gives more steps than training saw. If that is not "
            "intended, replace the separator inside the steps or train with one that does not occur (e.g. '\\n\\n').",
            stacklevel=2,
        )


def drop_failed_rows(dataset: Dataset, name: str = "train") -> Dataset:
    """Drop the rows the labeler could not label: those whose `status` column is not `"ok"`, with a warning.

    Args:
        dataset ([`~datasets.Dataset`]):
            Rows written by [`~trl_erprm.ERPRMLabeler`] (a dataset without a `status` column is returned unchanged).
        name (`str`, *optional*, defaults to `"train"`):
            Name of the dataset in the warning.

    Returns:
        [`~datasets.Dataset`]: The rows whose status is `"ok"`.

    Raises:
        `ValueError`: If no row is left.
    """
    if STATUS_COLUMN not in dataset.column_names:
        return dataset
    statuses = dataset[STATUS_COLUMN]
    keep = [i for i, status in enumerate(statuses) if status == "ok"]
    if len(keep) == len(statuses):
        return dataset
    dropped = Counter(status for status in statuses if status != "ok")
    if not keep:
        raise ValueError(f"Every row of the {name} dataset has a status other than 'ok' ({dict(dropped)}): no label.")
    warnings.warn(
        f"Dropped {len(statuses) - len(keep)} of {len(statuses)} rows of the {name} dataset whose status is not 'ok' "
        f"(skip_failed_rows=True): {dict(dropped)}.",
        stacklevel=2,
    )
    return dataset.select(keep)


def check_labelled_rows(dataset: Dataset, name: str, max_length: int | None, require_labels: bool = True) -> None:
    """After tokenization: warn about the rows that keep no labelled token, and fail when none keeps one.

    A row keeps no label when truncation to `max_length` cut every labelled step (typically a prompt longer than
    `max_length`): it trains nothing, and a run where every row is like that would report loss 0 and "succeed".

    Args:
        dataset ([`~datasets.Dataset`]):
            Tokenized rows with `labels` (`-100` where unlabelled).
        name (`str`):
            Name of the dataset in messages.
        max_length (`int` or `None`):
            The truncation length, quoted in messages.
        require_labels (`bool`, *optional*, defaults to `True`):
            Raise when no row keeps a label (training sets); otherwise only warn.

    Raises:
        `ValueError`: When `require_labels` and no row keeps a labelled token.
    """
    empty = sum(1 for labels in dataset["labels"] if all(label == -100 for label in labels))
    if not empty:
        return
    message = (
        f"{empty} of {len(dataset)} rows of the {name} dataset keep no labelled step after truncation to "
        f"max_length={max_length} tokens (their prompt alone, or prompt and first steps, fill it)"
    )
    if empty == len(dataset) and require_labels:
        raise ValueError(f"{message}: there is nothing to train on. Raise max_length or shorten the prompts.")
    warnings.warn(f"{message}; they are ignored. Raise max_length to keep them.", stacklevel=2)


def check_hard_labels(dataset: Dataset, name: str = "train") -> None:
    """Check that every step label can become an integer as TRL's PRMTrainer makes it (`int(label)`).

    TRL accepts any number or bool there; a `None` or NaN label crashes deep inside `datasets.map` with "cannot convert
    float NaN to integer". This check names the row and the step instead.

    Args:
        dataset ([`~datasets.Dataset`]):
            Stepwise rows with `labels`.
        name (`str`, *optional*, defaults to `"train"`):
            Name of the dataset in messages.

    Raises:
        `ValueError`: For a label that is not a bool nor a number equal to 0 or 1 (`None`, NaN, a string, a soft label
        such as 0.7, which `int()` would silently turn into 0).
    """
    if "labels" not in dataset.column_names:
        return
    for i, labels in enumerate(dataset["labels"]):
        for k, label in enumerate(labels or []):
            if binary_value(label) is None:
                raise ValueError(
                    f"{name} dataset row {i}: field 'labels' step {k} is {label!r}; PRMTrainer needs a 0/1 label per "
                    "step (bool, or a number equal to 0 or 1). Fix or drop the row; for soft labels in [0, 1] use "
                    "ERPRMTrainer."
                )


def _er_labels_for_rows(outcomes_per_row: Sequence[Sequence[Sequence[float]]], eta: float) -> list[list[float]]:
    """One `er_label` call for all steps of all rows, padding ragged rollout counts with a mask."""
    steps = [rewards for row in outcomes_per_row for rewards in row]
    if not steps:
        return [[] for _ in outcomes_per_row]
    width = max(len(rewards) for rewards in steps)
    values = torch.zeros(len(steps), width, dtype=torch.float64)
    mask = torch.zeros(len(steps), width, dtype=torch.bool)
    for i, rewards in enumerate(steps):
        values[i, : len(rewards)] = torch.as_tensor(rewards, dtype=torch.float64)
        mask[i, : len(rewards)] = True
    flat = er_label(values, eta, mask=mask).tolist()
    out, start = [], 0
    for row in outcomes_per_row:
        out.append(flat[start : start + len(row)])
        start += len(row)
    return out


class ERPRMDataCollator:
    """Pads tokenized stepwise rows into float-label batches, optionally computing the labels at batch time.

    Labels stay floats (padding `-100`), so soft labels reach the loss unchanged. When `eta` is set, the labels of
    every row are recomputed as `er_label(step_outcomes, eta)` from its stored rollout outcomes: the same rollouts
    can then be trained with soft (`eta=0`), hard (`eta=inf`) or any ER label without new rollouts. Rows without
    outcomes keep their tokenized labels, so a model trained on rollout outcomes can be evaluated on human labels.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer whose `pad_token_id` pads `input_ids` (on the right).
        eta (`float`, `str` or `None`, *optional*, defaults to `None`):
            Entropy-regularization coefficient (or `"soft"` / `"hard"` / `"pessimistic"`); `None` keeps the
            tokenized labels.
        outcomes_column (`str`, *optional*, defaults to `"step_outcomes"`):
            Feature holding the rollout rewards of each labelled step, in the order of the labelled positions.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Pad the sequence length to a multiple of this value.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        eta: float | str | None = None,
        outcomes_column: str = "step_outcomes",
        pad_to_multiple_of: int | None = None,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set `tokenizer.pad_token = tokenizer.eos_token`.")
        self.tokenizer = tokenizer
        self.eta = None if eta is None else resolve_eta(eta)
        self.outcomes_column = outcomes_column
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate a list of tokenized rows (`input_ids`, `labels`, optionally the outcomes column) into tensors.

        Args:
            features (`list[dict[str, Any]]`):
                Tokenized rows.

        Returns:
            `dict[str, torch.Tensor]`: `input_ids` and `attention_mask` `(batch, seq_len)` long, `labels`
            `(batch, seq_len)` float32 with `-100` where unlabelled.
        """
        labels = [list(map(float, f["labels"])) for f in features]
        with_outcomes = [i for i, f in enumerate(features) if f.get(self.outcomes_column) is not None]
        if self.eta is not None and with_outcomes:
            new = _er_labels_for_rows([features[i][self.outcomes_column] for i in with_outcomes], self.eta)
            for i, row_new in zip(with_outcomes, new):
                row_labels = labels[i]
                positions = [t for t, v in enumerate(row_labels) if v != -100]
                if len(positions) != len(row_new):
                    raise ValueError(
                        f"Batch row {i} has {len(positions)} labelled positions but {len(row_new)} outcome lists; "
                        "the dataset was not tokenized by ERPRMTrainer (re-tokenize it from stepwise rows)."
                    )
                for t, v in zip(positions, row_new):
                    row_labels[t] = v
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        label_tensor = torch.full((batch, length), -100.0, dtype=torch.float32)
        for i, (f, row_labels) in enumerate(zip(features, labels)):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention_mask[i, :n] = 1
            label_tensor[i, :n] = torch.as_tensor(row_labels, dtype=torch.float32)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_tensor}
