"""ERPRMLabeler end to end on real GSM8K problems with a tiny local model, the transformers backend and math-verify.

The generator is the tiny Qwen2 of the conftest, briefly trained on four short GSM8K solutions so that its rollouts
reach the gold answer from some prefixes and not from others: the outcomes mix 0s and 1s.
"""

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_erprm import jobs
from trl_erprm.data import convert_prm800k, gsm8k_to_stepwise
from trl_erprm.functional import er_label
from trl_erprm.labeling.grading import MathVerifyGrader
from trl_erprm.labeling.labeler import (
    ROW_STATUSES,
    ERPRMLabeler,
    check_row,
    labels_for_rows,
    labels_from_outcomes,
    main,
)
from trl_erprm.labeling.labeler_config import ERPRMLabelerConfig
from trl_erprm.labeling.rollout_cache import RolloutCache


REPO = Path(__file__).resolve().parents[1]
# Four of the shortest GSM8K test problems: rows 579, 462, 305 and 673 of the test split, lines 102, 101, 100 and 103
# of tests/data/gsm8k_test.jsonl (see its README).
GSM8K_ROWS = (102, 101, 100, 103)
JOB = {"num_rollouts": 3, "max_new_tokens": 24, "seed": 7, "batch_size": 1, "step_separator": "\n"}


def read_gsm8k(sample_data, indices=GSM8K_ROWS):
    lines = (sample_data / "gsm8k_test.jsonl").read_text().splitlines()
    return [gsm8k_to_stepwise(json.loads(lines[i]), i) for i in indices]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on shared cores two threads can be many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gsm8k_rows(sample_data):
    return read_gsm8k(sample_data)


