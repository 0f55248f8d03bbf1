"""Converters from public PRM datasets to TRL's stepwise-supervision format.

The stepwise-supervision format (TRL's PRMTrainer, [`ERPRMTrainer`], the labeler) is one row per solution:
`{"prompt": str, "completions": [step, ...], "labels": [label per step]}` plus, where the source has one, the gold
answer column (`"gold_answer"` by default). Labels produced here are floats in [0, 1].

- [`math_shepherd_to_stepwise`] converts a Math-Shepherd row (`input` with step tags, `label` with `+`/`-` where the
  tags are); [`stepwise_to_math_shepherd`] writes one back.
- [`erprm_to_stepwise`] converts an ER-PRM row (`text` with step tags, `value` with one soft label per tag, the
  format of ER-PRM's LM-head training data); [`stepwise_to_erprm`] writes one back. Both round trips are lossless
  for rows in the released layout (`question + " " + "Step 1: ... ки\nStep 2: ... ки"`).
- [`prm800k_to_stepwise`] converts a PRM800K row (human ratings -1/0/1) following the labeler's chosen path, up to
  its first unrated step; [`convert_prm800k`] converts a whole dataset and counts the rows cut short.
- [`gsm8k_to_stepwise`] converts a GSM8K row (`question`, `answer` ending in `#### N`) into unlabelled steps with a
  gold answer, ready for the labeler.

Cutting free text into steps is [`trl_erprm.steps.split_steps`].
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, MutableMapping
from numbers import Real

from ..steps import StepFormat


__all__ = [
    "MATH_SHEPHERD_STEP_TAG",
    "convert_prm800k",
    "erprm_to_stepwise",
    "gsm8k_to_stepwise",
    "math_shepherd_to_stepwise",
    "prm800k_to_stepwise",
    "stepwise_to_erprm",
    "stepwise_to_math_shepherd",
]

logger = logging.getLogger(__name__)

#: The Math-Shepherd step tag as it appears after the text of a step (a space, then "ки").
MATH_SHEPHERD_STEP_TAG = "ки"
_MATH_SHEPHERD_FIRST_STEP_RE = re.compile(r"\s*Step 1\s*:")


# ---------------------------------------------------------------------------------------------------------------------
# Math-Shepherd
# ---------------------------------------------------------------------------------------------------------------------


def _where(idx: int | None) -> str:
    return "row" if idx is None else f"row {idx}"


def _split_tagged(text: str, step_tag: str, where: str, column: str) -> tuple[str, list[str], list[tuple[int, int]]]:
    """Cut a tagged solution text into its prompt (before "Step 1:"), its steps, and the span of each step's tag."""
    tag_re = re.compile(r"[ \t]?" + re.escape(step_tag))
    matches = list(tag_re.finditer(text))
    if not matches:
        raise ValueError(
            f"{where}: no step tag {step_tag!r} in {column!r}. Pass step_tag= if the data uses another tag."
        )
    tail = text[matches[-1].end() :]
    if tail.strip():
        raise ValueError(
            f"{where}: text after the last step tag ({tail.strip()[:40]!r}...). Every step, the last included, must "
            "end with a tag."
        )
    segments = [text[: matches[0].start()]] + [text[a.end() : b.start()] for a, b in zip(matches, matches[1:])]
    first = _MATH_SHEPHERD_FIRST_STEP_RE.search(segments[0])
    if first is None:
        raise ValueError(f"{where}: no 'Step 1:' marker separating the question from the steps in {column!r}.")
    prompt = segments[0][: first.start()].strip()
    steps = [segments[0][first.start() :].strip(), *(segment.strip() for segment in segments[1:])]
    if not prompt or not all(steps):
        raise ValueError(f"{where}: empty question or empty step between two tags in {column!r}.")
    return prompt, steps, [m.span() for m in matches]


