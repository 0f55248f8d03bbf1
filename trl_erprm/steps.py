r"""The one definition of a step: how steps are written into text, cut out of it, and found in tokens.

Everything in trl-erprm that reads or writes reasoning steps goes through this module: the labeler (rollout prompts
and graded texts), the trainers (label positions), the implicit PRM (step ends in a completion), PRL (separator
tokens), the scorers and Best-of-N (candidate steps), the quickstart task.

A [`StepFormat`] is two texts:

- `separator`: the text that **ends a step**. In a solution, two steps are separated by exactly one separator; in the
  token-classification layout of TRL's PRMTrainer, every step, the last one included, is followed by it. Every
  `step_separator` option of trl-erprm (trainer configs, labeler, `ImplicitPRM`, PRL, scorers) means this text.
- `tag` (LM-head PRMs only, e.g. Math-Shepherd's `" ки"`): a marker written right after every step, the last one
  included, before the separator. The PRM reads its "good" / "bad" tokens there.

A step's **end** (where its label or score sits) is the last character of its marker: the tag when the format has
one, else the separator; the last step of a complete text, which has no separator after it, ends at its own last
character. In tokens, a step ends at the last token holding that character ([`locate_chars`]).

```text
StepFormat("\n").join(["a", "b"])                         "a\nb"          ends: "\n" (step 1), "b" (step 2)
StepFormat("\n").join_prefix(["a"])                       "a\n"           a prefix the next step continues
StepFormat("\n", tag=" ки").join(["a", "b"])              "a ки\nb ки"    ends: the two "и"
```

Cutting *free* text (a model's completion, a dataset's solution) into steps is a separate, named choice:
[`STEP_SPLITTERS`] / [`split_steps`] (`"double_newline"`, `"newline"`, `"step_markers"`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial


__all__ = [
    "STEP_SPLITTERS",
    "StepFormat",
    "locate_chars",
    "separator_token_ids",
    "split_by_separator",
    "split_by_step_markers",
    "split_steps",
    "step_end_token_indices",
]

_STEP_MARKER_RE = re.compile(r"(?im)^[ \t]*step[ \t]*\d+[ \t]*[:.]")


# ---------------------------------------------------------------------------------------------------------------------
# Cutting free text into steps, by named rule
# ---------------------------------------------------------------------------------------------------------------------


def split_by_separator(text: str, separator: str = "\n\n") -> list[str]:
    """Split a solution at every occurrence of `separator`; steps are stripped and empty pieces dropped.

    Args:
        text (`str`):
            The solution.
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text between two steps, for example `"\\n\\n"` or `"\\n"`.

    Returns:
        `list[str]`: The non-empty steps, in order.

    Raises:
        `ValueError`: If `separator` is empty.
    """
    if not separator:
        raise ValueError("separator must be a non-empty string such as '\\n\\n' or '\\n'.")
    return [piece.strip() for piece in text.split(separator) if piece.strip()]


def split_by_step_markers(text: str) -> list[str]:
    """Split a solution before every "Step k:" marker (also "Step k." and lowercase, at the start of a line).

    Each step keeps its marker ("Step 2: ..."). Text before the first marker, if any, is a step of its own. Without
    any marker the whole text is one step.

    Args:
        text (`str`):
            The solution.

    Returns:
        `list[str]`: The non-empty steps, stripped, in order.
    """
    starts = [m.start() for m in _STEP_MARKER_RE.finditer(text)]
    bounds = [0, *[s for s in starts if s > 0], len(text)]
    pieces = [text[a:b].strip() for a, b in zip(bounds[:-1], bounds[1:])]
    return [piece for piece in pieces if piece]


#: Rules that cut free text into steps, by name (the `split_method` option of the scripts).
STEP_SPLITTERS: dict[str, Callable[[str], list[str]]] = {
    "double_newline": partial(split_by_separator, separator="\n\n"),
    "newline": partial(split_by_separator, separator="\n"),
    "step_markers": split_by_step_markers,
}


def split_steps(text: str, method: str = "double_newline") -> list[str]:
    """Cut free text into steps with a rule chosen by name.

    Args:
        text (`str`):
            The solution.
        method (`str`, *optional*, defaults to `"double_newline"`):
            One of [`STEP_SPLITTERS`]: `"double_newline"` (separator `"\\n\\n"`), `"newline"` (separator `"\\n"`) or
            `"step_markers"` ("Step k:" markers, see [`split_by_step_markers`]).

    Returns:
        `list[str]`: The non-empty steps, stripped, in order.

    Raises:
        `ValueError`: For an unknown `method`. `TypeError`: If `text` is not a string.
    """
    if method not in STEP_SPLITTERS:
        raise ValueError(f"Unknown step splitting method {method!r}; choose one of {sorted(STEP_SPLITTERS)}.")
    if not isinstance(text, str):
        raise TypeError(f"split_steps needs a string solution, got {type(text).__name__}.")
    return STEP_SPLITTERS[method](text)


# ---------------------------------------------------------------------------------------------------------------------
# The step format: writing steps, cutting them back out, and where each one ends
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepFormat:
    r"""How the steps of a solution are written: each step, then its `tag` (if any), then the `separator`.

    Args:
        separator (`str`, *optional*, defaults to `"\n"`):
            The text that ends a step: one separator between two steps of a solution, and after every step (the last
            included) in the token-classification layout ([`tokenize_steps`]). `""` writes steps back to back (only
            with a `tag`, or for the token-classification layout, as TRL allows).
        tag (`str`, *optional*, defaults to `""`):
            LM-head PRMs: the marker written right after every step, before the separator (Math-Shepherd: `" ки"`;
            mind the leading space, `"ки"` and `" ки"` are different tokens). `""` for no tag.

    Example:
    ```python
    >>> fmt = StepFormat("\n\n")
    >>> fmt.join(["1 + 1 = 2.", "So 2."])
    '1 + 1 = 2.\n\nSo 2.'
    >>> fmt.join_with_ends(["1 + 1 = 2.", "So 2."])
    ('1 + 1 = 2.\n\nSo 2.', [11, 16])
    ```
    """

    separator: str = "\n"
    tag: str = ""

    def __post_init__(self):
        if not isinstance(self.separator, str) or not isinstance(self.tag, str):
            raise TypeError(
                f"StepFormat: separator and tag must be strings, got {type(self.separator).__name__} and "
                f"{type(self.tag).__name__}."
            )

    @property
    def marker(self) -> str:
        """The text whose last character is a step's end: the tag if there is one, else the separator."""
        return self.tag or self.separator

    def _check_marker(self, what: str) -> None:
        if not self.marker:
            raise ValueError(f"StepFormat(separator='', tag=''): {what} needs a non-empty separator or tag.")

    def join(self, steps: Sequence[str]) -> str:
        """The text of a complete solution: every step followed by its tag, one separator between two steps.

        Args:
            steps (`Sequence[str]`):
                The steps, in order.

        Returns:
            `str`: The solution text (no separator after the last step).
        """
        return self.separator.join(step + self.tag for step in steps)

    def join_prefix(self, steps: Sequence[str]) -> str:
        """The text of a solution prefix that a model continues: every step followed by its tag and the separator.

        Args:
            steps (`Sequence[str]`):
                The first steps of a solution.

        Returns:
            `str`: `join(steps) + separator` (`""` for no step), so that the next step starts after a separator.
        """
        return "".join(step + self.tag + self.separator for step in steps)

    def join_with_ends(self, steps: Sequence[str]) -> tuple[str, list[int]]:
        """[`join`] the steps and give the character where each one ends, without splitting the text again.

        A step that contains the separator stays one step (its end is where its own marker was written).

        Args:
            steps (`Sequence[str]`):
                The steps, in order.

        Returns:
            `tuple[str, list[int]]`: The text of [`join`] and, per step, the index of the last character of its
            marker (of the step itself for the last step of a tagless format). An empty last step of a tagless format
            ends where the previous step ends.
        """
        self._check_marker("join_with_ends")
        text, ends = "", []
        for k, step in enumerate(steps):
            text += step + self.tag
            if self.tag:
                ends.append(len(text) - 1)
            if k + 1 < len(steps):
                text += self.separator
            if not self.tag:
                ends.append(max(len(text) - 1, 0))
        return text, ends

    def split(self, text: str) -> list[str]:
        """Cut a text written in this format back into its steps (the inverse of [`join`] for stripped steps).

        Tagless: the text is cut at every separator. With a tag: at every tag, and the separator that follows a tag
        is dropped. Steps are stripped and empty pieces dropped.

        Args:
            text (`str`):
                The solution.

        Returns:
            `list[str]`: The non-empty steps, in order.
        """
        self._check_marker("split")
        if not self.tag:
            return split_by_separator(text, self.separator)
        pieces = text.split(self.tag)
        if self.separator:
            pieces = [
                p[len(self.separator) :] if k and p.startswith(self.separator) else p for k, p in enumerate(pieces)
            ]
        return [piece.strip() for piece in pieces if piece.strip()]

    def char_ends(self, text: str) -> list[int]:
        """Index of the last character of each step of a text written in this format.

        Tagless: steps are the pieces between separators and the separator belongs to the step it ends; a run of
        consecutive separators is one boundary, and a separator at the very start of the text is merged into the step
        that follows, so every step holds at least one non-separator character (a text of separators only is one
        step). The last step ends at the last character of the text. With a tag: each step ends at the last
        character of its tag; non-blank text after the last tag is a last step ending at the end of the text.

        Args:
            text (`str`):
                The text.

        Returns:
            `list[int]`: Increasing character indices, one per step; empty for an empty text.

        Example:
            `StepFormat("\\n\\n").char_ends("a.\\n\\nb")` is `[3, 4]`: step 1 is `"a.\\n\\n"`, step 2 is `"b"`.
        """
        self._check_marker("char_ends")
        if not text:
            return []
        marker = self.marker
        ends: list[int] = []
        if self.tag:
            position = text.find(marker)
            while position != -1:
                ends.append(position + len(marker) - 1)
                position = text.find(marker, position + len(marker))
            tail = text[ends[-1] + 1 :] if ends else text
            if tail.strip() and tail.strip() != self.separator.strip():
                ends.append(len(text) - 1)
            return ends
        content_start = 0
        position = text.find(marker)
        while position != -1:
            end = position + len(marker)
            while text.startswith(marker, end):  # a run of separators is one boundary
                end += len(marker)
            if position > content_start:  # a step with content before the separator
                ends.append(end - 1)
            content_start = end
            position = text.find(marker, end)
        if content_start < len(text) or not ends:
            ends.append(len(text) - 1)
        return ends

    def tokenize_steps(self, tokenizer, steps: Sequence[str]) -> list[list[int]]:
        """Token ids of each step in the token-classification layout of TRL's PRMTrainer.

        Each step is tokenized on its own (`add_special_tokens=False`) and followed by the ids of the separator
        (`tokenizer.encode(separator, add_special_tokens=False)`); a step's label sits on the last of its ids. This is
        exactly TRL 1.13's `PRMTrainer.tokenize_row`.

        Args:
            tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
                The PRM's tokenizer.
            steps (`Sequence[str]`):
                The steps.

        Returns:
            `list[list[int]]`: One list of ids per step (step then separator).

        Raises:
            `ValueError`: For a format with a tag (LM-head PRMs tokenize the joined text, see [`join_with_ends`]).
        """
        if self.tag:
            raise ValueError(
                "tokenize_steps is the token-classification layout (no tag); an LM-head format locates its tags in "
                "the tokens of the joined text (join_with_ends + locate_chars)."
            )
        separator_ids = tokenizer.encode(self.separator, add_special_tokens=False)
        return [tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids for step in steps]


