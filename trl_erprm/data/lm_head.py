r"""The LM-head PRM layout (Math-Shepherd, ER-PRM, RLHFlow): one text with a step tag after every step.

A row `{"prompt", "completions", "labels"}` becomes the text

    prompt + prompt_separator + step_1 + tag + separator + step_2 + tag + ... + step_n + tag

([`~trl_erprm.steps.StepFormat`] `join`), tokenized in one piece. The label of step `k` sits on the token that holds
the last character of its tag, found with the tokenizer's offset mapping ([`~trl_erprm.steps.locate_chars`]), so a
tag that the tokenizer merges with its neighbours (`"7ки"`, `"ки\n"`) is found all the same. There the PRM reads the
logits of two candidate tokens, "good" and "bad" (`"+"` / `"-"`). [`~trl_erprm.ERPRMTrainer`] with `head="lm"`
trains on this layout and [`~trl_erprm.evaluation.scorers.LMHeadScorer`] scores with it: one definition for both.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ..steps import StepFormat, locate_chars


__all__ = ["lm_head_candidate_ids", "tokenize_lm_head_row"]


def lm_head_candidate_ids(tokenizer: PreTrainedTokenizerBase, good_token: str, bad_token: str) -> tuple[int, int]:
    """Token ids of the "good" and "bad" candidates of an LM-head PRM, each of which must be one token.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The PRM's tokenizer.
        good_token (`str`):
            The "good step" candidate, e.g. `"+"` (mind leading spaces: `"+"` and `" +"` are different tokens in
            most tokenizers).
        bad_token (`str`):
            The "bad step" candidate, e.g. `"-"`.

    Returns:
        `tuple[int, int]`: `(good_token_id, bad_token_id)`.

    Raises:
        `ValueError`: If a candidate is not exactly one token (the message names the tokens it splits into), or both
        are the same token.
    """
    ids = []
    for name, text in (("good_token", good_token), ("bad_token", bad_token)):
        encoded = tokenizer.encode(text, add_special_tokens=False) if isinstance(text, str) and text else []
        if len(encoded) != 1:
            pieces = tokenizer.convert_ids_to_tokens(encoded) if encoded else []
            raise ValueError(
                f"{name}={text!r} is {len(encoded)} tokens for this tokenizer ({pieces}); an LM-head PRM reads the logit "
                f"of ONE token. Pick a single-token {name} (e.g. '+' / '-', or ' +' / ' -' with a leading space)."
            )
        ids.append(encoded[0])
    if ids[0] == ids[1]:
        raise ValueError(f"good_token={good_token!r} and bad_token={bad_token!r} are the same token (id {ids[0]}).")
    return ids[0], ids[1]


def tokenize_lm_head_row(
    features: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    step_format: StepFormat,
    prompt_separator: str = " ",
    max_length: int | None = None,
    max_completion_length: int | None = None,
    train_on_last_step_only: bool = False,
    is_eval: bool = True,
) -> tuple[list[int], list[Any], list[int]]:
    """Tokenize one stepwise row in the LM-head layout, with each step's label on the token of its tag.

    The text is `prompt + prompt_separator + step_format.join(steps)`, tokenized once with the tokenizer's special
    tokens (a BOS if it adds one). The prompt is used as it is: apply a chat template to it beforehand if the model
    expects one. The completion (the tokens from the first one holding a character of the steps) is cut to
    `max_completion_length`, then the sequence to `max_length`; a step whose tag is cut off loses its label.

    Args:
        features (`dict[str, Any]`):
            Row with `"prompt"` (`str`), `"completions"` (`list[str]`) and `"labels"` (one per step, kept as they are:
            never rounded).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            A fast tokenizer (offset mappings are needed).
        step_format ([`~trl_erprm.steps.StepFormat`]):
            The separator and the (non-empty) tag.
        prompt_separator (`str`, *optional*, defaults to `" "`):
            Text between the prompt and the first step (Math-Shepherd: a space).
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Maximum length of the whole sequence.
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Maximum length of the completion.
        train_on_last_step_only (`bool`, *optional*, defaults to `False`):
            Label only the last step (training rows only).
        is_eval (`bool`, *optional*, defaults to `True`):
            Whether the row is an evaluation row (every step labelled then).

    Returns:
        `tuple[list[int], list, list[int]]`: The input ids, the labels (`-100` where unlabelled) and the indices of the
        labelled steps whose tag survived truncation, in order.

    Raises:
        `ValueError`: Without a tag or a fast tokenizer, or when two step tags fall on the same token (the message
        names the tokens).
    """
    if not step_format.tag:
        raise ValueError("The LM-head layout needs a step tag (StepFormat(separator, tag=' ки')).")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("The LM-head layout needs a fast tokenizer: step tags are located with offset mappings.")
    steps, step_labels = list(features["completions"]), list(features["labels"])
    if len(steps) != len(step_labels):
        raise ValueError(f"{len(step_labels)} labels for {len(steps)} steps: give exactly one label per step.")
    head = features["prompt"] + prompt_separator
    body, tag_ends = step_format.join_with_ends(steps)
    encoded = tokenizer(head + body, return_offsets_mapping=True)
    input_ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    positions = locate_chars(offsets, [len(head) + char for char in tag_ends])
    for k in range(1, len(positions)):
        if positions[k] == positions[k - 1]:
            token = tokenizer.convert_ids_to_tokens(input_ids[positions[k]])
            raise ValueError(
                f"Steps {k - 1} and {k} of the row starting {features['prompt'][:40]!r} end on the same token {token!r}: "
                f"the tag {step_format.tag!r} merged with the step between them. Check that no step is empty and "
                "that the tag is written the way the tokenizer keeps apart."
            )

    if max_completion_length is not None:
        start = next((t for t, (a, b) in enumerate(offsets) if b > a and b > len(head)), len(input_ids))
        input_ids = input_ids[: start + max_completion_length]
    if max_length is not None:
        input_ids = input_ids[:max_length]
    labelled = list(range(len(steps)))
    if train_on_last_step_only and not is_eval:
        labelled = labelled[-1:]
    kept = [k for k in labelled if positions[k] < len(input_ids)]
    labels: list[Any] = [-100] * len(input_ids)
    for k in kept:
        labels[positions[k]] = step_labels[k]
    return input_ids, labels, kept
