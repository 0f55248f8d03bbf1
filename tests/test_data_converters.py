"""The Math-Shepherd / ER-PRM / PRM800K / GSM8K converters of `trl_erprm.data`, on the real samples in tests/data."""

import copy
import json

import pytest
from datasets import Dataset

from trl_erprm.data import (
    convert_prm800k,
    erprm_to_stepwise,
    gsm8k_to_stepwise,
    math_shepherd_to_stepwise,
    prm800k_to_stepwise,
    stepwise_to_erprm,
    stepwise_to_math_shepherd,
)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------------
# Math-Shepherd
# ---------------------------------------------------------------------------------------------------------------------


def test_math_shepherd_real_samples(sample_data):
    rows = _rows(sample_data / "math_shepherd_samples.jsonl")
    converted = [math_shepherd_to_stepwise(row, i) for i, row in enumerate(rows)]
    assert [len(c["completions"]) for c in converted] == [5, 3, 2, 5, 5, 2, 3]
    first = converted[0]
    assert first["prompt"] == (
        "Janet pays $40/hour for 3 hours per week of clarinet lessons and $28/hour for 5 hours a week of piano "
        "lessons. How much more does she spend on piano lessons than clarinet lessons in a year?"
    )
    assert first["completions"][0] == (
        "Step 1: Janet spends 3 hours + 5 hours = <<3+5=8>>8 hours per week on music lessons."
    )
    assert first["completions"][-1].endswith("The answer is: 13520")
    assert first["labels"] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert converted[4]["labels"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    for row, c in zip(rows, converted):
        assert all("ки" not in step and step == step.strip() for step in c["completions"])
        assert len(c["labels"]) == len(c["completions"]) == row["input"].count("ки") == row["label"].count("\n") + 1
        assert sum(c["labels"]) == sum(line.endswith("+") for line in row["label"].split("\n"))


def test_math_shepherd_tag_without_space_and_custom_tag():
    row = {"input": "Q? Step 1: a.ки\nStep 2: b. ки", "label": "Q? Step 1: a.+\nStep 2: b. -"}
    assert math_shepherd_to_stepwise(row) == {
        "prompt": "Q?",
        "completions": ["Step 1: a.", "Step 2: b."],
        "labels": [1.0, 0.0],
    }
    row = {"input": "Q? Step 1: a. <s>\nStep 2: b. <s>", "label": "Q? Step 1: a. -\nStep 2: b. +"}
    assert math_shepherd_to_stepwise(row, step_tag="<s>")["labels"] == [0.0, 1.0]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"input": "Q? Step 1: a.", "label": "Q? Step 1: a."}, "row 3: no step tag"),
        ({"input": "Q? Step 1: a. ки tail", "label": "Q? Step 1: a. + tail"}, "row 3: text after the last step tag"),
        ({"input": "Q? Step 1: a. ки", "label": "Q? Step 1: b. +"}, "row 3: 'label' does not match 'input' at step 1"),
        ({"input": "Q? Step 1: a. ки", "label": "Q? Step 1: a. ?"}, "row 3: 'label' does not match"),
        ({"input": "Q? First: a. ки", "label": "Q? First: a. +"}, "row 3: no 'Step 1:' marker"),
        ({"input": "Q? Step 1: a. ки", "label": None}, "row 3: 'input' and 'label' must be strings"),
    ],
)
def test_math_shepherd_bad_rows(row, message):
    with pytest.raises(ValueError, match=message):
        math_shepherd_to_stepwise(row, 3)


# ---------------------------------------------------------------------------------------------------------------------
# PRM800K
# ---------------------------------------------------------------------------------------------------------------------


