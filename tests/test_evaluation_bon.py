"""Best-of-N runs: crafted datasets with known answers, an end-to-end run with tiny local models, resumption."""

import json
import logging
import shutil

import pytest

from trl_erprm.evaluation.bon import BestOfNArguments, bon_main, gold_answer_text, run_best_of_n


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# The four problems of tests/test_evaluation_metrics.py, as a dump that carries answers, correctness and step scores.
CRAFTED = [
    {
        "prompt": "A",
        "answers": ["5", "7", "7", "5"],
        "correct": [False, True, True, False],
        "scores": [[0.9], [0.6], [0.7], [0.1]],
    },
    {"prompt": "B", "answers": ["12", "10", None], "correct": [True, False, False], "scores": [[0.3], [0.8], []]},
    {"prompt": "C", "answers": ["1", "1"], "correct": [False, False], "scores": [[0.5], [0.4]]},
    {"prompt": "D", "answers": [], "correct": [], "scores": []},
]


def test_dump_with_correctness_and_scores_needs_no_model(tmp_path):
    data = _write_jsonl(tmp_path / "dump.jsonl", CRAFTED)
    argv = ["--dataset_name", data, "--dataset_split", "train", "--answers_column", "answers"]
    argv += ["--correctness_column", "correct", "--scores_column", "scores", "--aggregations", "min", "last"]
    argv += ["--n_values", "1", "2", "4", "--num_seeds", "3", "--output_dir", str(tmp_path / "out")]
    report = bon_main(argv)
    curves = report["curves"]
    assert report["n_values"] == [1, 2, 4] and report["num_problems"] == 4
    for agg in ("min", "last"):
        assert curves[f"bon_{agg}"][4]["mean"] == pytest.approx(0.0)
        assert curves[f"weighted_majority_{agg}"][4]["mean"] == pytest.approx(0.25)
    assert curves["majority"][4]["mean"] == pytest.approx(0.25)
    assert curves["pass@n"][4]["mean"] == pytest.approx(0.5)
    assert len(curves["majority"][2]["values"]) == 3
    assert report["bad_input"]["problems_without_candidates"] == 1
    assert report["bad_input"]["problems_with_fewer_than_max_n"] == 2
    assert report["bad_input"]["candidates_without_steps"] == 1
    assert report["bad_input"]["candidates_without_answer"] == 1
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["curves"]["pass@n"]["4"]["mean"] == pytest.approx(0.5)
    assert (tmp_path / "out" / "accuracy_vs_n.png").stat().st_size > 1000
    assert "| majority | " in (tmp_path / "out" / "table.md").read_text()


def test_candidates_are_graded_and_unparsable_golds_are_left_out(tmp_path):
    rows = [
        {"prompt": "P1", "gold_answer": "7", "completions": ["so \\boxed{7}", "The answer is 8"], "s": [[0.2], [0.9]]},
        {"prompt": "P2", "gold_answer": "}{", "completions": ["\\boxed{1}"], "s": [[0.5]]},
        {
            "prompt": "P3",
            "gold_answer": "3 + 0 = 3\n#### 3",
            "completions": ["\\boxed{3}", "x \\boxed{3}", "\\boxed{4}"],
        }
        | {"s": [[0.1], [0.2], [0.9]]},
    ]
    args = BestOfNArguments(
        dataset_name=_write_jsonl(tmp_path / "d.jsonl", rows),
        dataset_split="train",
        scores_column="s",
        aggregations=["min"],
        output_dir=str(tmp_path / "out"),
        plot=False,
    )
    report = run_best_of_n(args)
    assert report["n_values"] == [1, 2, 3] and report["num_problems"] == 2
    assert report["bad_input"]["problems_gold_unparsable"] == 1
    assert report["grading"] == {"correct": 3, "incorrect": 2, "gold_unparsable": 1}
    curves = report["curves"]
    # N=3: BoN picks 8 and 4 (wrong); majority picks 7 (tie, first) and 3; weighted picks 8 and 4; pass@3 right.
    assert curves["bon_min"][3]["mean"] == 0.0 and curves["majority"][3]["mean"] == 1.0
    assert curves["weighted_majority_min"][3]["mean"] == 0.0 and curves["pass@n"][3]["mean"] == 1.0
    assert "plot" not in report["files"]


