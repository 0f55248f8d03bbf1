"""RAFT: one round selects exactly the argmax of the PRM's scores and changes the policy; a run stopped between
stages (or killed with SIGKILL) resumes to the same result; bad input stops with a message."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trl_erprm.jobs import read_results
from trl_erprm.labeling.grading import MathVerifyGrader
from trl_erprm.raft import RAFTConfig, run_raft, select_samples
from trl_erprm.raft.selection import keepable, majority_scores, outcome_scores


ROOT = Path(__file__).resolve().parents[1]
TRAIN = [{"prompt": f"What is {a} + 2?", "gold": str(a + 2)} for a in range(6)]
HELD_OUT = [{"prompt": f"What is {a} + 3?", "gold": str(a + 3)} for a in range(2)]


def config(out, **overrides):
    values = {
        "output_dir": str(out),
        "num_rounds": 1,
        "num_samples": 3,
        "max_new_tokens": 8,
        "scoring": "prm",
        "prm_step_separator": "\n",
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "chunk_size": 4,
        "seed": 0,
        **overrides,
    }
    return RAFTConfig(**values)


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.fixture(scope="module")
def baseline(causal_lm_path, token_cls_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("raft") / "run"
    report = run_raft(
        config(out, prm_model=token_cls_path), causal_lm_path, train_problems=TRAIN, eval_problems=HELD_OUT
    )
    return out, report


def test_selection_rules():
    nan = math.nan
    assert select_samples([0.2, 0.9, 0.9, nan]) == [1]  # ties to the lowest index, NaN never
    assert select_samples([0.2, 0.9, 0.5], "top_k", top_k=2) == [1, 2]
    assert select_samples([0.2, 0.9, 0.5], "threshold", threshold=0.5) == [1, 2]
    assert select_samples([0.2, 0.9, 0.5], allowed=[True, False, True]) == [2]
    assert select_samples([nan, nan]) == [] and select_samples([0.1], "threshold", threshold=0.5) == []
    assert outcome_scores(["correct", "incorrect", "no_answer", "timeout"])[:3] == [1.0, 0.0, 0.0]
    assert math.isnan(outcome_scores(["timeout"])[0])
    assert majority_scores(["4", "4", "5", None]) == [0.5, 0.5, 0.0, 0.0]  # the majority answer's samples only
    assert majority_scores(["5", "4", "4", "5"]) == [0.5, 0.0, 0.0, 0.5]  # a tie goes to the answer given first
    assert majority_scores([None, None]) == [0.0, 0.0]
    assert keepable("outcome", outcome_scores(["correct", "incorrect", "no_answer", "timeout"])) == [1, 0, 0, 0]
    assert keepable("majority", [0.5, 0.5, 0.0, 0.0]) == [True, True, False, False]
    assert keepable("prm", [-0.3, 0.0, nan]) == [True, True, False]
    with pytest.raises(ValueError, match="Unknown scoring"):
        keepable("vote", [0.1])
    with pytest.raises(ValueError, match="score_threshold"):
        select_samples([0.1], "threshold")


@pytest.mark.slow
def test_one_round_selects_the_prm_argmax_and_changes_the_policy(baseline, causal_lm_path, token_cls_path):
    from trl_erprm import PRMReward
    from trl_erprm.jobs import read_results

    out, report = baseline
    samples = read_results(out / "round-1" / "samples")
    reward = PRMReward(token_cls_path, step_separator="\n")
    kept = json.loads((out / "round-1" / "selection.json").read_text())["kept"]
    for i, problem in enumerate(TRAIN):
        texts = samples[i]["completions"]
        assert len(texts) == 3
        scores = reward([problem["prompt"]] * 3, texts)
        best = max(range(3), key=lambda j: (scores[j], -j))
        assert kept[str(i)] == [best], (i, scores)
    assert report["rounds"][1]["selected"] == len(TRAIN)
    before, after = weights(causal_lm_path), weights(out / "round-1" / "policy")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert report["policy"] == str(out / "round-1" / "policy")
    assert len(report["accuracy"]) == 2 and all(a is not None and 0.0 <= a <= 1.0 for a in report["accuracy"])
    assert (out / "accuracy.png").is_file() and "| round |" in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text())["rounds"][1]["train_rows"] == len(TRAIN)


@pytest.mark.slow
def test_a_run_stopped_between_stages_resumes_to_the_same_result(baseline, causal_lm_path, token_cls_path, tmp_path):
    out, report = baseline
    seen = []

    def stop_after_score(k, stage, record):
        seen.append((k, stage))
        if (k, stage) == (1, "score"):
            raise KeyboardInterrupt("stopped after the scoring stage")

    with pytest.raises(KeyboardInterrupt):
        run_raft(config(tmp_path, prm_model=token_cls_path), causal_lm_path, train_problems=TRAIN,
                 eval_problems=HELD_OUT, on_stage_end=stop_after_score)  # fmt: skip
    assert seen == [(0, "eval"), (1, "sample"), (1, "score")]
    samples_part = next((tmp_path / "round-1" / "samples" / "parts").glob("part-*.jsonl"))
    written = samples_part.stat().st_mtime_ns
    seen.clear()
    resumed = run_raft(config(tmp_path, prm_model=token_cls_path), causal_lm_path, train_problems=TRAIN,
                       eval_problems=HELD_OUT, on_stage_end=lambda k, s, r: seen.append((k, s)))  # fmt: skip
    assert seen == [(1, "select"), (1, "train"), (1, "eval")]  # nothing saved is recomputed
    assert samples_part.stat().st_mtime_ns == written
    assert resumed["rounds"] == report["rounds"]
    for name, value in weights(out / "round-1" / "policy").items():
        torch.testing.assert_close(weights(tmp_path / "round-1" / "policy")[name], value)


def _cli(out, causal_lm_path, token_cls_path, data):
    args = [
        sys.executable, "-m", "trl_erprm.cli", "raft", "--model_name_or_path", causal_lm_path, "--dataset_name", data,
        "--prompt_column", "question", "--gold_column", "answer", "--eval_fraction", "0.25", "--num_rounds", "1",
        "--num_samples", "3", "--max_new_tokens", "8", "--prm_model", token_cls_path, "--prm_step_separator", "\n",
        "--max_steps", "4", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--save_strategy",
        "steps", "--save_steps", "1", "--use_cpu", "True", "--bf16", "False", "--report_to", "none",
        "--gradient_checkpointing", "False", "--chunk_size", "2", "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return args, env


KILL_AT_STEP = 2


def killed_at_checkpoint(argv: list[str]) -> None:
    """Run the RAFT CLI and die by SIGKILL right after the fine-tuning wrote `checkpoint-{KILL_AT_STEP}`.

    The kill comes from the trainer's own `on_save` callback, so it lands at the same point on every machine (polling
    for the folder from outside raced with a fast machine, which could finish the fine-tuning before the signal).
    """
    import trl
    from transformers import TrainerCallback

    from trl_erprm import cli

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == KILL_AT_STEP:
                os.kill(os.getpid(), signal.SIGKILL)

    class KilledSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterSave())

    trl.SFTTrainer = KilledSFTTrainer  # RAFT imports it from `trl` when it fine-tunes
    cli.main(argv)


@pytest.mark.slow
def test_a_run_killed_while_fine_tuning_resumes_to_the_same_result(causal_lm_path, token_cls_path, tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text(
        "".join(json.dumps({"question": p["prompt"], "answer": p["gold"]}) + "\n" for p in TRAIN + HELD_OUT)
    )
    args, env = _cli(tmp_path / "whole", causal_lm_path, token_cls_path, str(data))
    assert subprocess.run(args, env=env, capture_output=True, timeout=600).returncode == 0

    args, env = _cli(tmp_path / "killed", causal_lm_path, token_cls_path, str(data))
    killed = subprocess.run(
        [sys.executable, __file__, *args[3:]], env=env, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    sft = tmp_path / "killed" / "round-1" / "sft"
    assert (sft / f"checkpoint-{KILL_AT_STEP}" / "trainer_state.json").is_file()
    assert not (sft / f"checkpoint-{KILL_AT_STEP + 1}").exists()
    assert not (tmp_path / "killed" / "results.json").exists()
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert resumed["rounds"][1]["resumed_from"] == str(sft / f"checkpoint-{KILL_AT_STEP}")
    for key in ("selected", "mean_selected_score", "accuracy"):
        assert resumed["rounds"][1][key] == whole["rounds"][1][key]
    # (train_loss is the mean over the fine-tuning steps run after the resume, as transformers reports it)
    for name, value in weights(tmp_path / "whole" / "round-1" / "policy").items():
        torch.testing.assert_close(weights(tmp_path / "killed" / "round-1" / "policy")[name], value)


def test_bad_input(causal_lm_path, token_cls_path, tmp_path):
    with pytest.raises(ValueError, match="num_samples=1: RAFT selects among N >= 2"):
        config(tmp_path, num_samples=1)
    with pytest.raises(ValueError, match="needs --score_threshold"):
        config(tmp_path, selection="threshold")
    with pytest.raises(ValueError, match="scoring='prm' needs --prm_model"):
        run_raft(config(tmp_path / "no_prm"), causal_lm_path, train_problems=TRAIN, eval_problems=HELD_OUT)
    with pytest.raises(ValueError, match="both train_problems and eval_problems"):
        run_raft(config(tmp_path / "x", prm_model=token_cls_path), causal_lm_path, train_problems=TRAIN)


@pytest.mark.slow
def test_a_round_that_keeps_nothing_stops_with_a_message(causal_lm_path, token_cls_path, tmp_path):
    out = tmp_path / "nothing"
    report = run_raft(
        config(out, prm_model=token_cls_path, selection="threshold", score_threshold=1.5),
        causal_lm_path, train_problems=TRAIN, eval_problems=HELD_OUT,
    )  # fmt: skip
    assert report["stopped"].startswith(
        "Round 1 kept no sample: scoring='prm', selection='threshold', score_threshold=1.5"
    )
    assert not (out / "round-1" / "sft").exists() and not (out / "round-1" / "policy").exists()
    assert report["rounds"][1]["selected"] == 0 and len(report["accuracy"]) == 2 and report["accuracy"][1] is None
    assert json.loads((out / "results.json").read_text())["stopped"] == report["stopped"]


class PlantedAnswers(MathVerifyGrader):
    """The real math-verify grader, graded on planted answers: the j-th sample of the problem with gold `g` (in one
    `grade` call) is replaced by `PLANTED[g][j]`. A tiny random policy never writes a final answer by itself."""

    PLANTED = {
        "2": ["\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{2}", "\\boxed{3}"],  # a real timeout, twice
        "3": ["\\boxed{3}", "\\boxed{1}", "\\boxed{1}"],
        "4": ["\\boxed{1}", "\\boxed{1}", "\\boxed{1}"],
    }

    def grade(self, completions, golds):
        seen = {}
        planted = []
        for text, gold in zip(completions, golds):
            j = seen[gold] = seen.get(gold, -1) + 1
            planted.append(self.PLANTED[gold][j] if gold in self.PLANTED and j < 3 else text)
        return super().grade(planted, golds)


def test_round_statistics_leave_grading_timeouts_out(causal_lm_path, tmp_path):
    """`sample_accuracy` and `pass_at_n` used to count a timed-out sample as wrong (2/9 and 2/3 here); by bon's rule
    its problem is left out and counted: 1/6 and 1/2."""
    records = {}

    def stop_after_score(k, stage, record):
        records[(k, stage)] = record
        if (k, stage) == (1, "score"):
            raise KeyboardInterrupt

    with PlantedAnswers(num_workers=1, timeout=0.5, retry_timeout=0.5) as grader, pytest.raises(KeyboardInterrupt):
        run_raft(config(tmp_path, scoring="majority"), causal_lm_path, train_problems=TRAIN[:3],
                 eval_problems=HELD_OUT, grader=grader, on_stage_end=stop_after_score)  # fmt: skip
    stats = records[(1, "score")]
    assert stats["sample_accuracy"] == pytest.approx(1 / 6) and stats["pass_at_n"] == pytest.approx(1 / 2)
    assert stats["problems_with_grading_timeouts"] == 1 and stats["grading_timeouts"] == 1
    assert stats["problems_gold_unparsable"] == 0


class PlantedOutcomes(PlantedAnswers):
    """Planted answers without a timeout: problem "2" has two correct samples, "3" none, "4" one."""

    PLANTED = {
        "2": ["\\boxed{2}", "\\boxed{1}", "\\boxed{2}"],
        "3": ["\\boxed{1}", "\\boxed{1}", "\\boxed{5}"],
        "4": ["\\boxed{4}", "\\boxed{1}", "\\boxed{1}"],
    }


def run_until_selected(out, policy, grader, problems, samples=None, **overrides):
    """One RAFT round stopped once the selection is written; returns (score statistics, selection.json).

    `samples` (problem index -> its N completions) replaces the stored samples once written, as if the policy had
    sampled them: a tiny random policy never writes a final answer by itself."""
    records = {}

    def stop_after_select(k, stage, record):
        records[(k, stage)] = record
        if (k, stage) == (1, "sample") and samples is not None:
            for path in (out / "round-1" / "samples" / "parts").glob("part-*.jsonl"):
                rows = [{**row, "completions": samples[row["index"]]} for row in map(json.loads, path.open())]
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        if (k, stage) == (1, "select"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_raft(config(out, **overrides), policy, train_problems=problems, eval_problems=HELD_OUT,
                 grader=grader, on_stage_end=stop_after_select)  # fmt: skip
    return records[(1, "score")], json.loads((out / "round-1" / "selection.json").read_text())


def test_a_problem_without_gold_is_its_own_unparsable_gold_not_its_chunks(causal_lm_path, tmp_path):
    """One problem without a gold answer used to switch grading off for its whole chunk (every status None, every
    outcome score NaN): now it alone is `gold_unparsable` and the others of its chunk are graded."""
    problems = [*TRAIN[:3], {"prompt": "What is 9 + 2?", "gold": None}]  # one chunk of 4
    with PlantedOutcomes(num_workers=1) as grader:
        stats, selection = run_until_selected(tmp_path, causal_lm_path, grader, problems, scoring="outcome")
    scores = read_results(tmp_path / "round-1" / "scores")
    assert scores[3]["statuses"] == ["gold_unparsable"] * 3 and all(math.isnan(s) for s in scores[3]["scores"])
    assert scores[0]["statuses"] == ["correct", "incorrect", "correct"] and scores[0]["scores"] == [1.0, 0.0, 1.0]
    assert stats["problems_gold_unparsable"] == 1
    assert stats["sample_accuracy"] == pytest.approx(3 / 9) and stats["pass_at_n"] == pytest.approx(2 / 3)
    assert selection["kept"]["0"] == [0] and selection["kept"]["2"] == [0] and selection["kept"]["3"] == []


def test_outcome_keeps_correct_samples_only_and_majority_the_majority_answer_only(causal_lm_path, tmp_path):
    """A wrong answer (outcome score 0.0) used to be "the best" of a problem without a correct sample, and a sample
    without an answer or with a minority answer was kept by majority scoring: now neither is ever fine-tuned on, and
    a problem with nothing keepable contributes nothing (counted)."""
    chat = [{"prompt": [{"role": "user", "content": p["prompt"]}], "gold": p["gold"]} for p in TRAIN[:3]]
    with PlantedOutcomes(num_workers=1) as grader:
        _, outcome = run_until_selected(
            tmp_path / "outcome", causal_lm_path, grader, chat, scoring="outcome", selection="top_k", top_k=3
        )
    assert outcome["kept"] == {"0": [0, 2], "1": [], "2": [0]}
    assert outcome["selected"] == 3 and outcome["problems_kept"] == 2 and outcome["problems_with_nothing_kept"] == 1
    assert outcome["mean_selected_score"] == 1.0 and outcome["selected_accuracy"] == 1.0

    samples = {
        0: ["so \\boxed{7}", "no answer here", "it is \\boxed{7}"],
        1: ["\\boxed{5}", "\\boxed{1}", "\\boxed{1}"],
        2: ["one", "two", "three"],
    }
    with MathVerifyGrader(num_workers=1) as grader:
        _, majority = run_until_selected(
            tmp_path / "majority", causal_lm_path, grader, TRAIN[:3], samples, scoring="majority", selection="top_k",
            top_k=3,
        )  # fmt: skip
    assert majority["kept"] == {"0": [0, 2], "1": [1, 2], "2": []}
    assert majority["problems_with_nothing_kept"] == 1
    assert majority["mean_selected_score"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_outcome_scoring_fine_tunes_on_the_correct_samples_of_conversational_problems(causal_lm_path, tmp_path):
    chat = [{"prompt": [{"role": "user", "content": p["prompt"]}], "gold": p["gold"]} for p in TRAIN[:3]]
    with PlantedOutcomes(num_workers=1) as grader:
        report = run_raft(
            config(tmp_path, scoring="outcome", selection="top_k", top_k=2), causal_lm_path, train_problems=chat,
            eval_problems=HELD_OUT, grader=grader,
        )  # fmt: skip
    assert report["stopped"] is None, report["stopped"]
    assert report["rounds"][1]["selected"] == 3 and report["rounds"][1]["train_rows"] == 3  # 2 + 0 + 1 correct


@pytest.mark.slow
def test_given_samples_are_scored_and_selected_without_sampling(causal_lm_path, tmp_path):
    """Round 1 with samples given beforehand (one pass shared by several selectors): they are recorded as given, the
    majority selector keeps the sample whose answer is most frequent (hand-checked), and the run's identity includes
    them (other samples in the same folder start the run over)."""
    from trl_erprm.jobs import read_results

    problems = TRAIN[:3]
    given = [
        ["\\boxed{4}", "\\boxed{5}", "\\boxed{5}"],  # majority 5: keeps sample 1 (ties go to the lowest index)
        ["\\boxed{7}", "\\boxed{7}", "\\boxed{8}"],  # keeps sample 0
        ["x", "The answer is 9.", "\\boxed{9}"],  # "x" has no answer; 9 twice: keeps sample 1
    ]
    out = tmp_path / "given"
    report = run_raft(
        config(out, scoring="majority"), causal_lm_path, train_problems=problems, eval_problems=HELD_OUT,
        samples=given,
    )  # fmt: skip
    assert report["stopped"] is None
    records = read_results(out / "round-1" / "samples")
    assert [records[i]["completions"] for i in range(3)] == given
    assert report["rounds"][1]["given"] is True and report["rounds"][1]["samples"] == 9
    kept = json.loads((out / "round-1" / "selection.json").read_text())["kept"]
    assert kept == {"0": [1], "1": [0], "2": [1]}
    # Other samples, same folder and settings: another run (the samples are part of its identity), started over; the
    # start policy's evaluation of the first run is recorded, not repeated.
    other = [list(reversed(texts)) for texts in given]
    start = {k: report["rounds"][0][k] for k in ("accuracy", "eval_problems")}
    again = run_raft(
        config(out, scoring="majority", overwrite=True), causal_lm_path, train_problems=problems,
        eval_problems=HELD_OUT, samples=other, start_eval=start,
    )  # fmt: skip
    assert again["rounds"][0] == {"round": 0, **start, "given": True} and not (out / "round-0" / "eval").exists()
    assert [read_results(out / "round-1" / "samples")[i]["completions"] for i in range(3)] == other
    assert json.loads((out / "round-1" / "selection.json").read_text())["kept"] == {"0": [0], "1": [1], "2": [0]}
    with pytest.raises(ValueError, match=r"samples\[1\] must be a list of num_samples=3"):
        run_raft(
            config(tmp_path / "bad"), causal_lm_path, train_problems=problems, eval_problems=HELD_OUT,
            samples=[["a", "b", "c"], ["a"], ["a", "b", "c"]],
        )  # fmt: skip
    with pytest.raises(ValueError, match="start_eval must be round 0 of a run on the same 2 held-out problems"):
        run_raft(
            config(tmp_path / "bad"), causal_lm_path, train_problems=problems, eval_problems=HELD_OUT,
            start_eval={"accuracy": 0.5, "eval_problems": 3},
        )  # fmt: skip
    with pytest.raises(ValueError, match="one list of completions per training problem"):
        run_raft(config(tmp_path / "bad"), causal_lm_path, train_problems=problems, eval_problems=HELD_OUT, samples=[])


if __name__ == "__main__":  # the child of the SIGKILL test: `python tests/test_raft.py raft --model_name_or_path ...`
    killed_at_checkpoint(sys.argv[1:])
