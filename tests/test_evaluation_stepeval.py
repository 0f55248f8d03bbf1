"""ProcessBench-style step evaluation: crafted scores with known F1, real converted data through a tiny PRM, resume."""

import json

import pytest

from trl_erprm.data import math_shepherd_to_stepwise, prm800k_to_stepwise
from trl_erprm.evaluation.stepeval import StepEvalArguments, run_step_eval, stepeval_main, stepwise_to_processbench


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# Same items as tests/test_evaluation_metrics.py: F1 4/7 at threshold 0.5, best threshold 0.6.
ITEMS = [
    {"problem": "p0", "steps": ["a", "b", "c"], "label": -1, "scores": [0.9, 0.8, 0.7]},
    {"problem": "p1", "steps": ["a", "b"], "label": -1, "scores": [0.9, 0.4]},
    {"problem": "p2", "steps": ["a", "b", "c"], "label": 1, "scores": [0.8, 0.3, 0.9]},
    {"problem": "p3", "steps": ["a", "b"], "label": 0, "scores": [0.6, 0.2]},
    {"problem": "p4", "steps": ["a", "b", "c"], "label": 2, "scores": [0.7, 0.6, 0.45]},
]
BAD_ITEMS = [
    {"problem": "no steps", "steps": [], "label": -1, "scores": []},
    {"problem": "label out of range", "steps": ["a"], "label": 3, "scores": [0.9]},
    {"problem": "too many scores", "steps": ["a"], "label": -1, "scores": [0.9, 0.8]},
    {"problem": "truncated", "steps": ["a", "b"], "label": -1, "scores": [0.9]},
]


def test_given_threshold_and_bad_items(tmp_path):
    data = _write_jsonl(tmp_path / "items.jsonl", ITEMS + BAD_ITEMS)
    argv = ["--dataset_name", data, "--dataset_split", "train", "--scores_column", "scores", "--threshold", "0.5"]
    report = stepeval_main([*argv, "--output_dir", str(tmp_path / "out")])
    m = report["eval"]
    # The truncated item (label -1, its one scored step above 0.5) counts: predicted -1, right.
    assert m["num_items"] == 6 and (m["num_error_items"], m["num_correct_items"]) == (3, 3)
    assert m["error_accuracy"] == pytest.approx(2 / 3) and m["correct_accuracy"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert report["bad_input"] == {
        "items_without_valid_steps": 1,
        "items_bad_label": 1,
        "items_step_count_mismatch": 1,
        "items_truncated": 1,
        "items_with_nan_scores": 0,
    }
    assert report["threshold"] == 0.5 and report["calibration"] is None
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["eval"]["f1"] == pytest.approx(2 / 3)
    assert "| eval | 6 |" in (tmp_path / "out" / "table.md").read_text()


def test_threshold_chosen_on_a_calibration_split(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_jsonl(data_dir / "test.jsonl", ITEMS)
    _write_jsonl(data_dir / "validation.jsonl", ITEMS)
    args = StepEvalArguments(
        dataset_name=str(data_dir),
        dataset_split="test",
        calibration_split="validation",
        scores_column="scores",
        output_dir=str(tmp_path / "out"),
    )
    report = run_step_eval(args)
    assert report["threshold"] == 0.6 and report["threshold_source"] == "split 'validation'"
    assert report["eval"]["f1"] == pytest.approx(4 / 7) and report["calibration"]["f1"] == pytest.approx(4 / 7)


def test_held_out_fraction(tmp_path):
    data = _write_jsonl(tmp_path / "items.jsonl", ITEMS * 4)
    args = StepEvalArguments(
        dataset_name=data, dataset_split="train", scores_column="scores", output_dir=str(tmp_path / "out")
    )
    report = run_step_eval(args)
    assert report["eval"]["num_items"] + report["calibration"]["num_items"] == 20
    assert report["calibration"]["num_items"] == 10 and "held-out 50%" in report["threshold_source"]


def test_stepwise_to_processbench():
    assert stepwise_to_processbench([1.0, 0.7, 0.2, 0.0]) == 2
    assert stepwise_to_processbench([1, 1]) == -1
    assert stepwise_to_processbench([0.6, 0.4], threshold=0.7) == 0


def test_real_samples_through_a_tiny_prm_and_resume(tmp_path, sample_data, token_cls_path):
    rows = [json.loads(line) for line in (sample_data / "math_shepherd_samples.jsonl").read_text().splitlines()]
    stepwise = [math_shepherd_to_stepwise(r, i) for i, r in enumerate(rows)]
    rows = [json.loads(line) for line in (sample_data / "prm800k_samples.jsonl").read_text().splitlines()]
    stepwise += [p for i, r in enumerate(rows) for p in prm800k_to_stepwise(r, i, answer_column="gold")]
    data = _write_jsonl(
        tmp_path / "stepwise.jsonl", [{k: r[k] for k in ("prompt", "completions", "labels")} for r in stepwise]
    )
    args = StepEvalArguments(
        dataset_name=data,
        dataset_split="train",
        problem_column="prompt",
        steps_column="completions",
        label_column="labels",
        label_format="step_labels",
        prm_model=token_cls_path,
        threshold=0.5,
        chunk_size=4,
        output_dir=str(tmp_path / "out"),
    )
    report = run_step_eval(args)
    expected_labels = [stepwise_to_processbench(r["labels"]) for r in stepwise]
    assert report["eval"]["num_items"] == len(stepwise) == 13
    assert report["eval"]["num_error_items"] == sum(y != -1 for y in expected_labels) == 8
    assert 0.0 <= report["eval"]["f1"] <= 1.0
    part = tmp_path / "out" / "parts" / "part-00000.jsonl"
    records = [json.loads(line) for line in part.read_text().splitlines()]
    assert [r["label"] for r in records] == expected_labels
    assert [len(r["scores"]) for r in records] == [len(r["completions"]) for r in stepwise]
    # Resume after a crash that lost the last chunk: same records, nothing written twice.
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:8]))
    resumed = run_step_eval(args)
    assert part.read_text() == "".join(lines) and resumed["eval"] == report["eval"]
    with pytest.raises(ValueError, match="label_format: 'step_labels' in the folder, 'first_error' now"):
        run_step_eval(StepEvalArguments(**{**vars(args), "label_format": "first_error"}))