def test_a_grading_timeout_is_not_a_wrong_answer(tmp_path, caplog):
    """A candidate whose grading timed out (twice: the grader retries with a longer limit) leaves its problem's
    accuracy unknown: the problem is left out and counted, with a warning, instead of scoring a wrong answer."""
    rows = [
        {
            "prompt": "P1",
            "gold_answer": "1",
            "completions": ["\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{2}"],
            "s": [[0.9], [0.1]],
        },
        {"prompt": "P2", "gold_answer": "7", "completions": ["so \\boxed{7}", "The answer is 8"], "s": [[0.9], [0.1]]},
    ]
    args = BestOfNArguments(
        dataset_name=_write_jsonl(tmp_path / "d.jsonl", rows),
        dataset_split="train",
        scores_column="s",
        aggregations=["min"],
        grading_timeout=0.5,
        output_dir=str(tmp_path / "out"),
        plot=False,
    )
    with caplog.at_level(logging.WARNING, logger="trl_erprm"):
        report = run_best_of_n(args)
    assert report["grading"] == {"timeout": 1, "incorrect": 2, "correct": 1}
    assert report["bad_input"]["problems_with_grading_timeouts"] == 1 and report["bad_input"]["grading_timeouts"] == 1
    assert report["num_problems"] == 1 and report["curves"]["bon_min"][2]["mean"] == 1.0  # P2 only
    assert "1 problem(s) have a candidate whose grading timed out" in caplog.text


def test_a_resumed_run_says_so_and_a_held_folder_is_refused(tmp_path, caplog):
    from trl_erprm import jobs
    from trl_erprm.evaluation.bon import _load_rows, open_store

    args = BestOfNArguments(
        dataset_name=_write_jsonl(tmp_path / "d.jsonl", CRAFTED),
        dataset_split="train",
        answers_column="answers",
        correctness_column="correct",
        scores_column="scores",
        output_dir=str(tmp_path / "out"),
        plot=False,
    )
    run_best_of_n(args)
    with caplog.at_level(logging.INFO, logger="trl_erprm"):
        run_best_of_n(args)
    assert f"Resuming {tmp_path / 'out'}: 4 of 4 problems done." in caplog.text
    with open_store(args, _load_rows(args)) as holder:  # the same run, started twice
        holder.open()
        with pytest.raises(jobs.JobLockedError, match="is in use by another job"):
            run_best_of_n(args)


def test_gold_answer_text():
    assert gold_answer_text("a\nb\n#### 1,000") == "1,000"
    assert gold_answer_text(42) == "42" and gold_answer_text(None) is None


def test_argument_errors():
    with pytest.raises(ValueError, match="--prm_model"):
        BestOfNArguments(dataset_name="x")
    with pytest.raises(ValueError, match="aggregations"):
        BestOfNArguments(dataset_name="x", prm_model="p", aggregations=["median"])
    with pytest.raises(ValueError, match="split_method"):
        BestOfNArguments(dataset_name="x", prm_model="p", split_method="commas")


@pytest.fixture(scope="module")
def gsm8k_subset(tmp_path_factory, sample_data):
    path = tmp_path_factory.mktemp("bon_data") / "gsm8k.jsonl"
    lines = (sample_data / "gsm8k_test.jsonl").read_text().splitlines()[:3]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _generation_args(data, output_dir, **overrides):
    kwargs = {
        "dataset_name": data,
        "dataset_split": "train",
        "prompt_column": "question",
        "gold_column": "answer",
        "num_candidates": 4,
        "max_new_tokens": 12,
        "chunk_size": 1,
        "num_seeds": 2,
        "output_dir": str(output_dir),
    }
    kwargs.update(overrides)
    return BestOfNArguments(**kwargs)


