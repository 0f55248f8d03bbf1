"""Converters from public PRM datasets to TRL's stepwise-supervision format.

The stepwise-supervision format (TRL's PRMTrainer, [`ERPRMTrainer`], the labeler) is one row per solution:
`{"prompt": str, "completions": [step, ...], "labels": [label per step]}` plus, where the source has one, the gold
answer column (`"gold_answer"` by default). Labels produced here are floats in [0, 1].

- [`math_shepherd_to_stepwise`] converts a Math-Shepherd row (`input` with step tags, `label` with `+`/`-` where the
  tags are).
- [`prm800k_to_stepwise`] converts a PRM800K row (human ratings -1/0/1) following the labeler's chosen path;
  [`convert_prm800k`] converts a whole dataset.
- [`gsm8k_to_stepwise`] converts a GSM8K row (`question`, `answer` ending in `#### N`) into unlabelled steps with a
  gold answer, ready for the labeler.

Cutting free text into steps is [`trl_erprm.steps.split_steps`].
"""

from __future__ import annotations

import re
from collections.abc import Iterable


__all__ = [
    "MATH_SHEPHERD_STEP_TAG",
    "convert_prm800k",
    "gsm8k_to_stepwise",
    "math_shepherd_to_stepwise",
    "prm800k_to_stepwise",
]

#: The Math-Shepherd step tag as it appears after the text of a step (a space, then "ки").
MATH_SHEPHERD_STEP_TAG = "ки"
_MATH_SHEPHERD_FIRST_STEP_RE = re.compile(r"\s*Step 1\s*:")


# ---------------------------------------------------------------------------------------------------------------------
# Math-Shepherd
# ---------------------------------------------------------------------------------------------------------------------


def _where(idx: int | None) -> str:
    return "row" if idx is None else f"row {idx}"


def math_shepherd_to_stepwise(row: dict, idx: int | None = None, step_tag: str = MATH_SHEPHERD_STEP_TAG) -> dict:
    """Convert a Math-Shepherd row into a stepwise-supervision row.

    A Math-Shepherd row has `input`: the question, then steps "Step 1: ... ки\\nStep 2: ... ки", and `label`: the same
    text with `+` (good step) or `-` (bad step) in place of each tag. The tag is usually preceded by a space
    (`" ки"`), but not always, and `"ки"` and `" ки"` tokenize differently: the tag is matched with its optional
    leading whitespace, so steps never carry it. The prompt is the text before the first "Step 1:".

    Args:
        row (`dict`):
            A row with `input` and `label` strings (other columns are ignored).
        idx (`int`, *optional*):
            Index of the row, used in error messages (pass `with_indices=True` to `datasets.Dataset.map`).
        step_tag (`str`, *optional*, defaults to `"ки"`):
            The step tag, without its leading space.

    Returns:
        `dict`: `{"prompt": str, "completions": list[str], "labels": list[float]}` with labels 1.0 for `+` and 0.0
        for `-`.

    Example:
    ```python
    >>> from datasets import load_dataset
    >>> ds = load_dataset("peiyi9979/Math-Shepherd", split="train")
    >>> ds = ds.map(math_shepherd_to_stepwise, with_indices=True, remove_columns=["input", "label"])
    ```
    """
    text, labelled = row.get("input"), row.get("label")
    if not isinstance(text, str) or not isinstance(labelled, str):
        raise ValueError(f"Math-Shepherd {_where(idx)}: 'input' and 'label' must be strings (the tagged solution).")
    tag_re = re.compile(r"[ \t]?" + re.escape(step_tag))
    segments = tag_re.split(text)
    if len(segments) < 2:
        raise ValueError(
            f"Math-Shepherd {_where(idx)}: no step tag {step_tag!r} in 'input'. Pass step_tag= if the data uses "
            "another tag."
        )
    if segments[-1].strip():
        raise ValueError(
            f"Math-Shepherd {_where(idx)}: text after the last step tag ({segments[-1].strip()[:40]!r}...). Every "
            "step, the last included, must end with a tag."
        )
    labels, pos = [], 0
    mark_re = re.compile(r"[ \t]?([+-])")
    for k, segment in enumerate(segments[:-1]):
        mark = mark_re.match(labelled, pos + len(segment))
        if not labelled.startswith(segment, pos) or mark is None:
            raise ValueError(
                f"Math-Shepherd {_where(idx)}: 'label' does not match 'input' at step {k + 1}; it must be 'input' with "
                "'+' or '-' in place of each step tag."
            )
        labels.append(1.0 if mark.group(1) == "+" else 0.0)
        pos = mark.end()
    first = _MATH_SHEPHERD_FIRST_STEP_RE.search(segments[0])
    if first is None:
        raise ValueError(f"Math-Shepherd {_where(idx)}: no 'Step 1:' marker separating the question from the steps.")
    prompt = segments[0][: first.start()].strip()
    steps = [segments[0][first.start() :].strip(), *(s.strip() for s in segments[1:-1])]
    if not prompt or not all(steps):
        raise ValueError(f"Math-Shepherd {_where(idx)}: empty question or empty step between two tags.")
    return {"prompt": prompt, "completions": steps, "labels": labels}


# ---------------------------------------------------------------------------------------------------------------------
# PRM800K
# ---------------------------------------------------------------------------------------------------------------------


def _rating_label(rating, neutral_label: float, idx: int | None, step: int) -> float:
    if rating == 1:
        return 1.0
    if rating == -1:
        return 0.0
    if rating == 0:
        return float(neutral_label)
    raise ValueError(f"PRM800K {_where(idx)}, step {step}: rating {rating!r} is not -1, 0 or 1.")