@pytest.fixture(scope="module")
def answering_lm_path(causal_lm_path, gsm8k_rows, tmp_path_factory):
    """The tiny causal LM, trained for a few steps to write "<last step>\nThe answer is \\boxed{<gold>}."."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(causal_lm_path)
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    texts = ["\n".join(r["completions"][-2:]) for r in gsm8k_rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    path = tmp_path_factory.mktemp("answering_lm")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def grader():
    with MathVerifyGrader(num_workers=1, timeout=5.0) as g:
        yield g


@pytest.fixture(scope="module")
def reference_run(answering_lm_path, gsm8k_rows, grader, tmp_path_factory):
    """An uninterrupted one-process labeling job over `gsm8k_rows`: (labeler, dataset, output_dir)."""
    output_dir = tmp_path_factory.mktemp("reference") / "job"
    labeler = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **JOB)
    dataset = labeler.label(gsm8k_rows)
    return labeler, dataset, output_dir


# ---------------------------------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_labels_from_outcomes_hand_values():
    # p = 1/4: (1/eta) ln(1 - p + p e^eta) = ln(0.75 + 0.25 e) = 0.357375 for eta = 1; soft = p; hard = 1[p > 0].
    outcomes = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0], [1.0]]
    assert labels_from_outcomes(outcomes, 1.0) == pytest.approx([math.log(0.75 + 0.25 * math.e), 0.0, 1.0])
    assert labels_from_outcomes(outcomes, 1.0)[0] == pytest.approx(0.357375, abs=1e-6)
    assert labels_from_outcomes(outcomes, "soft") == pytest.approx([0.25, 0.0, 1.0])
    assert labels_from_outcomes(outcomes, "hard") == [1.0, 0.0, 1.0]


def test_labels_for_rows_groups_ragged_steps_and_keeps_missing_rows():
    rows = [[[0.0, 0.0, 0.0, 1.0], [1.0]], None, [[0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0]]]
    assert labels_for_rows(rows, "soft") == [[0.25, 1.0], None, [0.5, 0.25, 0.0]]
    hand = math.log(0.75 + 0.25 * math.e)
    assert labels_for_rows(rows, 1.0)[2] == pytest.approx([math.log(0.5 + 0.5 * math.e), hand, 0.0])
    assert labels_for_rows([], 1.0) == []


def test_check_row_statuses():
    assert check_row("Q", ["a", "b"], "3") == ("ok", "")
    assert check_row("Q", ["a", "b"], 3) == ("ok", "")
    assert check_row("", ["a"], "3")[0] == "missing_prompt"
    assert check_row(None, ["a"], "3")[0] == "missing_prompt"
    assert check_row("Q", [], "3")[0] == "empty_steps"
    assert check_row("Q", None, "3")[0] == "empty_steps"
    status, message = check_row("Q", ["a", "  "], "3")
    assert status == "empty_steps" and "step 1" in message
    assert check_row("Q", ["a", 5], "3")[0] == "empty_steps"
    assert check_row("Q", ["a"], None)[0] == "missing_gold"
    assert check_row("Q", ["a"], "  ")[0] == "missing_gold"


def test_config_validation():
    assert ERPRMLabelerConfig(eta="hard").eta == math.inf
    assert ERPRMLabelerConfig(eta="0.5").eta == 0.5
    with pytest.raises(ValueError, match="backend"):
        ERPRMLabelerConfig(backend="tgi")
    with pytest.raises(ValueError, match="prefix_placement"):
        ERPRMLabelerConfig(prefix_placement="system")
    with pytest.raises(ValueError, match="num_rollouts"):
        ERPRMLabelerConfig(num_rollouts=0)
    with pytest.raises(ValueError, match="hub_dataset_id"):
        ERPRMLabelerConfig(push_to_hub=True)
    assert "eta" not in ERPRMLabelerConfig().job_arguments()
    assert "batch_size" not in ERPRMLabelerConfig().job_arguments()


def test_rollout_prompts_for_each_placement(causal_lm_path, tokenizer):
    prefix = ["Step one.", "Step two."]
    assistant = ERPRMLabeler(model_name_or_path=causal_lm_path, tokenizer=tokenizer)
    text = tokenizer.decode(assistant.rollout_prompt("What is 1+1?", prefix))
    # The user turn asks for the format the grader reads best.
    assert text == (
        "<|im_start|>user\nWhat is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
        "<|im_end|>\n<|im_start|>assistant\nStep one.\nStep two.\n"
    )
    assert assistant.graded_text(prefix, "So \\boxed{2}") == "Step one.\nStep two.\nSo \\boxed{2}"

    user = ERPRMLabeler(model_name_or_path=causal_lm_path, tokenizer=tokenizer, prefix_placement="user")
    text = tokenizer.decode(user.rollout_prompt("What is 1+1?", prefix))
    assert text == (
        "<|im_start|>user\nWhat is 1+1?\nStep one.\nStep two.\nPlease reason step by step, and put your final answer "
        "within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert user.graded_text(prefix, "So \\boxed{2}") == "So \\boxed{2}"

    bare_instruction = ERPRMLabeler(model_name_or_path=causal_lm_path, tokenizer=tokenizer, user_instruction="")
    text = tokenizer.decode(bare_instruction.rollout_prompt("What is 1+1?", prefix))
    assert text == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\nStep one.\nStep two.\n"

    plain = ERPRMLabeler(
        model_name_or_path=causal_lm_path, tokenizer=tokenizer, prefix_placement="plain", step_separator="\n\n"
    )
    assert tokenizer.decode(plain.rollout_prompt("Q?", prefix)) == "Q?\n\nStep one.\n\nStep two.\n\n"

    tokenizer_without_template = tokenizer.__class__.from_pretrained(causal_lm_path)
    tokenizer_without_template.chat_template = None
    bare = ERPRMLabeler(model_name_or_path=causal_lm_path, tokenizer=tokenizer_without_template)
    with pytest.raises(ValueError, match="prefix_placement='plain'"):
        bare.rollout_prompt("Q?", prefix)


# ---------------------------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------------------------


def test_end_to_end_gsm8k_labels_equal_er_label(reference_run, gsm8k_rows):
    labeler, dataset, output_dir = reference_run
    assert len(dataset) == len(gsm8k_rows)
    assert dataset["prompt"] == [r["prompt"] for r in gsm8k_rows]  # input order kept
    assert set(dataset["status"]) == {"ok"}
    all_outcomes = []
    for row, source in zip(dataset, gsm8k_rows):
        outcomes, labels = row["step_outcomes"], row["labels"]
        assert len(outcomes) == len(labels) == len(source["completions"])
        assert all(len(o) == JOB["num_rollouts"] for o in outcomes[:-1])
        assert outcomes[-1] == [1.0]  # the gold solution, graded: correct
        for step_outcomes, label in zip(outcomes, labels):
            assert label == pytest.approx(float(er_label(step_outcomes, 1.0)), abs=1e-12)
        assert row["num_rollouts"] == JOB["num_rollouts"] * (len(outcomes) - 1)
        all_outcomes += [v for o in outcomes[:-1] for v in o]
    # The trained generator reaches the answer from some prefixes only: the labels carry information.
    assert 0.0 in all_outcomes and 1.0 in all_outcomes

    # Saved to disk with the reproducibility metadata, and a summary with counts.
    from datasets import load_from_disk

    saved = load_from_disk(str(output_dir / "dataset"))
    assert saved["step_outcomes"] == dataset["step_outcomes"]
    metadata = json.loads(saved.info.description)["erprm_labeling"]
    assert metadata["num_rollouts"] == 3 and metadata["seed"] == 7 and metadata["eta"] == 1.0
    assert metadata["model_name_or_path"] == labeler.config.model_name_or_path
    assert metadata["temperature"] == 1.0 and metadata["top_p"] == 1.0 and metadata["max_new_tokens"] == 24
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["status_counts"] == {"ok": len(gsm8k_rows)}
    assert summary["metadata"] == metadata
    assert summary["this_run"]["rollouts_generated"] == sum(dataset["num_rollouts"])


def test_finished_job_recomputes_labels_for_a_new_eta_without_rollouts(
    reference_run, answering_lm_path, grader, tmp_path
):
    labeler, dataset, output_dir = reference_run
    copy = shutil.copytree(output_dir, tmp_path / "job")
    again = ERPRMLabeler(
        model_name_or_path=answering_lm_path, output_dir=str(copy), grader=grader, **{**JOB, "eta": "soft"}
    )
    soft = again.label(dataset.select_columns(["prompt", "completions", "gold_answer"]))
    assert again.summary["this_run"]["rollouts_generated"] == 0
    assert again._backend is None  # the model was never loaded
    assert soft["step_outcomes"] == dataset["step_outcomes"]
    for row in soft:
        assert row["labels"] == pytest.approx([sum(o) / len(o) for o in row["step_outcomes"]])


def test_collator_recomputes_labels_at_batch_time(reference_run, tokenizer):
    pytest.importorskip("trl_erprm.erprm_trainer")
    labeler = reference_run[0]
    collator = labeler.collator(tokenizer, eta="hard")
    assert collator.eta == math.inf
    assert labeler.collator(tokenizer).eta == 1.0
    # Two rows tokenized with labels at the last token of each step (-100 elsewhere).
    features = [
        {"input_ids": [5, 6, 7, 8], "labels": [-100, 0.1, -100, 0.2], "step_outcomes": [[0.0, 1.0], [0.0, 0.0]]},
        {"input_ids": [5, 6], "labels": [-100, 0.3], "step_outcomes": [[1.0, 1.0, 0.0]]},
    ]
    batch = collator(features)
    assert batch["labels"].tolist() == [[-100.0, 1.0, -100.0, 0.0], [-100.0, 1.0, -100.0, -100.0]]
    soft = labeler.collator(tokenizer, eta=0.0)(features)
    assert soft["labels"][0, 1].item() == pytest.approx(0.5) and soft["labels"][1, 1].item() == pytest.approx(2 / 3)


def test_bad_rows_get_explicit_statuses_and_no_labels(answering_lm_path, gsm8k_rows, grader, tmp_path):
    good = gsm8k_rows[0]
    rows = [
        {**good, "gold_answer": None},
        {**good, "completions": []},
        {**good, "completions": [good["completions"][0], "   "]},
        {**good, "gold_answer": "}{"},  # math-verify cannot parse it
        {**good, "prompt": ""},
        good,
    ]
    labeler = ERPRMLabeler(
        model_name_or_path=answering_lm_path, output_dir=str(tmp_path / "job"), grader=grader, **JOB
    )
    dataset = labeler.label(rows)
    assert dataset["status"] == [
        "missing_gold",
        "empty_steps",
        "empty_steps",
        "gold_unparsable",
        "missing_prompt",
        "ok",
    ]
    assert set(dataset["status"]) <= set(ROW_STATUSES)
    for row in dataset.select(range(5)):
        assert row["labels"] is None and row["step_outcomes"] is None  # never a silent 0 label
        assert row["status_message"]
        assert row["num_rollouts"] == 0
    assert "'}{'" in dataset[3]["status_message"]
    assert dataset[5]["labels"] is not None
    assert labeler.summary["status_counts"] == {
        "ok": 1,
        "missing_prompt": 1,
        "empty_steps": 2,
        "missing_gold": 1,
        "gold_unparsable": 1,
    }
    # Only the good row was rolled out.
    assert labeler.summary["this_run"]["rollouts_generated"] == JOB["num_rollouts"] * (len(good["completions"]) - 1)


def test_generator_returning_no_text_is_reported(causal_lm_path, gsm8k_rows, grader, tmp_path):
    """A real model that always ends at once: zeroed final norm -> equal logits -> greedy picks token 0, the EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(causal_lm_path)
    assert tokenizer.eos_token_id == 0
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    labeler = ERPRMLabeler(
        model=model,
        tokenizer=tokenizer,
        output_dir=str(tmp_path / "job"),
        grader=grader,
        **{**JOB, "temperature": 0.0},
    )
    dataset = labeler.label(gsm8k_rows[:2])
    assert dataset["status"] == ["no_text", "no_text"]
    assert dataset["labels"] == [None, None]
    assert "no text" in dataset[0]["status_message"] and "step 0" in dataset[0]["status_message"]
    assert dataset[0]["num_empty_rollouts"] == dataset[0]["num_rollouts"] > 0