def test_prm800k_chosen_path_on_real_samples(sample_data):
    rows = _rows(sample_data / "prm800k_samples.jsonl")
    converted = [prm800k_to_stepwise(row, i) for i, row in enumerate(rows)]
    assert [len(c) for c in converted] == [1] * 6  # one path per sample by default
    paths = [c[0] for c in converted]
    assert [len(p["completions"]) for p in paths] == [6, 7, 5, 7, 8, 12]
    assert [p["gold_answer"] for p in paths] == ["29", "28800", "468", "9", "1+2\\sqrt{3}", None]
    # Sample 0: step 2 has no chosen completion (all rated -1), the labeler's own step is taken, labelled 1.
    assert paths[0]["completions"][1] == "We have $3p+e=1.24$ and $5p+e=1.82$."
    assert paths[0]["labels"] == [1.0] * 6
    # Sample 1 ("found_error"): step 2 is rated 0 (neutral -> 1.0 by default), the path ends at the first -1.
    assert paths[1]["labels"] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    last_step = rows[1]["label"]["steps"][-1]
    assert paths[1]["completions"][-1] == last_step["completions"][0]["text"]
    assert last_step["completions"][0]["rating"] == -1 and last_step["chosen_completion"] is None
    # Neutral steps counted as bad on request.
    assert prm800k_to_stepwise(rows[1], neutral_label=0.0)[0]["labels"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    for row, p in zip(rows, paths):
        assert p["prompt"] == row["question"]["problem"]
        assert len(p["labels"]) == len(p["completions"])


def test_prm800k_alternatives(sample_data):
    rows = _rows(sample_data / "prm800k_samples.jsonl")
    expanded = prm800k_to_stepwise(rows[3], include_alternatives=True)
    path = expanded[-1]
    assert path == prm800k_to_stepwise(rows[3])[0]
    # Step 6 has 7 rated completions, completion 3 is chosen: 6 alternatives branch off at step 6.
    ratings = [c["rating"] for c in rows[3]["label"]["steps"][5]["completions"]]
    assert ratings == [-1, -1, 1, 1, 1, -1, 1]
    branches = [r for r in expanded[:-1] if len(r["completions"]) == 6]
    assert [r["labels"][-1] for r in branches] == [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert all(r["completions"][:5] == path["completions"][:5] for r in branches)
    # The terminal error step of a "found_error" sample is on the path, not duplicated as an alternative.
    expanded = prm800k_to_stepwise(rows[1], include_alternatives=True)
    assert sum(r["completions"] == expanded[-1]["completions"] for r in expanded) == 1
    assert len(convert_prm800k(rows, include_alternatives=True)) == sum(
        len(prm800k_to_stepwise(r, include_alternatives=True)) for r in rows
    )


def test_prm800k_bad_rows():
    with pytest.raises(ValueError, match="PRM800K row 2: missing question.problem"):
        prm800k_to_stepwise({"question": {}, "label": {"steps": []}}, 2)
    bad = {
        "question": {"problem": "P", "ground_truth_answer": "1"},
        "label": {"steps": [{"completions": [{"text": "s", "rating": 5}], "chosen_completion": 0}]},
    }
    with pytest.raises(ValueError, match="PRM800K row 4, step 1: rating 5"):
        prm800k_to_stepwise(bad, 4)
    with pytest.raises(ValueError, match="PRM800K row 1, step 1: rating 5"):
        convert_prm800k([{**bad, "label": {"steps": []}}, bad])
    bad["label"]["steps"][0]["completions"][0]["rating"] = 1
    assert convert_prm800k([bad], answer_column="answer") == [
        {"prompt": "P", "completions": ["s"], "labels": [1.0], "answer": "1"}
    ]
    gave_up = {"question": {"problem": "P"}, "label": {"steps": [{"completions": None, "chosen_completion": None}]}}
    assert prm800k_to_stepwise(gave_up) == []


def test_gsm8k_to_stepwise_real_row(sample_data):
    row = json.loads((sample_data / "gsm8k_test.jsonl").read_text().splitlines()[102])  # test split row 579
    out = gsm8k_to_stepwise(row)
    assert out["prompt"] == row["question"]
    assert out["gold_answer"] == "7"
    assert out["completions"] == [
        "His brother has 5 - 3 = 2 cards.",
        "Together, they have 5 + 2 = 7 cards.",
        "The answer is \\boxed{7}.",
    ]
    with pytest.raises(ValueError, match="row 3.*####"):
        gsm8k_to_stepwise({"question": "q", "answer": "no marker"}, 3)


# ---------------------------------------------------------------------------------------------------------------------
# The Math-Shepherd / ER-PRM text format, both ways
# ---------------------------------------------------------------------------------------------------------------------

#: A hand-made row in ER-PRM's training format: one tagged text and one soft (ER) label per tag.
ERPRM_ROW = {
    "text": "Ann has 3 apples and buys 4 more. How many apples does she have? Step 1: She buys 4 more, so 3 + 4 = 7. "
    "ки\nStep 2: The answer is 7. ки",
    "value": [0.8571, 0.3333333333333333],
}


def test_math_shepherd_round_trip_is_lossless_on_the_real_samples(sample_data):
    original = Dataset.from_list(_rows(sample_data / "math_shepherd_samples.jsonl"))
    stepwise = original.map(math_shepherd_to_stepwise, with_indices=True, remove_columns=["input", "label"])
    assert stepwise.column_names == ["task", "prompt", "completions", "labels"]  # other columns ride along
    back = stepwise.map(
        stepwise_to_math_shepherd, with_indices=True, remove_columns=["prompt", "completions", "labels"]
    )
    assert back.select_columns(original.column_names).to_list() == original.to_list()
    again = back.map(math_shepherd_to_stepwise, with_indices=True, remove_columns=["input", "label"])
    assert again.to_list() == stepwise.to_list()


def test_erprm_rows_read_and_write_back_exactly():
    row = erprm_to_stepwise(ERPRM_ROW)
    assert row == {
        "prompt": "Ann has 3 apples and buys 4 more. How many apples does she have?",
        "completions": ["Step 1: She buys 4 more, so 3 + 4 = 7.", "Step 2: The answer is 7."],
        "labels": [0.8571, 0.3333333333333333],  # never rounded
    }
    assert stepwise_to_erprm(row) == ERPRM_ROW
    assert erprm_to_stepwise(stepwise_to_erprm(row)) == row
    # the soft labels of the Math-Shepherd samples survive the ER-PRM format too
    soft = {**row, "labels": [0.25, 1.0]}
    assert (
        erprm_to_stepwise(
            stepwise_to_erprm(soft, text_column="t", value_column="v"), text_column="t", value_column="v"
        )
        == soft
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**ERPRM_ROW, "value": [0.5]}, r"ER-PRM row 3: 'value' has 1 values but the text has 2 step tags"),
        ({**ERPRM_ROW, "value": [0.5, 1.5]}, r"ER-PRM row 3: 'value' step 1 is 1.5; values must be real numbers"),
        ({**ERPRM_ROW, "value": [0.5, float("nan")]}, r"'value' step 1 is nan"),
        ({**ERPRM_ROW, "text": ERPRM_ROW["text"] + " and more"}, r"text after the last step tag"),
        ({"value": [1.0]}, r"'text' must be a string"),
    ],
)
def test_erprm_bad_rows(row, message):
    with pytest.raises(ValueError, match=message):
        erprm_to_stepwise(row, 3)