# ---------------------------------------------------------------------------------------------------------------------
# Step ends in tokens
# ---------------------------------------------------------------------------------------------------------------------


def locate_chars(offsets: Sequence[tuple[int, int]], chars: Sequence[int]) -> list[int]:
    """The token holding each of some characters of a text, from the tokenizer's offset mapping.

    A character is held by the LAST token whose span contains it (a character split over several byte tokens, such
    as Cyrillic "и" in byte-level BPE, ends at the last of them; a token that merges a tag or separator with its
    neighbours holds it all the same). A character that no token covers (whitespace some tokenizers leave out of
    every span) is given to the last token that starts before it. Special tokens (empty spans) never hold a
    character. Runs in time linear in the number of tokens plus characters.

    Args:
        offsets (sequence of `(int, int)`):
            Character span `(start, end)` of every token, as returned with `return_offsets_mapping=True`.
        chars (sequence of `int`):
            Character indices, increasing.

    Returns:
        `list[int]`: One token index per character; empty if there is no token with a non-empty span.
    """
    tokens = [t for t, (start, end) in enumerate(offsets) if end > start]
    if not tokens:
        return []
    positions, i = [], 0
    for char in chars:
        # Advance to the last token starting at or before `char` (tokens are in text order).
        while i + 1 < len(tokens) and offsets[tokens[i + 1]][0] <= char:
            i += 1
        positions.append(tokens[i])
    return positions