class ScriptedBackend:
    """A rollout backend (the labeler's public `generate(prompts, n, sampling, seeds)` contract) whose continuations
    are given: for each prompt, the texts of the first key of `script` found in the decoded prompt."""

    name = "scripted"

    def __init__(self, tokenizer, script: dict[str, list[str]]):
        self.tokenizer, self.script = tokenizer, script

    def generate(self, prompts, n, sampling, seeds):
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            texts = next(v for k, v in self.script.items() if k in text)
            out.append([texts[j % len(texts)] for j in range(n)])
        return out

    def close(self):
        pass


HOSTILE = "\\boxed{9^{9^{9^{9^{9}}}}}"  # times out, every time


def test_grading_timeouts_are_left_out_of_the_labels_and_counted(tokenizer, tmp_path, caplog):
    """A timeout is not a wrong answer: a timed-out rollout is left out of its step's outcomes and counted; a step
    whose rollouts all timed out gives the row the status `grading_timeout` (no labels), never a 0 label."""
    rows = [
        {
            "prompt": "Mixed: what is 3 + 4?",
            "completions": ["3 + 4 = 7.", "The answer is \\boxed{7}."],
            "gold_answer": "7",
        },
        {
            "prompt": "Stuck: what is 2 + 2?",
            "completions": ["2 + 2 = 4.", "The answer is \\boxed{4}."],
            "gold_answer": "4",
        },
    ]
    backend = ScriptedBackend(
        tokenizer, {"Mixed": [HOSTILE, "The answer is 7", "The answer is 8"], "Stuck": [HOSTILE]}
    )
    with MathVerifyGrader(num_workers=1, timeout=0.5, retry_timeout=0.5) as grader:
        labeler = ERPRMLabeler(
            backend=backend, tokenizer=tokenizer, grader=grader, output_dir=str(tmp_path / "job"), num_rollouts=3
        )
        with caplog.at_level(logging.INFO, logger="trl_erprm"):
            dataset = labeler.label(rows)
    assert dataset["status"] == ["ok", "grading_timeout"]
    assert dataset[0]["step_outcomes"] == [[1.0, 0.0], [1.0]]  # 2 graded rollouts: the timeout is not a 0
    assert dataset[0]["num_grading_timeouts"] == 1 and dataset[0]["num_grading_failures"] == 1
    assert dataset[1]["labels"] is None and dataset[1]["step_outcomes"] is None
    assert "timed out for every rollout of step 0" in dataset[1]["status_message"]
    assert dataset[1]["num_grading_timeouts"] == 3
    summary = labeler.summary
    assert summary["status_counts"] == {"ok": 1, "grading_timeout": 1} and summary["num_grading_timeouts"] == 4
    assert "4 grading timeouts" in caplog.text and "4 rollouts timed out in grading" in caplog.text