def math_shepherd_to_stepwise(row: dict, idx: int | None = None, step_tag: str = MATH_SHEPHERD_STEP_TAG) -> dict:
    """Convert a Math-Shepherd row into a stepwise-supervision row.

    A Math-Shepherd row has `input`: the question, then steps "Step 1: ... ки\\nStep 2: ... ки", and `label`: the same
    text with `+` (good step) or `-` (bad step) in place of each tag. The tag is usually preceded by a space
    (`" ки"`), but not always, and `"ки"` and `" ки"` tokenize differently: the tag is matched with its optional
    leading whitespace, so steps never carry it. The prompt is the text before the first "Step 1:".
    [`stepwise_to_math_shepherd`] writes the row back.

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
    where = f"Math-Shepherd {_where(idx)}"
    if not isinstance(text, str) or not isinstance(labelled, str):
        raise ValueError(f"{where}: 'input' and 'label' must be strings (the tagged solution).")
    prompt, steps, tags = _split_tagged(text, step_tag, where, "input")
    labels, pos, previous = [], 0, 0
    mark_re = re.compile(r"[ \t]?([+-])")
    for k, (start, end) in enumerate(tags):
        segment = text[previous:start]
        mark = mark_re.match(labelled, pos + len(segment))
        if not labelled.startswith(segment, pos) or mark is None:
            raise ValueError(
                f"{where}: 'label' does not match 'input' at step {k + 1}; it must be 'input' with '+' or '-' in place "
                "of each step tag."
            )
        labels.append(1.0 if mark.group(1) == "+" else 0.0)
        pos, previous = mark.end(), end
    return {"prompt": prompt, "completions": steps, "labels": labels}


def erprm_to_stepwise(
    row: dict,
    idx: int | None = None,
    step_tag: str = MATH_SHEPHERD_STEP_TAG,
    text_column: str = "text",
    value_column: str = "value",
) -> dict:
    """Convert an ER-PRM row (a tagged solution text and one soft label per tag) into a stepwise-supervision row.

    ER-PRM trains its LM-head PRMs on rows with `text`, a solution written like Math-Shepherd's `input` (the question,
    then "Step 1: ... ки\\nStep 2: ... ки"), and `value`, one label in [0, 1] per tag (its ER label). The values are
    kept exactly (never rounded). [`stepwise_to_erprm`] writes the row back.

    Args:
        row (`dict`):
            A row with `text_column` and `value_column` (other columns are ignored).
        idx (`int`, *optional*):
            Index of the row, used in error messages.
        step_tag (`str`, *optional*, defaults to `"ки"`):
            The step tag, without its leading space.
        text_column (`str`, *optional*, defaults to `"text"`):
            Column of the tagged text.
        value_column (`str`, *optional*, defaults to `"value"`):
            Column of the labels.

    Returns:
        `dict`: `{"prompt": str, "completions": list[str], "labels": list[float]}`.
    """
    where = f"ER-PRM {_where(idx)}"
    text, values = row.get(text_column), row.get(value_column)
    if not isinstance(text, str):
        raise ValueError(
            f"{where}: {text_column!r} must be a string (the tagged solution), got {type(text).__name__}."
        )
    prompt, steps, _ = _split_tagged(text, step_tag, where, text_column)
    if not isinstance(values, (list, tuple)) or len(values) != len(steps):
        count = len(values) if isinstance(values, (list, tuple)) else values
        raise ValueError(f"{where}: {value_column!r} has {count!r} values but the text has {len(steps)} step tags.")
    for k, value in enumerate(values):
        if not _is_label(value):
            raise ValueError(
                f"{where}: {value_column!r} step {k} is {value!r}; values must be real numbers in [0, 1]."
            )
    return {"prompt": prompt, "completions": steps, "labels": [float(v) for v in values]}


def _is_label(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 1.0


def _tagged_text(row: dict, idx: int | None, step_format: StepFormat, prompt_separator: str, where: str) -> str:
    """`prompt + prompt_separator + step_format.join(steps)`, refusing what the readers could not read back."""
    prompt, steps = row.get("prompt"), row.get("completions")
    if not isinstance(prompt, str) or not prompt.strip() or prompt != prompt.strip():
        raise ValueError(f"{where} {_where(idx)}: 'prompt' must be a non-empty string without surrounding whitespace.")
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{where} {_where(idx)}: 'completions' must be a non-empty list of steps.")
    marker = step_format.tag.strip()
    for k, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip() or step != step.strip() or marker in step:
            raise ValueError(
                f"{where} {_where(idx)}: step {k} ({step!r:.40}) must be non-empty text without surrounding whitespace "
                f"or the tag {marker!r}, or it would not read back the same."
            )
    if not _MATH_SHEPHERD_FIRST_STEP_RE.match(steps[0]):
        raise ValueError(
            f"{where} {_where(idx)}: the first step must start with 'Step 1:' (it marks the question's end)."
        )
    return prompt + prompt_separator + step_format.join(steps)


def stepwise_to_math_shepherd(
    row: dict,
    idx: int | None = None,
    step_tag: str = " " + MATH_SHEPHERD_STEP_TAG,
    step_separator: str = "\n",
    prompt_separator: str = " ",
) -> dict:
    """Write a stepwise row with 0/1 labels as a Math-Shepherd row (the inverse of [`math_shepherd_to_stepwise`]).

    `input` is `prompt + prompt_separator + step_1 + step_tag + step_separator + step_2 + step_tag ...` and `label`
    the same text with `"+"` (label 1) or `"-"` (label 0) in place of each tag's text (its leading space kept).

    Args:
        row (`dict`):
            `{"prompt", "completions", "labels"}` with labels 0 or 1 (use [`stepwise_to_erprm`] for soft labels).
        idx (`int`, *optional*):
            Index of the row, used in error messages.
        step_tag (`str`, *optional*, defaults to `" ки"`):
            The tag written after every step (Math-Shepherd's, with its space).
        step_separator (`str`, *optional*, defaults to `"\\n"`):
            The text between a tag and the next step.
        prompt_separator (`str`, *optional*, defaults to `" "`):
            The text between the question and "Step 1:".

    Returns:
        `dict`: `{"input": str, "label": str}`.
    """
    labels = row.get("labels") or []
    steps = row.get("completions") or []
    if len(labels) != len(steps) or any(not _is_label(v) or float(v) not in (0.0, 1.0) for v in labels):
        raise ValueError(
            f"Math-Shepherd {_where(idx)}: 'labels' must be one 0/1 label per step, got {labels!r:.80}; soft labels "
            "do not fit '+'/'-' (write them with stepwise_to_erprm)."
        )
    fmt = StepFormat(step_separator, tag=step_tag)
    text = _tagged_text(row, idx, fmt, prompt_separator, "Math-Shepherd")
    marker = step_tag.strip()
    space = step_tag[: len(step_tag) - len(marker)]
    marks = [f"{space}{'+' if float(v) == 1.0 else '-'}" for v in labels]
    label = prompt_separator.join([row["prompt"], step_separator.join(s + m for s, m in zip(steps, marks))])
    return {"input": text, "label": label}


def stepwise_to_erprm(
    row: dict,
    idx: int | None = None,
    step_tag: str = " " + MATH_SHEPHERD_STEP_TAG,
    step_separator: str = "\n",
    prompt_separator: str = " ",
    text_column: str = "text",
    value_column: str = "value",
) -> dict:
    """Write a stepwise row as an ER-PRM row (the inverse of [`erprm_to_stepwise`]), soft labels kept exactly.

    Args:
        row (`dict`):
            `{"prompt", "completions", "labels"}` with labels in [0, 1].
        idx (`int`, *optional*):
            Index of the row, used in error messages.
        step_tag (`str`, *optional*, defaults to `" ки"`):
            The tag written after every step.
        step_separator (`str`, *optional*, defaults to `"\\n"`):
            The text between a tag and the next step.
        prompt_separator (`str`, *optional*, defaults to `" "`):
            The text between the question and "Step 1:".
        text_column (`str`, *optional*, defaults to `"text"`):
            Name of the text column.
        value_column (`str`, *optional*, defaults to `"value"`):
            Name of the labels column.

    Returns:
        `dict`: `{text_column: str, value_column: list[float]}`.
    """
    labels = row.get("labels") or []
    if len(labels) != len(row.get("completions") or []) or not all(_is_label(v) for v in labels):
        raise ValueError(
            f"ER-PRM {_where(idx)}: 'labels' must be one real number in [0, 1] per step, got {labels!r:.80}."
        )
    text = _tagged_text(row, idx, StepFormat(step_separator, tag=step_tag), prompt_separator, "ER-PRM")
    return {text_column: text, value_column: [float(v) for v in labels]}


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
    counts: MutableMapping[str, int] | None = None,
) -> list[dict]:
    """Convert a PRM800K row (human step ratings) into stepwise-supervision rows.

    Mapping (documented choice): rating `1` -> `1.0`, `-1` -> `0.0`, `0` (neutral: reasonable but not clearly
    progressing) -> `neutral_label`, `1.0` by default because a neutral step is not an error (ProcessBench counts only
    errors as wrong). A step written by the labeler (`human_completion`) is labelled `1.0`.

    Unrated steps (`rating: null`, in the public data) follow one rule: the path **stops before the first unrated
    step** it would take (the steps before it keep their labels; a row whose first step is unrated gives no row), and
    an unrated alternative gives no row. `counts["unrated_stop"]` counts the rows cut short this way.

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
        counts (`MutableMapping[str, int]`, *optional*):
            If given, `counts["unrated_stop"]` is increased by 1 when the path stops at an unrated step.

    Returns:
        `list[dict]`: Rows `{"prompt", "completions", "labels", answer_column}`; the path row is last. Empty when
        the labeler gave up before rating a step, or when the first step is unrated.
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
            if taken.get("rating") is None:  # the documented rule: stop before the first unrated step
                if counts is not None:
                    counts["unrated_stop"] = counts.get("unrated_stop", 0) + 1
                break
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


def convert_prm800k(rows: Iterable[dict], counts: MutableMapping[str, int] | None = None, **kwargs) -> list[dict]:
    """Convert PRM800K rows with [`prm800k_to_stepwise`] and concatenate the results, counting the rows cut short.

    Args:
        rows (`Iterable[dict]`):
            PRM800K rows (a list, or a `datasets.Dataset`).
        counts (`MutableMapping[str, int]`, *optional*):
            Filled with `"rows"` (input rows), `"unrated_stop"` (paths stopped before an unrated step, see
            [`prm800k_to_stepwise`]) and `"no_row"` (input rows that gave no output row). The count of unrated stops
            is also logged as a warning.
        **kwargs:
            Passed to [`prm800k_to_stepwise`] (`neutral_label`, `include_alternatives`, `answer_column`).

    Returns:
        `list[dict]`: Stepwise-supervision rows; `datasets.Dataset.from_list` turns them into a dataset.
    """
    counts = {} if counts is None else counts
    for key in ("rows", "unrated_stop", "no_row"):
        counts.setdefault(key, 0)
    out: list[dict] = []
    for i, row in enumerate(rows):
        converted = prm800k_to_stepwise(row, idx=i, counts=counts, **kwargs)
        counts["rows"] += 1
        counts["no_row"] += not converted
        out.extend(converted)
    if counts["unrated_stop"]:
        logger.warning(
            "PRM800K: %d of %d rows stopped before an unrated step (rating null); their rated steps are kept.",
            counts["unrated_stop"],
            counts["rows"],
        )
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