def test_writers_refuse_what_would_not_read_back():
    row = erprm_to_stepwise(ERPRM_ROW)
    with pytest.raises(
        ValueError, match=r"Math-Shepherd row 2: 'labels' must be one 0/1 label per step.*stepwise_to_erprm"
    ):
        stepwise_to_math_shepherd(row, 2)  # soft labels do not fit "+" / "-"
    hard = {**row, "labels": [1.0, 0.0]}
    assert stepwise_to_math_shepherd(hard)["label"].endswith("so 3 + 4 = 7. +\nStep 2: The answer is 7. -")
    for bad, message in [
        ({**hard, "completions": ["Step 1: a ки b", "Step 2: c"]}, "or the tag 'ки'"),
        ({**hard, "completions": ["Step 1: a ", "Step 2: c"]}, "without surrounding whitespace"),
        ({**hard, "completions": ["First: a", "Step 2: c"]}, "must start with 'Step 1:'"),
        ({**hard, "prompt": ""}, "'prompt' must be a non-empty string"),
    ]:
        with pytest.raises(ValueError, match=message):
            stepwise_to_math_shepherd(bad)


# ---------------------------------------------------------------------------------------------------------------------
# PRM800K: unrated steps (rating null)
# ---------------------------------------------------------------------------------------------------------------------


def test_prm800k_unrated_steps_stop_the_path_and_are_counted(sample_data, caplog):
    rows = _rows(sample_data / "prm800k_samples.jsonl")
    unrated = copy.deepcopy(rows[0])  # its path: five chosen completions then the answer
    steps = unrated["label"]["steps"]
    steps[3]["completions"][steps[3]["chosen_completion"]]["rating"] = None  # the 4th step on the path is unrated
    first_unrated = copy.deepcopy(rows[0])
    first_unrated["label"]["steps"][0]["completions"][0]["rating"] = None
    expected = prm800k_to_stepwise(rows[0])[-1]
    counts = {}
    converted = convert_prm800k([unrated, rows[1], first_unrated], counts=counts)  # no abort
    stopped = converted[0]
    assert stopped["completions"] == expected["completions"][:3] and stopped["labels"] == expected["labels"][:3]
    assert counts == {"rows": 3, "unrated_stop": 2, "no_row": 1}
    assert "2 of 3 rows stopped before an unrated step" in caplog.text
    assert convert_prm800k(rows) == [r for i, row in enumerate(rows) for r in prm800k_to_stepwise(row, i)]