def test_most_rollouts_without_an_answer_warn_with_the_share_and_the_fix(tokenizer, grader, tmp_path, caplog):
    rows = [
        {
            "prompt": f"Q{i}: what is {i} + 1?",
            "completions": [f"{i} + 1 = {i + 1}.", f"So \\boxed{{{i + 1}}}."],
            "gold_answer": str(i + 1),
        }
        for i in range(3)
    ]
    backend = ScriptedBackend(tokenizer, {"": ["Let me think about it some more", "The answer is 9999", "Hmm"]})
    labeler = ERPRMLabeler(
        backend=backend, tokenizer=tokenizer, grader=grader, output_dir=str(tmp_path), num_rollouts=24, batch_size=1
    )
    with caplog.at_level(logging.WARNING, logger="trl_erprm"):
        dataset = labeler.label(rows)
    assert set(dataset["status"]) == {"ok"} and labeler.summary["num_no_answer_rollouts"] == 48
    warnings = [r.getMessage() for r in caplog.records if "no final answer the grader can read" in r.getMessage()]
    # Once as soon as 64 rollouts are graded (after the third row), once in the summary.
    assert len(warnings) == 2 and warnings[0].endswith("(so far; the job goes on)")
    assert "48 of 72 rollouts (67%)" in warnings[-1]
    assert "user_instruction" in warnings[-1] and "max_new_tokens" in warnings[-1]


def test_prm800k_sample_last_steps_are_graded_from_the_answer_heading(answering_lm_path, grader, tmp_path):
    """PRM800K solutions end with "# Answer" and the number on its own line: a fully correct solution's last step is
    1.0 (before, every last step was 0.0). Uses the sample copied into tests/data."""
    lines = (REPO / "tests" / "data" / "prm800k_samples.jsonl").read_text().splitlines()
    rows = convert_prm800k([json.loads(line) for line in lines])
    labeler = ERPRMLabeler(
        model_name_or_path=answering_lm_path,
        output_dir=str(tmp_path),
        grader=grader,
        **{**JOB, "num_rollouts": 1, "max_new_tokens": 4, "batch_size": 8},
    )
    dataset = labeler.label(rows)
    last = [None if o is None else o[-1] for o in dataset["step_outcomes"]]
    has_answer = ["# Answer" in r["completions"][-1] for r in rows]
    assert dataset["status"] == ["missing_gold" if r["gold_answer"] is None else "ok" for r in rows]
    # Every solution that reaches its "# Answer" (with the right number) is correct; the others stop at a wrong step.
    assert last == [None if r["gold_answer"] is None else ([1.0] if a else [0.0]) for r, a in zip(rows, has_answer)]
    assert last.count([1.0]) == 3


def test_rows_of_mixed_types_name_the_row_the_column_and_the_fix(answering_lm_path, gsm8k_rows, grader, tmp_path):
    good = gsm8k_rows[0]
    labeler = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(tmp_path), grader=grader, **JOB)
    with pytest.raises(ValueError) as error:
        labeler.label([good, {**good, "completions": 5}])
    message = str(error.value)
    assert "row 1, column 'completions'" in message and "list of step strings" in message
    with pytest.raises(
        ValueError, match=r"row 2, column 'gold_answer': number 3, but row 0 has a string.*str\(answer\)"
    ):
        labeler.label([good, good, {**good, "gold_answer": 3}])
    with pytest.raises(ValueError, match=r"row 0, column 'completions': a list mixing types"):
        labeler.label([{**good, "completions": ["a step", 7]}])
    assert not (tmp_path / "manifest.json").exists()  # refused before the job started
    # A None step is a row-level problem, not a dataset error: the row gets a status naming it.
    dataset = labeler.label([{**good, "completions": [good["completions"][0], None]}])
    assert dataset["status"] == ["empty_steps"] and "step 1" in dataset[0]["status_message"]