def test_end_to_end_generation_and_resume(tmp_path, gsm8k_subset, causal_lm_path, token_cls_path):
    first = tmp_path / "first"
    args = _generation_args(gsm8k_subset, first, generator_model=causal_lm_path, prm_model=token_cls_path)
    report = run_best_of_n(args)
    assert report["n_values"] == [1, 2, 4] and report["num_problems"] == 3
    for name in ("results.json", "table.md", "accuracy_vs_n.png"):
        assert (first / name).is_file()
    results = json.loads((first / "results.json").read_text())
    assert set(results["curves"]) >= {"bon_min", "bon_last", "bon_prod", "bon_mean", "majority", "pass@n"}
    part = first / "parts" / "part-00000.jsonl"
    records = [json.loads(line) for line in part.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(len(r["candidates"]) == 4 and len(r["step_scores"]) == 4 for r in records)
    assert all(0 < s < 1 for r in records for c in r["step_scores"] for s in c)
    assert sum(len(r["statuses"]) for r in records) == 12

    # A run killed while writing its last problem: a torn line, no reports. The rerun finishes it identically.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    lines = part.read_text().splitlines(keepends=True)
    (second / "parts" / "part-00000.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    for name in ("results.json", "table.md", "accuracy_vs_n.png"):
        (second / name).unlink()
    args.output_dir = str(second)
    resumed = run_best_of_n(args)
    assert (second / "parts" / "part-00000.jsonl").read_text() == part.read_text()
    assert resumed["curves"] == report["curves"]

    # Other arguments on the same folder: a clear error naming the difference.
    with pytest.raises(ValueError, match="num_candidates: 4 in the folder, 2 now"):
        run_best_of_n(
            _generation_args(
                gsm8k_subset, second, generator_model=causal_lm_path, prm_model=token_cls_path, num_candidates=2
            )
        )
    # Reporting arguments may change freely: the scored rows are reused.
    again = run_best_of_n(
        _generation_args(
            gsm8k_subset, second, generator_model=causal_lm_path, prm_model=token_cls_path, aggregations=["min"]
        )
    )
    assert set(again["curves"]) == {"bon_min", "majority", "weighted_majority_min", "pass@n"}


def _given(tmp_path, rows, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return BestOfNArguments(
        dataset_name=_write_jsonl(tmp_path / "given.jsonl", rows),
        scores_column="scores",
        correctness_column="correct",
        aggregations=["min"],
        num_seeds=1,
        output_dir=str(tmp_path / "out"),
        plot=False,
        **kwargs,
    )


@pytest.mark.parametrize(
    "row, extra, message",
    [
        # 3 scores, 2 correctness values: N was silently capped at 2 and the scores paired with the wrong candidates.
        ({"scores": [0.1, 0.9, 0.5], "correct": [1, 0]}, {}, "'scores': 3, 'correct': 2"),
        ({"scores": [0.9], "correct": [0, 1, 1]}, {}, "'scores': 1, 'correct': 3"),  # was an IndexError
        (
            {"completions": ["a", "b", "c"], "answers": ["1", "2"], "scores": [0.1, 0.9, 0.8], "correct": [0, 1, 1]},
            {"answers_column": "answers"},
            "'completions': 3, 'scores': 3, 'correct': 3, 'answers': 2",
        ),
        ({"completions": ["a", "b"], "scores": [0.1, 0.9, 0.8], "correct": [0, 1, 1]}, {}, "'completions': 2"),
    ],
)
def test_per_candidate_columns_of_different_lengths_are_an_error(tmp_path, row, extra, message):
    rows = [{"prompt": "q", **{k: v[:1] for k, v in row.items()}}, {"prompt": "p", **row}]  # row 0 is consistent
    with pytest.raises(ValueError, match="Row 1: the per-candidate columns have different lengths") as error:
        run_best_of_n(_given(tmp_path, rows, **extra))
    assert message in str(error.value) and "one value per candidate" in str(error.value)
    assert not (tmp_path / "out" / "results.json").exists()


def test_correctness_must_be_a_bool_or_0_1(tmp_path):
    """`bool("False")` is True: a string correctness used to count as correct. Ints, floats and bools equal to 0/1
    give the same result; anything else is an error naming the row, the column and the candidate."""
    results = []
    for k, correct in enumerate(([False, True], [0, 1], [0.0, 1.0])):
        rows = [{"prompt": "p", "scores": [0.9, 0.1], "correct": correct}]
        report = run_best_of_n(_given(tmp_path / str(k), rows, n_values=[2]))
        results.append((report["curves"]["bon_min"][2]["mean"], report["curves"]["pass@n"][2]["mean"]))
    assert results == [(0.0, 1.0)] * 3  # the 0.9 candidate is the wrong one
    for bad in (["False", "True"], [0.5, 1], [2, 0], [None, 1]):
        rows = [{"prompt": "p", "scores": [0.9, 0.1], "correct": [1, 1]}, {"prompt": "q", "scores": [0.9, 0.1]}]
        rows[1]["correct"] = bad
        with pytest.raises(ValueError, match=f"Row 1: column 'correct' candidate 0 is {bad[0]!r}; correctness must"):
            run_best_of_n(_given(tmp_path / "bad", rows, n_values=[2], overwrite=True))


def test_a_none_score_is_an_error_and_nan_ranks_last(tmp_path):
    rows = [{"prompt": "p", "scores": [[0.2, None], [0.5]], "correct": [1, 0]}]
    with pytest.raises(ValueError, match=r"Row 0: column 'scores' candidate 0 is \[0.2, None\]; .* Write NaN"):
        run_best_of_n(_given(tmp_path / "none", rows))
    rows = [{"prompt": "p", "scores": [None, 0.5], "correct": [1, 0]}]
    with pytest.raises(ValueError, match="Row 0: column 'scores' candidate 0 is None"):
        run_best_of_n(_given(tmp_path / "none_flat", rows))
    # NaN, the documented value of an unscored candidate, ranks below every real score.
    rows = [{"prompt": "p", "scores": [[float("nan"), 0.9], [0.5]], "correct": [1, 0]}]
    report = run_best_of_n(_given(tmp_path / "nan", rows, n_values=[2]))
    assert report["curves"]["bon_min"][2]["mean"] == 0.0 and report["bad_input"]["candidates_with_nan_scores"] == 1


def test_the_command_prints_a_one_line_error(tmp_path, capsys):
    from trl_erprm.script_utils import run_command

    data = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "scores": [0.9], "correct": [0, 1, 1]}])
    argv = ["--dataset_name", data, "--scores_column", "scores", "--correctness_column", "correct"]
    argv += ["--output_dir", str(tmp_path / "out"), "--plot", "False"]
    assert run_command(lambda: bon_main(argv), prog="trl-erprm bon") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("trl-erprm bon: error: Row 0: the per-candidate columns have different lengths")
    assert "Traceback" not in "\n".join(err)