def test_a_float_label_column_is_read_as_indices(tmp_path):
    """A label column with one float value is read as floats (-1 becomes -1.0): every item used to be rejected and the
    run ended with F1 NaN and exit status 0."""
    items = [dict(ITEMS[0], label=-1.0), *ITEMS[1:]]
    data = _write_jsonl(tmp_path / "items.jsonl", items)
    args = StepEvalArguments(
        dataset_name=data, scores_column="scores", threshold=0.5, output_dir=str(tmp_path / "out")
    )
    report = run_step_eval(args)
    assert report["eval"]["num_items"] == 5 and report["eval"]["f1"] == pytest.approx(4 / 7)
    assert report["bad_input"]["items_bad_label"] == 0


def test_a_run_where_every_item_is_left_out_is_an_error(tmp_path, capsys):
    from trl_erprm.script_utils import run_command

    data = _write_jsonl(tmp_path / "items.jsonl", [dict(item, label=7) for item in ITEMS])
    argv = ["--dataset_name", data, "--scores_column", "scores", "--threshold", "0.5"]
    argv += ["--output_dir", str(tmp_path / "out")]
    assert run_command(lambda: stepeval_main(argv), prog="trl-erprm stepeval") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "trl-erprm stepeval: error: Every one of the 5 eval items was rejected ({'items_bad_label': 5})"
    )
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    "bad, fmt, message",
    [
        ({"scores": [0.9, None]}, "first_error", "Row 5: column 'scores' step 1 is None; .* Write NaN"),
        ({"scores": None}, "first_error", "Row 5: column 'scores' is None, not a list"),
        ({"label": [float("nan"), 0.0]}, "step_labels", "Row 5: column 'label' step 0 is nan; with --label_format"),
        ({"label": [1.0, 1.5]}, "step_labels", "Row 5: column 'label' step 1 is 1.5"),
        ({"label": [1.0]}, "step_labels", "Row 5: column 'label' holds 1 labels for 2 steps in 'steps'"),
    ],
)
def test_values_that_would_be_misread_are_errors_naming_the_row(tmp_path, bad, fmt, message):
    """A None score used to crash with a TypeError; a NaN step label counted as a good step (NaN < 0.5 is False)."""
    items = ITEMS if fmt == "first_error" else [dict(it, label=[1.0] * len(it["steps"])) for it in ITEMS]
    items = [*items, {"problem": "bad", "steps": ["a", "b"], "label": items[0]["label"], "scores": [0.9, 0.2], **bad}]
    args = StepEvalArguments(
        dataset_name=_write_jsonl(tmp_path / "items.jsonl", items),
        scores_column="scores",
        label_format=fmt,
        threshold=0.5,
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(ValueError, match=message):
        run_step_eval(args)