def test_a_folder_held_by_a_running_job_is_refused_at_once(answering_lm_path, gsm8k_rows, grader, tmp_path):
    """Two jobs with the same arguments on one folder wrote every row twice; now the second stops before any work,
    and `trl-erprm label` says so in one line naming the holder."""
    output_dir = tmp_path / "job"
    holder = jobs.JobStore(output_dir, jobs.make_manifest("another-job/1", {}, 0, jobs.content_hash([])))
    holder.open()
    try:
        labeler = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **JOB)
        with pytest.raises(jobs.JobLockedError, match=f"in use by another job \\(pid {os.getpid()} on "):
            labeler.label(gsm8k_rows[:1])
        assert labeler._backend is None  # no model loaded, no row written
        data = _write_jsonl(gsm8k_rows[:1], tmp_path / "rows.jsonl")
        command = [sys.executable, "-m", "trl_erprm.cli", "label", *_cli_args(answering_lm_path, data, output_dir)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        holder.close()
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"trl-erprm label: error: The output folder {output_dir} is in use by another job")
    assert f"pid {os.getpid()} on" in lines[0] and "choose another output_dir" in lines[0]
    assert jobs.read_results(output_dir) == {}


def test_the_corrected_command_after_a_failed_start_runs_in_the_same_folder(
    answering_lm_path, gsm8k_rows, grader, tmp_path
):
    output_dir = str(tmp_path / "job")
    wrong = ERPRMLabeler(
        model_name_or_path=str(tmp_path / "no-such-model"), output_dir=output_dir, grader=grader, **JOB
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises for a missing folder
        wrong.label(gsm8k_rows[:1])
    assert json.loads((tmp_path / "job" / "manifest.json").read_text())["job"]["model_name_or_path"].endswith("model")
    right = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=output_dir, grader=grader, **JOB)
    assert right.label(gsm8k_rows[:1])["status"] == ["ok"]


def test_start_up_and_resumption_are_announced(answering_lm_path, gsm8k_rows, grader, tmp_path, caplog):
    output_dir = tmp_path / "job"
    first = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **JOB)
    with caplog.at_level(logging.INFO, logger="trl_erprm"):
        first.label(gsm8k_rows[:2])
    messages = [r.getMessage() for r in caplog.records]
    starting = next(
        i for i, m in enumerate(messages) if m.startswith("Starting 1 grading worker(s) in the background")
    )
    loading = next(i for i, m in enumerate(messages) if m.startswith(f"Loading the generator {answering_lm_path}"))
    assert messages[0] == f"ER-PRM labeling: 2 rows to label in {output_dir}." and starting < loading
    part = output_dir / "parts" / "part-00000.jsonl"
    part.write_text(part.read_text().splitlines()[0] + "\n")  # as if killed after the first row
    caplog.clear()
    again = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **JOB)
    with caplog.at_level(logging.INFO, logger="trl_erprm"):
        again.label(gsm8k_rows[:2])
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"Resuming {output_dir}: 1 of 2 rows done."
    assert messages[1] == f"ER-PRM labeling: 1 rows to label in {output_dir}."


def test_an_unwritable_output_folder_is_one_line_with_the_fix(answering_lm_path, gsm8k_rows, grader, tmp_path):
    (tmp_path / "a_file").write_text("x")
    output_dir = tmp_path / "a_file" / "job"
    labeler = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **JOB)
    with pytest.raises(jobs.JobFolderError) as error:
        labeler.label(gsm8k_rows[:1])
    assert "\n" not in str(error.value) and str(output_dir) in str(error.value) and "output_dir" in str(error.value)
    assert (tmp_path / "a_file").read_text() == "x"


def test_missing_column_is_a_clear_error(answering_lm_path, gsm8k_rows, tmp_path):
    labeler = ERPRMLabeler(
        model_name_or_path=answering_lm_path, output_dir=str(tmp_path / "job"), gold_column="answer"
    )
    with pytest.raises(ValueError, match="no column 'answer'.*gold_column="):
        labeler.label(gsm8k_rows)


def test_job_folder_of_another_job_is_refused(reference_run, answering_lm_path, gsm8k_rows, grader, tmp_path):
    _, _, output_dir = reference_run
    other = ERPRMLabeler(
        model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **{**JOB, "num_rollouts": 5}
    )
    with pytest.raises(ValueError) as error:
        other.label(gsm8k_rows)
    message = str(error.value)
    assert "num_rollouts: 3 in the folder, 5 now" in message
    assert "new output_dir" in message and "overwrite=True" in message
    assert "seed" not in message  # only what differs is listed

    fewer = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **JOB)
    with pytest.raises(ValueError, match="number of input rows: 4 in the folder, 3 now"):
        fewer.label(gsm8k_rows[:3])
    with pytest.raises(ValueError, match="different content or order"):
        fewer.label(gsm8k_rows[::-1])

    stranger = tmp_path / "not_a_job"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    elsewhere = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(stranger), grader=grader, **JOB)
    with pytest.raises(ValueError, match="not a job folder"):
        elsewhere.label(gsm8k_rows)
    assert (stranger / "notes.txt").read_text() == "mine"


