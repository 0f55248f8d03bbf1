"""The one step format (`trl_erprm.steps`): splitting free text by named rule, writing steps with `StepFormat`,
cutting them back out, and finding where each step ends in characters and in tokens."""

import json

import pytest

from trl_erprm.steps import (
    STEP_SPLITTERS,
    StepFormat,
    locate_chars,
    split_by_separator,
    split_steps,
    step_end_token_indices,
)


# ---------------------------------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------------------------------


def test_split_by_separators():
    text = "First line.\nSecond line.\n\n\n\nThird.\n\n  \n\nLast."
    assert split_steps(text, "double_newline") == ["First line.\nSecond line.", "Third.", "Last."]
    assert split_steps(text, "newline") == ["First line.", "Second line.", "Third.", "Last."]
    assert split_by_separator("a ; b ;; c", " ;") == ["a", "b", "; c"]
    assert split_steps("", "newline") == []


def test_split_by_step_markers():
    text = "Let us think.\nStep 1: add 2 and 3.\nIt is 5.\nstep 2. double it: 10\n  Step 3 : The answer is 10"
    assert split_steps(text, "step_markers") == [
        "Let us think.",
        "Step 1: add 2 and 3.\nIt is 5.",
        "step 2. double it: 10",
        "Step 3 : The answer is 10",
    ]
    assert split_steps("Step 1: a Step 2: b", "step_markers") == ["Step 1: a Step 2: b"]  # markers open a line
    assert split_steps("no markers at all", "step_markers") == ["no markers at all"]


def test_split_steps_errors():
    with pytest.raises(ValueError, match="Unknown step splitting method 'commas'"):
        split_steps("a, b", "commas")
    with pytest.raises(TypeError, match="string"):
        split_steps(None)
    with pytest.raises(ValueError, match="separator"):
        split_by_separator("a", "")
    assert set(STEP_SPLITTERS) == {"double_newline", "newline", "step_markers"}