def prm800k_to_stepwise(
    row: dict,
    idx: int | None = None,
    neutral_label: float = 1.0,
    include_alternatives: bool = False,
    answer_column: str = "gold_answer",
) -> list[dict]:
    """Convert a PRM800K row (human step ratings) into stepwise-supervision rows.

    Mapping (documented choice): rating `1` -> `1.0`, `-1` -> `0.0`, `0` (neutral: reasonable but not clearly
    progressing) -> `neutral_label`, `1.0` by default because a neutral step is not an error (ProcessBench counts only
    errors as wrong). A step written by the labeler (`human_completion`) is labelled `1.0`.

    The main row follows the labeler's path: at each step the `chosen_completion`, else the `human_completion`;
    where neither exists the labeler stopped, and the path ends with the first completion rated -1 at that step (the
    step where the error was found), labelled `0.0`. With `include_alternatives=True`, each rated completion that
    was not taken also gives a row: the path so far plus that completion.

    Args:
        row (`dict`):
            A PRM800K row: `question` (`problem`, `ground_truth_answer`) and `label` (`steps`, each with
            `completions` [{`text`, `rating`}], `human_completion`, `chosen_completion`).
        idx (`int`, *optional*):
            Index of the row, for error messages.
        neutral_label (`float`, *optional*, defaults to `1.0`):
            Label of a step rated 0. Use `0.0` to count neutral steps as bad.
        include_alternatives (`bool`, *optional*, defaults to `False`):
            Whether to add one row per rated completion that is not on the path.
        answer_column (`str`, *optional*, defaults to `"gold_answer"`):
            Name of the gold-answer column of the output rows (`question.ground_truth_answer`, may be `None`).

    Returns:
        `list[dict]`: Rows `{"prompt", "completions", "labels", answer_column}`; the path row is last. Empty when
        the labeler gave up before rating a step.
    """
    question, label = row.get("question") or {}, row.get("label") or {}
    problem = question.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"PRM800K {_where(idx)}: missing question.problem.")
    gold = question.get("ground_truth_answer")

    def make(completions: list[str], labels: list[float]) -> dict:
        return {"prompt": problem, "completions": completions, "labels": labels, answer_column: gold}

    rows: list[dict] = []
    path, path_labels = [], []
    for k, step in enumerate(label.get("steps") or [], start=1):
        completions = step.get("completions") or []
        chosen = step.get("chosen_completion")
        human = step.get("human_completion")
        if include_alternatives:
            for j, completion in enumerate(completions):
                if j != chosen and completion.get("rating") is not None:
                    rating = _rating_label(completion["rating"], neutral_label, idx, k)
                    rows.append(make([*path, completion["text"]], [*path_labels, rating]))
        if chosen is not None:
            taken = completions[chosen]
            path.append(taken["text"])
            path_labels.append(_rating_label(taken.get("rating"), neutral_label, idx, k))
        elif human is not None:
            path.append(human["text"])
            path_labels.append(1.0)
        else:
            error = next((c for c in completions if c.get("rating") == -1), None)
            if error is not None:
                path.append(error["text"])
                path_labels.append(0.0)
                if include_alternatives:  # the terminal error step is on the path, not an alternative
                    rows = [r for r in rows if r["completions"] != path]
            break
    if path:
        rows.append(make(path, path_labels))
    return rows


def convert_prm800k(rows: Iterable[dict], **kwargs) -> list[dict]:
    """Convert PRM800K rows with [`prm800k_to_stepwise`] and concatenate the results.

    Args:
        rows (`Iterable[dict]`):
            PRM800K rows (a list, or a `datasets.Dataset`).
        **kwargs:
            Passed to [`prm800k_to_stepwise`] (`neutral_label`, `include_alternatives`, `answer_column`).

    Returns:
        `list[dict]`: Stepwise-supervision rows; `datasets.Dataset.from_list` turns them into a dataset.
    """
    out: list[dict] = []
    for i, row in enumerate(rows):
        out.extend(prm800k_to_stepwise(row, idx=i, **kwargs))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------------------------------

_CALCULATOR_RE = re.compile(r"<<[^>]*>>")


def gsm8k_to_stepwise(row: dict, idx: int | None = None, answer_column: str = "gold_answer") -> dict:
    """Convert a GSM8K row (`question`, `answer` ending in `#### N`) into a stepwise row with a gold answer.

    The steps are the non-empty lines of the solution without the calculator annotations `<<...>>`, followed by the
    step `"The answer is \\boxed{N}."` so that the full solution has a final answer to grade. Thousands separators are
    removed from `N`.

    Args:
        row (`dict`):
            A GSM8K row.
        idx (`int`, *optional*):
            Index of the row, for error messages.
        answer_column (`str`, *optional*, defaults to `"gold_answer"`):
            Name of the gold-answer field of the output.

    Returns:
        `dict`: `{"prompt": str, "completions": list[str], answer_column: str}`.
    """
    answer = row.get("answer")
    if not isinstance(answer, str) or "####" not in answer:
        raise ValueError(f"GSM8K {_where(idx)}: 'answer' must be a solution ending in '#### <number>'.")
    body, gold = answer.rsplit("####", 1)
    gold = gold.strip().replace(",", "")
    steps = [_CALCULATOR_RE.sub("", line).strip() for line in body.strip().split("\n")]
    steps = [s for s in steps if s]
    return {
        "prompt": row.get("question"),
        "completions": [*steps, f"The answer is \\boxed{{{gold}}}."],
        answer_column: gold,
    }