def test_overwrite_discards_the_other_jobs_results(answering_lm_path, gsm8k_rows, grader, tmp_path):
    first = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(tmp_path), grader=grader, **JOB)
    first.label(gsm8k_rows[:1])
    job = {**JOB, "num_rollouts": 2, "overwrite": True}
    second = ERPRMLabeler(model_name_or_path=answering_lm_path, output_dir=str(tmp_path), grader=grader, **job)
    dataset = second.label(gsm8k_rows[:1])
    assert [len(o) for o in dataset[0]["step_outcomes"]] == [2] * (len(gsm8k_rows[0]["completions"]) - 1) + [1]
    assert json.loads((tmp_path / "manifest.json").read_text())["job"]["num_rollouts"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# Identical prefixes are rolled out once
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlapping_rows(gsm8k_rows):
    """Solutions of one problem sharing their first steps word for word, an exact repeat, and another problem."""
    base = gsm8k_rows[3]  # 6 steps: 5 prefixes
    steps = base["completions"]
    variant = {**base, "completions": [*steps[:3], *(f"{s} (checked)" for s in steps[3:-1]), steps[-1]]}
    return [base, variant, dict(base), gsm8k_rows[0]]


def _counting_job(model_path, grader, output_dir, **overrides):
    """A labeler on a real TransformersBackend whose `stats` count the sequences it decodes."""
    from trl_erprm.labeling.backends import TransformersBackend

    backend = TransformersBackend(model_path, batch_size=64)
    labeler = ERPRMLabeler(
        model_name_or_path=model_path, backend=backend, grader=grader, output_dir=str(output_dir), **JOB
    )
    if overrides:
        labeler = ERPRMLabeler(
            labeler.config, backend=backend, grader=grader, **{**JOB, "output_dir": str(output_dir), **overrides}
        )
    return labeler, backend


def test_identical_prefixes_are_rolled_out_once_and_rows_equal_a_job_without_reuse(
    answering_lm_path, overlapping_rows, grader, tmp_path
):
    n = JOB["num_rollouts"]
    plain, plain_backend = _counting_job(answering_lm_path, grader, tmp_path / "plain", reuse_rollouts=False)
    expected = plain.label(overlapping_rows)
    total = sum(len(r["completions"]) - 1 for r in overlapping_rows)  # 5 + 5 + 5 + 2 step prefixes
    assert plain_backend.stats["sequences"] == total * n and plain.summary["this_run"]["prefixes_reused"] == 0
    assert not (tmp_path / "plain" / "rollouts").exists()

    for batch_size in (1, 4):  # repeats across batches (through the cache) and inside one backend call
        job, backend = _counting_job(answering_lm_path, grader, tmp_path / f"reuse{batch_size}", batch_size=batch_size)
        dataset = job.label(overlapping_rows)
        assert dataset.to_list() == expected.to_list()  # the same rows, outcomes, labels and counts
        distinct = 5 + 2 + 0 + 2  # the variant adds its 2 own prefixes, the repeat none
        assert backend.stats["sequences"] == distinct * n
        run = job.summary["this_run"]
        assert run["prefixes"] == total and run["prefixes_rolled_out"] == distinct
        assert run["prefixes_reused"] == total - distinct and run["rollouts_reused"] == (total - distinct) * n
        assert run["rollouts_generated"] == distinct * n
    assert expected["num_rollouts"] == [5 * n, 5 * n, 5 * n, 2 * n]  # a row counts the rollouts its labels rest on


def test_a_job_sharing_a_rollout_cache_rolls_out_only_what_is_new(
    answering_lm_path, overlapping_rows, gsm8k_rows, grader, tmp_path, caplog
):
    """A second job that adds rows, pointed at the first job's rollout cache, rolls out only the new prefixes and
    writes the rows a job without any cache writes; a job with other sampling arguments reuses nothing."""
    n, cache = JOB["num_rollouts"], tmp_path / "shared-rollouts"
    first, first_backend = _counting_job(answering_lm_path, grader, tmp_path / "first", rollout_cache_dir=str(cache))
    first.label(overlapping_rows[:2])
    assert first_backend.stats["sequences"] == (5 + 2) * n
    assert not (tmp_path / "first" / "rollouts").exists()  # stored in the shared folder instead

    more, more_backend = _counting_job(answering_lm_path, grader, tmp_path / "more", rollout_cache_dir=str(cache))
    with caplog.at_level(logging.INFO, logger="trl_erprm"):
        dataset = more.label(overlapping_rows)
    assert more_backend.stats["sequences"] == 2 * n  # only the new problem's prefixes
    assert more.summary["this_run"]["prefixes_reused"] == 5 + 5 + 5
    assert f"Rollout cache {cache}: 7 step prefixes already rolled out are reused." in caplog.text
    assert "Rollouts reused for 15 of 17 step prefixes (88%" in caplog.text
    fresh, _ = _counting_job(answering_lm_path, grader, tmp_path / "fresh", reuse_rollouts=False)
    assert dataset.to_list() == fresh.label(overlapping_rows).to_list()

    other, other_backend = _counting_job(
        answering_lm_path, grader, tmp_path / "other", rollout_cache_dir=str(cache), temperature=0.7
    )
    other.label(gsm8k_rows[:2])  # prefixes stored under temperature 1.0 by the jobs above
    assert other.summary["this_run"]["prefixes_reused"] == 0
    assert other_backend.stats["sequences"] == (2 + 2) * n


def test_a_resumed_job_reuses_the_stored_rollouts_and_rolls_out_nothing_twice(
    answering_lm_path, overlapping_rows, grader, tmp_path
):
    output_dir = tmp_path / "job"
    first, first_backend = _counting_job(answering_lm_path, grader, output_dir)
    reference = first.label(overlapping_rows)
    part = output_dir / "parts" / "part-00000.jsonl"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:1]))  # killed after the first row was written
    shutil.rmtree(output_dir / "dataset")
    again, backend = _counting_job(answering_lm_path, grader, output_dir)
    resumed = again.label(overlapping_rows)
    assert resumed.to_list() == reference.to_list()
    assert backend.stats["sequences"] == 0  # every prefix of the 3 rows left had been rolled out and stored
    assert again.summary["this_run"]["prefixes_reused"] == 5 + 5 + 2