def test_split_real_gsm8k_solution(sample_data):
    row = json.loads((sample_data / "gsm8k_test.jsonl").read_text().splitlines()[0])
    steps = split_steps(row["answer"].split("####")[0], "newline")
    assert steps == [
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# StepFormat: writing steps and cutting them back out
# ---------------------------------------------------------------------------------------------------------------------


def test_join_and_prefix_by_hand():
    fmt = StepFormat("\n")
    assert fmt.join(["a", "b", "c"]) == "a\nb\nc"
    assert fmt.join_prefix(["a", "b"]) == "a\nb\n"  # the next step starts after a separator
    assert fmt.join_prefix([]) == "" and fmt.join([]) == ""
    tagged = StepFormat("\n", tag=" ки")
    assert tagged.join(["a", "b"]) == "a ки\nb ки"  # the last step keeps its tag, not the separator
    assert tagged.join_prefix(["a"]) == "a ки\n"
    assert StepFormat("", tag=" ки").join(["a", "b"]) == "a киb ки"  # no separator: steps back to back
    assert fmt.marker == "\n" and tagged.marker == " ки"


def test_join_with_ends_by_hand():
    # "1 + 1 = 2." is characters 0-9, "\n\n" 10-11, "So 2." 12-16.
    assert StepFormat("\n\n").join_with_ends(["1 + 1 = 2.", "So 2."]) == ("1 + 1 = 2.\n\nSo 2.", [11, 16])
    # With a tag each step ends at the last character of its tag: "a ки" is 0-3, "\n" 4, "bc ки" 5-9.
    assert StepFormat("\n", tag=" ки").join_with_ends(["a", "bc"]) == ("a ки\nbc ки", [3, 9])
    # A step that contains the separator stays one step: its end is where its own separator was written.
    text, ends = StepFormat("\n").join_with_ends(["x = 1\ny = 2", "z"])
    assert text == "x = 1\ny = 2\nz" and ends == [11, 12]
    assert StepFormat("\n").char_ends(text) == [5, 11, 12]  # re-splitting the text would give three steps
    with pytest.raises(ValueError, match="non-empty separator or tag"):
        StepFormat("").join_with_ends(["a"])


@pytest.mark.parametrize(
    "text, separator, expected",
    [
        ("a.\n\nb", "\n\n", [3, 4]),
        ("abc", "\n\n", [2]),  # no separator: one step
        ("", "\n\n", []),
        ("a\n\n", "\n\n", [2]),  # trailing separator: no empty last step
        ("\n\na\n\n\n\nb", "\n\n", [6, 7]),  # leading separator and a run of separators
        ("\n\n\n\n", "\n\n", [3]),  # separators only: one step
        ("x ки y ки", " ки", [3, 8]),  # x=0, " ки"=1..3, " y"=4..5, " ки"=6..8
    ],
)
def test_char_ends_tagless(text, separator, expected):
    assert StepFormat(separator).char_ends(text) == expected


def test_char_ends_with_a_tag():
    fmt = StepFormat("\n", tag=" ки")
    assert fmt.char_ends("a ки\nbc ки") == [3, 9]
    assert fmt.char_ends("a ки\nbc ки\n") == [3, 9]  # a trailing separator is no step
    assert fmt.char_ends("a ки\ntail") == [3, 8]  # untagged text after the last tag is a last step


@pytest.mark.parametrize("fmt", [StepFormat("\n"), StepFormat("\n\n"), StepFormat("\n", " ки"), StepFormat("", " ки")])
def test_split_inverts_join(fmt):
    steps = ["Ann has 3 apples.", "3 + 4 = 7.", "The answer is \\boxed{7}."]
    assert fmt.split(fmt.join(steps)) == steps
    text, ends = fmt.join_with_ends(steps)
    assert ends == fmt.char_ends(text)  # the ends of a written text are the ends it was written with


def test_split_and_bad_formats():
    assert StepFormat("\n\n").split(" a \n\n\n\n b\n\n") == ["a", "b"]
    assert StepFormat("\n\n").split("") == []
    with pytest.raises(ValueError, match="non-empty separator or tag"):
        StepFormat("").split("ab")
    with pytest.raises(TypeError, match="strings"):
        StepFormat(None)


def test_tokenize_steps_is_trl_layout(tokenizer):
    steps = ["2+3=5.", "So 5."]
    separator_ids = tokenizer.encode("\n", add_special_tokens=False)
    expected = [tokenizer(s, add_special_tokens=False)["input_ids"] + separator_ids for s in steps]
    assert StepFormat("\n").tokenize_steps(tokenizer, steps) == expected
    assert (
        StepFormat("").tokenize_steps(tokenizer, steps)[0]
        == tokenizer("2+3=5.", add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(ValueError, match="no tag"):
        StepFormat("\n", tag=" ки").tokenize_steps(tokenizer, steps)


# ---------------------------------------------------------------------------------------------------------------------
# Step ends in tokens
# ---------------------------------------------------------------------------------------------------------------------


def test_locate_chars_by_hand():
    offsets = [(0, 0), (0, 1), (1, 4), (4, 5), (6, 7), (0, 0)]  # a BOS, 4 tokens (char 5 in none), an EOS
    assert locate_chars(offsets, [0, 3, 4, 5, 6]) == [1, 2, 3, 3, 4]  # char 5 goes to the token before it
    # a 2-byte character split over two byte tokens with the same span: the last of them holds it
    assert locate_chars([(0, 1), (1, 2), (1, 2), (2, 3)], [1]) == [2]
    assert locate_chars([(0, 0)], [0]) == []


def test_step_end_token_indices_by_hand():
    # "a.\n\nb": tokens "a", ".\n\n" (merged), "b"
    assert step_end_token_indices([(0, 1), (1, 4), (4, 5)], [3, 4]) == [1, 2]
    # "a\n\nThe": tokens "a", "\n\nThe" (separator merged with the NEXT step): step 1 ends on the merged token
    assert step_end_token_indices([(0, 1), (1, 6)], [2, 5]) == [1]
    # a 2-byte character split over two byte tokens with the same span: the step ends at the last of them
    assert step_end_token_indices([(0, 1), (1, 2), (1, 2), (2, 3)], [1, 2]) == [2, 3]
    assert step_end_token_indices([], []) == []


def test_tags_found_in_real_tokens_when_merged(tokenizer):
    """The tag of each step is found in the tokens of the joined text, also where BPE merges it with neighbours."""
    fmt = StepFormat("\n", tag=" ки")
    steps = ["3 + 4 = 7.", "7ки", "The answer is 7."]  # "7ки": a step ending in the tag's own letters
    text, ends = fmt.join_with_ends(steps)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    positions = locate_chars(encoded["offset_mapping"], ends)
    assert len(positions) == 3 and positions == sorted(set(positions))
    for position, end in zip(positions, ends):
        start, stop = encoded["offset_mapping"][position]
        assert start <= end < stop  # the token under each tag holds the tag's last character
    decoded = [tokenizer.decode(encoded["input_ids"][: p + 1]) for p in positions]
    assert [d.endswith("ки") for d in decoded] == [True, True, True]