def step_end_token_indices(offsets: Sequence[tuple[int, int]], char_ends: Sequence[int]) -> list[int]:
    """The token where each step of a completion ends, for values read at step ends over the whole completion.

    Each step ends at the token holding its last character ([`locate_chars`]): right when a token merges the
    separator with its neighbours (a `".\\n\\n"` token ends the step it closes; a `"\\n\\nThe"` token, which also
    starts the next step, is counted as the end of the step it closes). Steps that fall on the same token are merged,
    and the last step always ends at the last token, so the values at the step ends cover the whole completion.

    Args:
        offsets (sequence of `(int, int)`):
            Character span of each completion token (`add_special_tokens=False`, `return_offsets_mapping=True`).
        char_ends (sequence of `int`):
            Last character of each step ([`StepFormat.char_ends`] or [`StepFormat.join_with_ends`]).

    Returns:
        `list[int]`: Increasing token indices, one per (merged) step; empty when there are no tokens.
    """
    if len(offsets) == 0:
        return []
    token_ends = sorted(set(locate_chars(offsets, char_ends)))
    token_ends = [t for t in token_ends if t < len(offsets) - 1]
    return [*token_ends, len(offsets) - 1]


def separator_token_ids(tokenizer, separator: str = "\n") -> list[int]:
    r"""Ids of every vocabulary token whose text contains `separator`, special tokens excluded.

    Byte-level tokenizers merge newlines with their neighbours (`".\n\n"`, `"\n\n"`, `":\n"`), so a step can end at
    many different tokens. Never use `tokenizer.encode(separator)[0]`: for tokenizers that prepend a BOS token it is the
    BOS id, which never occurs inside a completion, and every completion would collapse into one step.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.
        separator (`str`, *optional*, defaults to `"\n"`):
            Text that ends a step.

    Returns:
        `list[int]`: Sorted token ids; empty if no token contains the separator.
    """
    if not separator:
        raise ValueError("separator must be a non-empty string.")
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [i for i, text in zip(ids, texts) if separator in text]