def test_rollout_seeds_and_keys_follow_the_prefix_content(answering_lm_path, gsm8k_rows):
    labeler = ERPRMLabeler(model_name_or_path=answering_lm_path, **JOB)
    row = gsm8k_rows[3]
    ids = labeler.rollout_prompt(row["prompt"], row["completions"][:2])
    assert labeler.rollout_seed(ids) == labeler.rollout_seed(list(ids))  # the row index plays no part
    assert labeler.rollout_seed(ids) != labeler.rollout_seed(ids[:-1])
    key = labeler.rollout_key(ids, "9")
    assert key != labeler.rollout_key(ids, "10")  # outcomes are graded against the gold answer
    for change in ({"seed": 8}, {"temperature": 0.5}, {"num_rollouts": 4}, {"max_new_tokens": 25}):
        other = ERPRMLabeler(model_name_or_path=answering_lm_path, **{**JOB, **change})
        assert other.rollout_key(ids, "9") != key, change
    for same in ({"batch_size": 8}, {"eta": "hard"}, {"grading_num_workers": 2}):
        assert ERPRMLabeler(model_name_or_path=answering_lm_path, **{**JOB, **same}).rollout_key(ids, "9") == key


def test_a_rollout_cache_shared_by_writers_gives_each_its_own_part(tmp_path):
    """Two jobs (or ranks) writing one cache at once take different parts; a torn last line is ignored; a third
    reader sees every complete entry."""
    first, second = RolloutCache(tmp_path / "cache"), RolloutCache(tmp_path / "cache")
    assert first.open() == 0 and second.open() == 0
    first.add({"a": {"outcomes": [1.0], "counts": {}}})
    second.add({"b": {"outcomes": [0.0, 1.0], "counts": {}}, "a": {"outcomes": [9.0], "counts": {}}})
    first.close()
    second.close()
    parts = sorted(p.name for p in (tmp_path / "cache" / "parts").iterdir())
    assert parts == ["part-00000.jsonl", "part-00001.jsonl"]
    with open(tmp_path / "cache" / "parts" / "part-00001.jsonl", "ab") as f:
        f.write(b'{"key": "c", "outco')  # killed in the middle of a write
    with RolloutCache(tmp_path / "cache") as third:
        assert third.loaded == 2 and third.get("a")["outcomes"] == [1.0] and third.get("b")["outcomes"] == [0.0, 1.0]
        assert third.get("c") is None


