"""Outcome-labelled data for implicit PRMs: prompts and completions tokenized as GRPO does, validation, DPO pairs,
collation.

Rows are `{"prompt": str or messages, "completion": str or one assistant message, "label": 0/1}`
([`validate_outcome_rows`]). Prompts are tokenized like [`~trl.GRPOTrainer`] tokenizes them ([`encode_prompt`]), and
batches use GRPO's layout: left-padded prompts, then right-padded completions ([`DataCollatorForImplicitPRM`]). Used by
[`~trl_erprm.ImplicitPRMTrainer`] and, for the text helpers, by [`~trl_erprm.ImplicitPRM`].
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase
from trl.trainer.utils import pad


__all__ = [
    "DataCollatorForImplicitPRM",
    "build_dpo_pairs",
    "completion_text",
    "mismatched_rows",
    "encode_prompt",
    "prepare_outcome_dataset",
    "truncate_to_max_length",
    "validate_outcome_rows",
]

#: Message roles whose content a conversational completion may carry.
_COMPLETION_ROLES = ("assistant",)
_REQUIRED_COLUMNS = ("prompt", "completion", "label")


# ---------------------------------------------------------------------------------------------------------------------
# Prompts and completions as text and tokens
# ---------------------------------------------------------------------------------------------------------------------


def truncate_to_max_length(
    prompt_ids: list[int], completion_ids: list[int], max_length: int | None
) -> tuple[list[int], list[int], bool]:
    """Fit `prompt_ids + completion_ids` into `max_length` tokens.

    The prompt is cut from the left first (its most recent tokens are kept); if the completion alone does not fit next
    to one prompt token, the completion is cut at the end to `max_length - 1` tokens (the first completion token needs
    at least one token of context).

    Args:
        prompt_ids (`list[int]`):
            Prompt token ids (at least one).
        completion_ids (`list[int]`):
            Completion token ids.
        max_length (`int` or `None`):
            Maximum number of tokens, at least 2; `None` keeps everything.

    Returns:
        `tuple[list[int], list[int], bool]`: The kept prompt ids, the kept completion ids, and whether anything was cut.
    """
    if max_length is None or len(prompt_ids) + len(completion_ids) <= max_length:
        return prompt_ids, completion_ids, False
    if max_length < 2:
        raise ValueError(
            f"max_length must be at least 2 (one prompt token and one completion token), got {max_length}."
        )
    completion_ids = completion_ids[: max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(completion_ids)) :]
    return prompt_ids, completion_ids, True


def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and (len(value) == 0 or isinstance(value[0], dict))


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], index: int = 0) -> list[int]:
    """Tokenize a prompt the way [`~trl.GRPOTrainer`] does.

    A standard prompt (`str`) is tokenized with the tokenizer's special tokens (a BOS where the tokenizer adds one). A
    conversational prompt (list of messages) is rendered with the chat template and `add_generation_prompt=True`, then
    tokenized without adding special tokens (the template writes its own).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of the PRM.
        prompt (`str` or `list[dict]`):
            The prompt.
        index (`int`, *optional*, defaults to `0`):
            Row index, quoted in errors.

    Returns:
        `list[int]`: The prompt token ids (never empty).
    """
    if _is_conversational(prompt):
        if tokenizer.chat_template is None:
            raise ValueError(
                f"Row {index}: field 'prompt' is a list of messages but the tokenizer has no chat template. Set "
                "`tokenizer.chat_template` or pass the prompt as a string."
            )
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    elif isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        raise ValueError(
            f"Row {index}: field 'prompt' must be a string or a list of messages, got {type(prompt).__name__}."
        )
    if len(ids) == 0:
        raise ValueError(
            f"Row {index}: field 'prompt' tokenizes to no token, so the first completion token has no context. Pass a "
            "non-empty prompt."
        )
    return list(ids)


def completion_text(completion: str | list[dict], index: int = 0) -> str:
    """The text of a completion: the string itself, or the content of a conversational completion's one message.

    Args:
        completion (`str` or `list[dict]`):
            A standard completion or a conversational one (a list holding one assistant message).
        index (`int`, *optional*, defaults to `0`):
            Row index, quoted in errors.

    Returns:
        `str`: The completion text.
    """
    if isinstance(completion, str):
        return completion
    if _is_conversational(completion):
        if len(completion) != 1 or completion[0].get("role") not in _COMPLETION_ROLES:
            raise ValueError(
                f"Row {index}: field 'completion' must hold exactly one assistant message to be scored, got "
                f"{len(completion)} message(s) with roles {[m.get('role') for m in completion]}. Multi-turn completions "
                "(tool calls) are not supported: score the final assistant message as a string completion."
            )
        content = completion[0].get("content")
        if not isinstance(content, str):
            raise ValueError(
                f"Row {index}: field 'completion' has a message content of type {type(content).__name__}; only text "
                "content (a string) can be scored."
            )
        return content
    raise ValueError(
        f"Row {index}: field 'completion' must be a string or a list of messages, got {type(completion).__name__}."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Outcome-labelled datasets
# ---------------------------------------------------------------------------------------------------------------------


def _label_value(label: Any, index: int, loss_type: str) -> float:
    """Check one outcome label and return it as a float."""
    fix = "use 1/True for a correct completion and 0/False for an incorrect one"
    if loss_type == "ce":
        fix += " (or a float in [0, 1] for a soft label with loss_type='ce')"
    if isinstance(label, bool):
        return float(label)
    if isinstance(label, (int, float)) and not math.isnan(label):
        value = float(label)
        if value in (0.0, 1.0) or (loss_type == "ce" and 0.0 <= value <= 1.0):
            return value
    raise ValueError(f"Row {index}: field 'label' is {label!r}; {fix}.")


def validate_outcome_rows(dataset: Dataset, loss_type: str = "ce", name: str = "train") -> list[float]:
    """Check every row of an outcome-labelled dataset and return the labels as floats.

    Args:
        dataset ([`~datasets.Dataset`]):
            Rows with `prompt` (string or list of messages), `completion` (non-empty string, or a list holding one
            assistant message) and `label` (`0`/`1` or a bool; a float in `[0, 1]` is accepted for `loss_type="ce"`).
        loss_type (`str`, *optional*, defaults to `"ce"`):
            `"ce"` or `"dpo"` (which needs hard labels).
        name (`str`, *optional*, defaults to `"train"`):
            Name of the split, quoted in errors.

    Returns:
        `list[float]`: The labels.

    Raises:
        `ValueError`: naming the split, the row, the field and the fix, at the first bad row.
    """
    missing = [c for c in _REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The {name} dataset lacks the column(s) {missing} (it has {dataset.column_names}). An implicit PRM trains "
            "on outcome-labelled rows: 'prompt', 'completion' and 'label' (1 correct, 0 incorrect)."
        )
    labels = []
    for i, row in enumerate(dataset):
        try:
            prompt, completion = row["prompt"], row["completion"]
            if not (_is_conversational(prompt) and prompt) and not (isinstance(prompt, str) and prompt):
                raise ValueError(f"Row {i}: field 'prompt' is empty or not a string / list of messages; fill it in.")
            if not completion_text(completion, i):
                raise ValueError(f"Row {i}: field 'completion' is empty; drop the row or fill in the completion.")
            labels.append(_label_value(row["label"], i, loss_type))
        except ValueError as error:
            raise ValueError(f"{name} dataset: {error}") from None
    return labels


def build_dpo_pairs(
    prompt_keys: Sequence[str], labels: Sequence[float], max_pairs_per_prompt: int | None = None
) -> list[tuple[int, int]]:
    """Pair correct and incorrect completions of the same prompt for the DPO loss.

    Rows are grouped by prompt (exact match of the prompt text or messages), groups in order of first appearance. In a
    group with correct rows `c_0..c_{m-1}` and incorrect rows `w_0..w_{n-1}` (dataset order) every one of the `m * n`
    pairs is formed, enumerated diagonal by diagonal: `(c_i, w_{(i + d) mod n})` for `d = 0..n-1`, `i = 0..m-1`. So a
    cap `max_pairs_per_prompt` keeps pairs that use as many different completions as possible. Prompts whose
    completions are all correct or all incorrect give no pair.

    Args:
        prompt_keys (sequence of `str`):
            One hashable key per row identifying its prompt.
        labels (sequence of `float`):
            Outcome labels, `1.0` correct and `0.0` incorrect.
        max_pairs_per_prompt (`int`, *optional*):
            At most this many pairs per prompt; `None` keeps all.

    Returns:
        `list[tuple[int, int]]`: `(correct_row, incorrect_row)` indices.
    """
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, (key, label) in enumerate(zip(prompt_keys, labels)):
        correct, incorrect = groups.setdefault(key, ([], []))
        (correct if label >= 0.5 else incorrect).append(i)
    pairs = []
    for correct, incorrect in groups.values():
        group = [
            (correct[i], incorrect[(i + d) % len(incorrect)])
            for d in range(len(incorrect))
            for i in range(len(correct))
        ]
        pairs.extend(group if max_pairs_per_prompt is None else group[:max_pairs_per_prompt])
    return pairs


def mismatched_rows(prompt_keys: Sequence[str]) -> list[int]:
    """For each row, the next row (in dataset order, wrapping around) whose prompt is different.

    KTO estimates its reference point `z_0 = KL(pi_theta || pi_ref)` from completions paired with prompts they do not
    answer (Ethayarajh et al. 2024); row `i` is paired with the completion of row `mismatched_rows(keys)[i]`.

    Args:
        prompt_keys (sequence of `str`):
            One key per row identifying its prompt.

    Returns:
        `list[int]`: One row index per row, always with another prompt.

    Raises:
        `ValueError`: If every row has the same prompt (no mismatched pair exists).
    """
    n = len(prompt_keys)
    if n == 0 or all(key == prompt_keys[0] for key in prompt_keys):
        raise ValueError(
            "loss_type='kto' estimates its reference point from completions paired with OTHER prompts, but the "
            "dataset has a single prompt. Add rows of other prompts."
        )
    # next_other[i]: first j > i (over the doubled list) with another prompt; a run of equal keys shares it.
    next_other = [0] * (2 * n)
    next_other[2 * n - 1] = 2 * n
    for i in range(2 * n - 2, -1, -1):
        next_other[i] = i + 1 if prompt_keys[(i + 1) % n] != prompt_keys[i % n] else next_other[i + 1]
    return [next_other[i] % n for i in range(n)]


def _prompt_key(prompt: str | list[dict]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def _tokenize_rows(dataset: Dataset, tokenizer, max_length: int | None, num_proc: int | None, name: str) -> Dataset:
    def tokenize(row, index):
        prompt_ids = encode_prompt(tokenizer, row["prompt"], index)
        ids = tokenizer(completion_text(row["completion"], index), add_special_tokens=False)["input_ids"]
        prompt_ids, completion_ids, cut = truncate_to_max_length(prompt_ids, list(ids), max_length)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "truncated": cut}

    tokenized = dataset.map(
        tokenize, with_indices=True, num_proc=num_proc, remove_columns=dataset.column_names, desc=f"Tokenizing {name}"
    )
    truncated = sum(tokenized["truncated"])
    if truncated:
        warnings.warn(
            f"{truncated} of {len(tokenized)} rows of the {name} dataset exceed max_length={max_length} tokens and were "
            "truncated (prompt cut from the left first, then the completion at its end).",
            stacklevel=3,
        )
    return tokenized.remove_columns("truncated")


def prepare_outcome_dataset(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, args: Any, name: str = "train"
) -> Dataset:
    """Validate and tokenize an outcome-labelled dataset; form the pairs of pairwise losses (`"dpo"`, `"nca"`).

    Args:
        dataset ([`~datasets.Dataset`]):
            Rows with `prompt`, `completion`, `label` (see [`validate_outcome_rows`]).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The model's tokenizer.
        args ([`~trl_erprm.ImplicitPRMConfig`] or any config with the same fields):
            Uses `loss_type` (`"ce"`, `"dpo"`, `"kto"`, `"nca"`), `max_length`, `max_pairs_per_prompt`,
            `dataset_num_proc`.
        name (`str`, *optional*, defaults to `"train"`):
            Name of the split, quoted in errors and warnings.

    Returns:
        [`~datasets.Dataset`]: Columns `prompt_ids`, `completion_ids`, `label` ("ce"); the same plus
        `kl_completion_ids`, the completion of another prompt ([`mismatched_rows`]) for KTO's reference point ("kto");
        or `prompt_ids`, `chosen_ids`, `rejected_ids` ("dpo", "nca").
    """
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset):
        raise TypeError(f"The {name} dataset must be a datasets.Dataset (map-style), got {type(dataset).__name__}.")
    labels = validate_outcome_rows(dataset, args.loss_type, name)
    tokenized = _tokenize_rows(dataset, tokenizer, args.max_length, args.dataset_num_proc, name)
    if args.loss_type == "ce":
        return tokenized.add_column("label", labels)
    keys = [_prompt_key(p) for p in dataset["prompt"]]
    if args.loss_type == "kto":
        prompt_ids, completion_ids = tokenized["prompt_ids"], tokenized["completion_ids"]
        room = [None if args.max_length is None else max(1, args.max_length - len(p)) for p in prompt_ids]
        kl_ids = [completion_ids[j][: room[i]] for i, j in enumerate(mismatched_rows(keys))]
        return tokenized.add_column("label", labels).add_column("kl_completion_ids", kl_ids)
    pairs = build_dpo_pairs(keys, labels, args.max_pairs_per_prompt)
    if not pairs:
        raise ValueError(
            f"The {name} dataset has no prompt with both a correct (label 1) and an incorrect (label 0) completion, so "
            f"loss_type={args.loss_type!r} has no pair to train on. Add such completions or use loss_type='ce' or "
            "'kto'."
        )
    prompt_ids, completion_ids = tokenized["prompt_ids"], tokenized["completion_ids"]
    return Dataset.from_dict(
        {
            "prompt_ids": [prompt_ids[c] for c, _ in pairs],
            "chosen_ids": [completion_ids[c] for c, _ in pairs],
            "rejected_ids": [completion_ids[w] for _, w in pairs],
        }
    )


class DataCollatorForImplicitPRM:
    """Pad tokenized rows into the GRPO layout: left-padded prompt, then right-padded completion.

    DPO / NCA pairs are flattened to `2P` rows: the `P` chosen completions, then the `P` rejected ones. KTO rows also
    give the mismatched rows of KTO's reference point under `kl_`-prefixed keys.

    Args:
        pad_token_id (`int`):
            Id used for padding (masked out).

    Returns (when called on a list of rows):
        `dict[str, torch.Tensor]`: `input_ids` and `attention_mask` `(B, L)`, `completion_mask` `(B, T)`,
        `outcome_labels` `(B,)` for CE / KTO rows, `ref_logps` `(B, T)` when the rows carry precomputed ones, and for
        KTO rows `kl_input_ids`, `kl_attention_mask`, `kl_completion_mask` (and `kl_ref_logps`).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def _pad(self, prompts: list, completions: list, refs: list | None, prefix: str = "") -> dict[str, torch.Tensor]:
        prompt_ids = pad([torch.tensor(p, dtype=torch.long) for p in prompts], self.pad_token_id, "left")
        prompt_mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompts], 0, "left")
        completion_ids = pad([torch.tensor(c, dtype=torch.long) for c in completions], self.pad_token_id)
        completion_mask = pad([torch.ones(len(c), dtype=torch.long) for c in completions], 0)
        batch = {
            f"{prefix}input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
            f"{prefix}attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),
            f"{prefix}completion_mask": completion_mask,
        }
        if refs is not None:
            batch[f"{prefix}ref_logps"] = pad([torch.tensor(x, dtype=torch.float32) for x in refs], 0.0)
        return batch

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "chosen_ids" in rows[0]:
            prompts = [r["prompt_ids"] for r in rows] * 2
            completions = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
            refs = None
            if "chosen_ref_logps" in rows[0]:
                refs = [r["chosen_ref_logps"] for r in rows] + [r["rejected_ref_logps"] for r in rows]
        else:
            prompts = [r["prompt_ids"] for r in rows]
            completions = [r["completion_ids"] for r in rows]
            refs = [r["ref_logps"] for r in rows] if "ref_logps" in rows[0] else None
        batch = self._pad(prompts, completions, refs)
        if "label" in rows[0]:
            batch["outcome_labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
        if "kl_completion_ids" in rows[0]:
            kl_refs = [r["kl_ref_logps"] for r in rows] if "kl_ref_logps" in rows[0] else None
            batch.update(self._pad(prompts, [r["kl_completion_ids"] for r in rows], kl_refs, prefix="kl_"))
        return batch
