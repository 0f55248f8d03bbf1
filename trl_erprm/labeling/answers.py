"""Final-answer extraction from model output: string operations only, linear time, bounded input.

This runs in the calling process on untrusted text (a collapsed rollout can be a megabyte of digits or thousands of
unclosed `\\boxed{`), so every step is linear in the length of the text and the text itself is capped: only the last
[`MAX_TEXT_CHARS`] characters are searched (final answers are at the end), an answer is read from at most
[`MAX_ANSWER_CHARS`] characters, and at most [`MAX_CANDIDATES`] answer phrases are read, last first (boxed answers
are all matched in one pass over the braces).

Forms recognised (a survey of common generators and datasets), the LAST stated answer winning:

| form | source | example | answer |
|---|---|---|---|
| `\\boxed{...}`, `\\fbox{...}` (balanced braces) | MATH, Qwen-Math, DeepSeek-Math, R1 | `so $\\boxed{\\frac12}$.` | `\\frac12` |
| "the answer is X" ("my/our answer", "correct answer", "would be") | GSM8K CoT, Math-Shepherd, MetaMath | `The answer is: 18` | `18` |
| "final answer is X", "Final Answer: X" | Llama 3 / Minerva (`Final Answer: The final answer is $X$. I hope it is correct.`) | | `X` |
| "Answer: X" at the start of a line (also `**Answer:**`) | MMLU-style, many chat models | `**Answer:** 12` | `12` |
| `# Answer` heading, the answer on the next non-empty line | PRM800K | `# Answer\\n\\n17` | `17` |
| `#### X` | GSM8K references | `#### 1,000` | `1,000` |

After a phrase, the answer is cleaned: a leading `:`, markdown bold/italic (`**73**`), a `$...$`, `$$...$$`,
`\\(...\\)` or `\\[...\\]` wrapper and a currency `\\$` are removed; a number followed by words or a trailing explanation
keeps the number only ("42, since 6*7=42." gives `42`, "18 dollars" gives `18`, "1,000." gives `1,000`); other text
ends at the end of its sentence or line ("x = 5. I hope it is correct." gives `x = 5`). A phrase that checks an
answer rather than stating one ("so our answer is correct") gives way to the previous answer.
"""

from __future__ import annotations

import re


#: Only the last `MAX_TEXT_CHARS` characters of a text are searched for a final answer.
MAX_TEXT_CHARS = 65_536
#: An answer longer than this (or running past this many characters after its marker) is no answer.
MAX_ANSWER_CHARS = 1_000
#: Answer phrases read per text, from the last one back; a phrase that yields no answer gives way to the previous one.
MAX_CANDIDATES = 8

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)[ \t]*\{")
# Each phrase ends where the answer text starts. All are anchored on a literal word, so no pattern backtracks over
# more than the whitespace run that follows one occurrence: the scan is linear in the text.
_PHRASE_RES = (
    re.compile(
        r"\b(?:the|my|our)[ \t]+(?:(?:final|correct)[ \t]+)?answer[ \t]+(?:is|would[ \t]+be|will[ \t]+be)\b", re.I
    ),
    re.compile(r"\bfinal[ \t]+answer(?:[ \t]+is\b|[ \t]*(?:\*\*|__)?[ \t]*:(?:\*\*|__)?)", re.I),
    re.compile(r"^[ \t]*(?:\*\*|__)?answer[ \t]*(?:\*\*|__)?[ \t]*:(?:\*\*|__)?", re.I | re.M),
    re.compile(r"####[ \t]*(?=[-+\u2212$\\.\d])"),  # GSM8K: "#### 18", not a markdown heading "#### Step 2"
)
# PRM800K: a "# Answer" heading line, the answer on the next non-empty line.
_HEADING_RE = re.compile(r"^[ \t]*#+[ \t]*answer[ \t]*:?[ \t]*$", re.I | re.M)
_NUMBER_RE = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[ \t]*/[ \t]*\d+)?(?:[ \t]*\\?%)?")
# What may follow a number for the number alone to be the answer: the end, a sentence end, or words (units, "since").
# A comma followed by more math ("1, 2") is a list, kept whole.
_AFTER_NUMBER_RE = re.compile(r"(?:$|[.;!?](?:\s|$)|,[ \t]*[A-Za-z]|[ \t]+[A-Za-z])")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|,[ \t]+(?:since|because|as|which|so|where)\b|[ \t]+(?:since|because)\b")
# "...so our answer is correct." checks an answer, it does not state one: such a phrase gives way to the previous one.
_VERDICT_RE = re.compile(r"(?:indeed[ \t]+)?(?:correct|incorrect|right|wrong|verified|confirmed|consistent)\b", re.I)
_WRAPPERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"), ("**", "**"), ("__", "__"), ("*", "*"))


def _brace_matches(text: str) -> dict[int, int]:
    """`{position of "{": position of its "}"}` for every balanced pair, in one pass (escaped braces count too)."""
    matches, stack = {}, []
    for position, char in enumerate(text):
        if char == "{":
            stack.append(position)
        elif char == "}" and stack:
            matches[stack.pop()] = position
    return matches