def test_a_folder_that_is_not_a_rollout_cache_is_refused(answering_lm_path, gsm8k_rows, grader, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    labeler = ERPRMLabeler(
        model_name_or_path=answering_lm_path,
        output_dir=str(tmp_path / "job"),
        grader=grader,
        rollout_cache_dir=str(tmp_path / "notes"),
        **JOB,
    )
    with pytest.raises(ValueError, match="not a rollout cache"):
        labeler.label(gsm8k_rows[:1])
    assert (tmp_path / "notes" / "mine.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------------------------------
# Resumption after SIGKILL
# ---------------------------------------------------------------------------------------------------------------------


def _write_jsonl(rows, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli_args(model_path, data_path, output_dir):
    args = ["--model_name_or_path", model_path, "--dataset_name", str(data_path), "--output_dir", str(output_dir)]
    for key, value in JOB.items():
        args += [f"--{key}", str(value)]
    return args


def _complete_lines(output_dir):
    parts = Path(output_dir) / "parts"
    return sum(p.read_bytes().count(b"\n") for p in parts.glob("part-*.jsonl")) if parts.is_dir() else 0


LABEL_SCRIPT = REPO / "examples" / "erprm_label.py"


def killed_after_first_row(argv: list[str]) -> None:
    """Run the labeling CLI (`examples/erprm_label.py`) and die by SIGKILL, with its whole process group (the grader
    workers and their forkserver), right after the first row's record is written and fsynced.

    The kill comes from the job's own part writer, so it lands at the same point on every machine (polling for the
    first row from outside raced with a fast machine, which could write every row between two polls).
    """
    import runpy

    class KillAfterFirstRecord(jobs.PartWriter):
        def write(self, records):
            records = list(records)
            super().write(records)  # appended, flushed and fsynced
            if records:
                os.killpg(os.getpgid(0), signal.SIGKILL)

    class KilledJobStore(jobs.JobStore):
        def writer(self):
            super().writer().close()  # the store's own checks (the job folder is locked by this process)
            return KillAfterFirstRecord(self.root, self.rank)  # the job's results, not the rollout cache's part

    jobs.JobStore = KilledJobStore  # the labeler opens its job folder as `jobs.JobStore(...)`
    sys.argv = [str(LABEL_SCRIPT), *argv]
    runpy.run_path(str(LABEL_SCRIPT), run_name="__main__")


def test_sigkill_then_resume_equals_uninterrupted_run(reference_run, answering_lm_path, gsm8k_rows, grader, tmp_path):
    """Kill the job (SIGKILL) after it wrote a row, simulate a torn write, restart it: same rows as uninterrupted."""
    _, reference, _ = reference_run
    data = _write_jsonl(gsm8k_rows, tmp_path / "rows.jsonl")
    output_dir = tmp_path / "job"
    command = [sys.executable, __file__, *_cli_args(answering_lm_path, data, output_dir)]  # killed_after_first_row
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:  # it hung: take the job, its grader workers and their forkserver down
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the job ended before it was killed: " + stderr.decode()[-2000:]
    assert JOB["batch_size"] == 1 and len(gsm8k_rows) > 1
    written = _complete_lines(output_dir)
    assert written == 1, "the job must be killed right after its first row"
    assert not (output_dir / "dataset").exists()

    # A kill in the middle of a write leaves a torn line: add one (a prefix of a real record of a missing row).
    part = output_dir / "parts" / "part-00000.jsonl"
    done = {json.loads(line)["index"] for line in part.read_text().splitlines()}
    missing = min(set(range(len(gsm8k_rows))) - done)
    torn = json.dumps({"index": missing, "status": "ok", "step_outcomes": [[1.0, 1.0, 1.0]]})
    with open(part, "ab") as f:
        f.write(torn[: len(torn) // 2].encode())
    assert len(jobs.read_results(output_dir)) == written

    resumed_labeler = ERPRMLabeler(
        model_name_or_path=answering_lm_path, output_dir=str(output_dir), grader=grader, **JOB
    )
    # The killed job may have stored the rollouts of a row it had not written yet: they are reused, not redone.
    stored = RolloutCache(output_dir / "rollouts")
    stored.open()
    stored.close()
    keys = [
        resumed_labeler.rollout_key(
            resumed_labeler.rollout_prompt(r["prompt"], r["completions"][:k]), r["gold_answer"]
        )
        for i, r in enumerate(gsm8k_rows)
        if i not in done
        for k in range(1, len(r["completions"]))
    ]
    resumed = resumed_labeler.label(gsm8k_rows)
    # Only the prefixes of the rows without a complete line, and not stored, were rolled out again.
    reused = JOB["num_rollouts"] * sum(key in stored.entries for key in keys)
    expected = sum(n for i, n in enumerate(reference["num_rollouts"]) if i not in done)
    assert resumed_labeler.summary["this_run"]["rollouts_generated"] == expected - reused
    assert resumed_labeler.summary["this_run"]["rollouts_reused"] == reused
    assert resumed.to_list() == reference.to_list()  # row for row: none lost, none duplicated, same order
    lines = part.read_bytes().splitlines()
    assert len(lines) == len(gsm8k_rows)  # the torn line was truncated, every row written once
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(len(gsm8k_rows)))


def test_cli_main_runs_a_job(answering_lm_path, gsm8k_rows, tmp_path):
    data = _write_jsonl(gsm8k_rows[:1], tmp_path / "rows.jsonl")
    dataset = main([*_cli_args(answering_lm_path, data, tmp_path / "job"), "--eta", "hard", "--num_rollouts", "2"])
    assert dataset["status"] == ["ok"]
    assert dataset[0]["labels"] == [max(o) for o in dataset[0]["step_outcomes"]]


# ---------------------------------------------------------------------------------------------------------------------
# Data-parallel
# ---------------------------------------------------------------------------------------------------------------------


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
def test_two_process_accelerate_launch_equals_one_process_run(reference_run, answering_lm_path, gsm8k_rows, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 examples/erprm_label.py` on the CPU: the merged dataset of the
    two processes equals the one-process run, row for row."""
    _, reference, _ = reference_run
    data = _write_jsonl(gsm8k_rows, tmp_path / "rows.jsonl")
    output_dir = tmp_path / "job"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # `--cpu` with 2 processes starts one process unless MPI is set up; `--multi_gpu` picks the torchrun
        # launcher, and the labeler's PartialState(cpu=True) (no accelerator here) makes the processes use gloo.
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(REPO / "examples" / "erprm_label.py"),
        *_cli_args(answering_lm_path, data, output_dir),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"status_counts": {"ok": 4}' in result.stdout
    parts = sorted(p.name for p in (output_dir / "parts").glob("*.jsonl"))
    assert parts == ["part-00000.jsonl", "part-00001.jsonl"]
    # With batch_size=1 the rows alternate between the processes: each wrote its share.
    for rank, name in enumerate(parts):
        indices = [json.loads(line)["index"] for line in (output_dir / "parts" / name).read_text().splitlines()]
        assert indices == list(range(rank, len(gsm8k_rows), 2))
    from datasets import load_from_disk

    merged = load_from_disk(str(output_dir / "dataset"))
    assert merged.to_list() == reference.to_list()


if __name__ == "__main__":  # the child of the SIGKILL test: `python tests/test_labeler.py --model_name_or_path ...`
    killed_after_first_row(sys.argv[1:])