def test_implicit_prm_values_vote_with_their_sigmoid(tmp_path):
    """Scores of an implicit PRM (q values, negative here) summed as they are made the weighted vote pick the answer
    with the least support; with `prm_type="implicit"` the vote weighs sigmoid(q), and `vote_weight="score"` on
    negative scores is an error naming the problem and the fix."""
    rows = [
        {
            "prompt": "A",
            "answers": ["4", "4", "4", "5"],
            "correct": [1, 1, 1, 0],
            "q": [[-0.1], [-0.1], [-0.1], [-0.2]],
        }
    ]
    kwargs = {
        "dataset_name": _write_jsonl(tmp_path / "d.jsonl", rows),
        "dataset_split": "train",
        "answers_column": "answers",
        "correctness_column": "correct",
        "scores_column": "q",
        "aggregations": ["min"],
        "n_values": [4],
        "plot": False,
    }
    report = run_best_of_n(BestOfNArguments(prm_type="implicit", output_dir=str(tmp_path / "a"), **kwargs))
    assert report["curves"]["weighted_majority_min"][4]["mean"] == 1.0  # "4": 3 x 0.475 > 0.450
    assert report["curves"]["bon_min"][4]["mean"] == 1.0  # ranking is unchanged: -0.1 > -0.2
    with pytest.raises(ValueError, match=r"candidate 0 of problem 0 \(aggregation 'min'\) weighs -0.1.*sigmoid"):
        run_best_of_n(BestOfNArguments(vote_weight="score", output_dir=str(tmp_path / "b"), **kwargs))
    with pytest.raises(ValueError, match="vote_weight must be 'auto' or one of"):
        BestOfNArguments(vote_weight="softmax", **kwargs)