def braces_balanced(text: str) -> bool:
    """Whether every `{` of `text` is closed by a later `}` and no `}` closes nothing (one linear pass).

    Args:
        text (`str`):
            LaTeX text, e.g. a gold answer.

    Returns:
        `bool`: `True` for balanced braces (also when there are none).
    """
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _unwrap(answer: str) -> str:
    """Remove wrappers (`$...$`, `\\(...\\)`, `**...**`, ...) around the start of an answer, then trailing noise."""
    for _ in range(4):  # "**$73$**" is two wrappers deep; more is not an answer
        answer = answer.strip()
        for opening, closing in _WRAPPERS:
            if answer.startswith(opening) and not answer.startswith("\\$"):
                end = answer.find(closing, len(opening))
                if end > len(opening):
                    answer = answer[len(opening) : end]
                    break
        else:
            break
    if answer.startswith("\\$"):  # a currency sign, not a math delimiter
        answer = answer[2:]
    return answer.strip().rstrip(".,;").strip()


def _clean_phrase_tail(tail: str) -> str | None:
    """The answer that starts `tail` (the text after an answer phrase), or `None`."""
    tail = tail.lstrip(" \t:").lstrip()
    if tail.startswith(("\\boxed", "\\fbox")):
        return None  # the boxed candidate at this very place is read instead
    if _VERDICT_RE.match(tail):
        return None
    if tail.startswith(("$", "\\(", "\\[", "**", "__")) and not tail.startswith("\\$"):
        answer = _unwrap(tail)
        # An unwrapped span may still carry a number and an explanation ("**42, since ...**").
        return _clean_plain(answer) if answer else None
    return _clean_plain(tail.split("\n", 1)[0])


def _clean_plain(line: str) -> str | None:
    """A number followed by words or punctuation is the number; other text runs to the end of its sentence."""
    line = line.strip()
    if line.startswith("\\$"):
        line = line[2:].lstrip()
    number = _NUMBER_RE.match(line)
    if number and _AFTER_NUMBER_RE.match(line, number.end()):
        return number.group(0).strip()
    end = _SENTENCE_END_RE.search(line)
    answer = _unwrap(line[: end.start()] if end else line)
    return answer or None


def _heading_answer(text: str, start: int) -> str | None:
    """The first non-empty line after a `# Answer` heading."""
    for line in text[start : start + MAX_ANSWER_CHARS + 1].split("\n"):
        if line.strip():
            return _clean_phrase_tail(line)
    return None


def extract_final_answer(text: str) -> str | None:
    """Final answer of a solution, by string operations only (no sympy, no eval), in time linear in `len(text)`.

    The forms of the module docstring's table are found in the last [`MAX_TEXT_CHARS`] characters; the answer that
    starts last in the text wins (a `\\boxed{}` right after "The answer is" counts as that answer). An answer longer
    than [`MAX_ANSWER_CHARS`] characters, or an empty one, gives way to the previous marker. The result is what gets
    graded and the cache key of [`~trl_erprm.labeling.grading.MathVerifyGrader`].

    Args:
        text (`str`):
            A model completion or reference solution. Anything that is not a string gives `None`.

    Returns:
        `str` or `None`: The stripped answer, or `None` when there is none.
    """
    if not isinstance(text, str):
        return None
    text = text[-MAX_TEXT_CHARS:]
    # (answer start, priority, kind, data): the latest start wins; at the same start a boxed answer wins.
    candidates = [(m.start(), 1, "boxed", m.end() - 1) for m in _BOXED_RE.finditer(text)]
    for pattern in _PHRASE_RES:
        candidates += [(m.end(), 0, "phrase", m.end()) for m in pattern.finditer(text)]
    candidates += [(m.end(), 0, "heading", m.end()) for m in _HEADING_RE.finditer(text)]
    if not candidates:
        return None
    candidates.sort(reverse=True)
    braces = _brace_matches(text) if any(kind == "boxed" for _, _, kind, _ in candidates) else {}
    # A boxed candidate costs O(1) (its braces are matched already), a phrase up to MAX_ANSWER_CHARS: only the last
    # MAX_CANDIDATES phrases are read.
    phrases_left = MAX_CANDIDATES
    for _, _, kind, data in candidates:
        if kind == "boxed":
            close = braces.get(data)
            answer = text[data + 1 : close].strip() if close is not None else None
        elif phrases_left == 0:
            continue
        elif kind == "heading":
            phrases_left -= 1
            answer = _heading_answer(text, data)
        else:
            phrases_left -= 1
            tail = text[data : data + MAX_ANSWER_CHARS + 1]
            answer = _clean_phrase_tail(tail)
            if answer is not None and len(answer) > MAX_ANSWER_CHARS - 8:
                answer = None  # ran to the end of the window: a runaway rollout, not an answer
        if answer and len(answer) <= MAX_ANSWER_CHARS:
            return answer
    return None
