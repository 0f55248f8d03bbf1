"""`trl-erprm quickstart`: the pure pieces against hand-computed values, then `--fast` end to end, twice."""

import contextlib
import io
import json
import math

import pytest
from datasets import load_from_disk

from trl_erprm.functional import er_label
from trl_erprm.quickstart.pipeline import (
    FAST_SETTINGS,
    QuickstartConfig,
    _parser,
    default_policy_dir,
    label_quality,
    quickstart_config,
    quickstart_main,
    stage_seed,
    step_f1,
    task_answer_reward,
)
from trl_erprm.quickstart.task import generate_problems


# ---------------------------------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_label_quality_by_hand():
    # Solution 1: truth [T, T, F], labels [0.9, 0.6, 0.2] -> all three agree; first below 0.5 is step 2 = truth 2.
    # Solution 2: truth [T, F], labels [0.4, 0.7] -> step 0 disagrees, step 1 disagrees; predicted 0, truth 1.
    # Solution 3: truth [T], labels [0.8] -> agrees; predicted -1 = truth -1.
    labels = [[0.9, 0.6, 0.2], [0.4, 0.7], [0.8]]
    truth = [[True, True, False], [True, False], [True]]
    quality = label_quality(labels, truth, [2, 1, -1])
    assert quality["step_accuracy"] == pytest.approx(4 / 6)
    assert quality["mean_on_good_steps"] == pytest.approx((0.9 + 0.6 + 0.4 + 0.8) / 4)
    assert quality["mean_on_bad_steps"] == pytest.approx((0.2 + 0.7) / 2)
    assert quality["error_accuracy"] == pytest.approx(1 / 2)  # solutions 1 and 2 have an error; 1 is found
    assert quality["correct_accuracy"] == 1.0
    assert quality["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_label_quality_of_er_labels_depends_on_eta():
    # One step whose 4 rollouts reach the answer once (p = 0.25), truly wrong: soft 0.25 and ER(eta=2) 0.48 call it
    # wrong, the hard label (any success) calls it right.
    outcomes = [1.0, 0.0, 0.0, 0.0]
    for eta, right in ((0.0, 1.0), (2.0, 1.0), (math.inf, 0.0)):
        quality = label_quality([[float(er_label(outcomes, eta))]], [[False]], [0])
        assert quality["step_accuracy"] == right


def test_step_f1_calibrates_on_other_solutions():
    # Calibration: an error at step 1 scored [0.9, 0.3], an error-free solution scored [0.8, 0.7]. Any threshold in
    # (0.3, 0.7] is perfect; the smallest candidate there is 0.7 (candidates are the scores, "below" is strict).
    calibration = [[0.9, 0.3], [0.8, 0.7]]
    # Test: error at step 0 scored [0.6, 0.9] (found at 0.7, missed at 0.5); error-free [0.75, 0.72] (kept at both).
    test = [[0.6, 0.9], [0.75, 0.72]]
    out = step_f1(test, [0, -1], calibration, [1, -1], probabilities=True)
    assert out["calibrated"]["threshold"] == pytest.approx(0.7)
    assert out["calibrated"]["calibration_f1"] == 1.0
    assert out["calibrated"]["f1"] == 1.0
    assert out["at_0.5"]["error_accuracy"] == 0.0 and out["at_0.5"]["correct_accuracy"] == 1.0
    assert out["at_0.5"]["f1"] == 0.0
    # Scores that are not probabilities (implicit PRM q values) get no 0.5 threshold.
    assert "at_0.5" not in step_f1(test, [0, -1], calibration, [1, -1], probabilities=False)


def test_step_f1_without_error_free_calibration_says_why():
    out = step_f1([[0.2]], [0], [[0.1, 0.9]], [0], probabilities=False)
    assert math.isnan(out["calibrated"]["threshold"]) and math.isnan(out["calibrated"]["f1"])
    assert "error-free" in out["calibrated"]["note"] or "without one" in out["calibrated"]["note"]


def test_task_answer_reward_reads_strings_and_messages():
    problem = generate_problems(1, seed=3)[0]
    right = problem.solution()
    wrong = right.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{problem.answer + 1}}}")
    completions = [right, [{"role": "assistant", "content": right}], wrong, "", "no answer at all"]
    rewards = task_answer_reward(prompts=[None] * 5, completions=completions, problem=[problem.text] * 5, answer=["x"])
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_config_precedence_defaults_fast_then_explicit():
    assert QuickstartConfig().num_rollouts == 8 and not QuickstartConfig().fast
    fast = quickstart_config(fast=True)
    assert fast.fast and all(getattr(fast, k) == v for k, v in FAST_SETTINGS.items())
    mixed = quickstart_config(fast=True, num_rollouts=6, seed=3)
    assert mixed.num_rollouts == 6 and mixed.seed == 3 and mixed.num_candidates == FAST_SETTINGS["num_candidates"]


def test_parser_builds_the_same_config():
    args = vars(_parser().parse_args(["--fast", "--num_rollouts", "3", "--eta", "hard", "--no-plot"]))
    assert args == {"fast": True, "num_rollouts": 3, "eta": "hard", "plot": False}  # only what was given
    config = quickstart_config(**args)
    assert config.eta == math.inf and config.num_rollouts == 3 and config.policy_steps == FAST_SETTINGS["policy_steps"]
    assert quickstart_config(**vars(_parser().parse_args([]))) == QuickstartConfig()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_rollouts": 0}, "num_rollouts"),
        ({"grpo_num_generations": 1}, "grpo_num_generations"),
        ({"aggregation": "median"}, "aggregation"),
        ({"eta": "warm"}, "eta"),
        ({"prm_learning_rate": 0.0}, "prm_learning_rate"),
    ],
)
def test_config_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuickstartConfig(**kwargs)


def test_seeds_and_cache_folder(monkeypatch, tmp_path):
    assert stage_seed(0, "rollouts") == stage_seed(0, "rollouts")
    assert len({stage_seed(0, "rollouts"), stage_seed(1, "rollouts"), stage_seed(0, "grpo")}) == 3
    assert 0 <= stage_seed(5, "x") < 2**31
    monkeypatch.setenv("TRL_ERPRM_CACHE", str(tmp_path / "c"))
    assert default_policy_dir() == str(tmp_path / "c" / "quickstart")
    monkeypatch.delenv("TRL_ERPRM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_policy_dir() == str(tmp_path / "x" / "trl-erprm" / "quickstart")


# ---------------------------------------------------------------------------------------------------------------------
# End to end: `--fast`, twice with the same seed
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    runs = []
    for name in ("a", "b"):  # the second run reuses the cached policy
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            status = quickstart_main(
                ["--fast", "--output_dir", str(root / name), "--policy_dir", str(root / "policies"), "--seed", "0"]
            )
        assert status == 0
        runs.append((root / name, json.loads((root / name / "results.json").read_text()), stdout.getvalue()))
    return runs


def _accuracies(results):
    """Every accuracy the report holds."""
    values = [results["best_of_n"]["first_sample"], results["data"]["train_answer_accuracy"]]
    for by_n in results["best_of_n"]["curves"].values():
        values += [v for stats in by_n.values() for v in (stats["mean"], *stats["values"])]
    values += [results["grpo"][name][k] for name in ("start", "grpo", "prime") for k in ("accuracy", "pass_at_k")]
    values += [
        run[k]
        for name in ("grpo", "prime")
        for run in results["grpo"][name]["runs"]
        for k in ("accuracy", "pass_at_k")
    ]
    values += [q["step_accuracy"] for q in results["mc_labels"].values()]
    return values


def test_fast_run_writes_the_reports(fast_runs):
    out, results, stdout = fast_runs[0]
    for name in ("results.json", "table.md", "bon_accuracy_vs_n.png", "grpo_vs_prime.png"):
        assert (out / name).is_file(), name
    assert (out / "bon_accuracy_vs_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(results) >= {"config", "seeds", "environment", "policy", "data", "mc_labels", "prms", "best_of_n"}
    assert set(results) >= {"step_f1", "grpo", "table", "files", "timings", "total_wall_s"}
    assert results["config"]["fast"] and results["config"]["seed"] == 0
    assert all(isinstance(seed, int) for seed in results["seeds"].values())
    assert set(results["timings"]) == {
        "policy",
        "held-out and training problems",
        "training solutions and their MC-rollout labels",
        "PRMs on soft / hard / ER labels",
        "implicit PRM",
        "held-out candidates",
        "scores, Best-of-N and step F1",
        "GRPO vs GRPO + PRIME",
        "report",
    }
    # Progress for every stage, and the table printed as written.
    assert all(f"==> [{k}/9]" in stdout for k in range(1, 10))
    assert results["table"] in stdout and (out / "table.md").read_text().strip() == results["table"]
    for label in (
        "majority vote",
        "BoN, soft-label PRM (eta=0)",
        "BoN, hard-label PRM (eta=inf)",
        "BoN, ER-PRM (eta=2)",
    ):
        assert f"| {label} |" in results["table"]


def test_fast_run_values_are_sane(fast_runs):
    _, results, _ = fast_runs[0]
    config, data, bon = results["config"], results["data"], results["best_of_n"]
    assert all(0.0 <= v <= 1.0 for v in _accuracies(results))
    assert data["num_test_candidates"] == config["num_test_problems"] * config["num_candidates"]
    assert data["num_train_solutions"] == config["num_train_problems"] * config["samples_per_problem"]
    assert bon["n_values"] == [1, 2, 4]
    methods = {f"bon_{name}" for name in ("soft", "hard", "er", "oracle", "implicit", "implicit_noref")}
    assert set(bon["curves"]) >= methods | {"majority", "pass@n", "weighted_majority_er"}
    for n in map(str, bon["n_values"]):
        passed = bon["curves"]["pass@n"][n]["values"]
        for method in methods | {"majority"}:
            # pass@N is an upper bound of any selection from the same subsets
            assert all(p >= v for p, v in zip(passed, bon["curves"][method][n]["values"]))
            assert len(bon["curves"][method][n]["values"]) == config["num_subset_draws"]
    # With all the candidates in the subset (N = num_candidates) every draw is the same.
    assert all(by_n["4"]["std"] == 0.0 for by_n in bon["curves"].values())
    assert set(results["step_f1"]) == {"soft", "hard", "er", "oracle", "implicit", "implicit_noref"}
    assert all("at_0.5" in results["step_f1"][k] for k in ("soft", "hard", "er", "oracle"))
    assert all("at_0.5" not in results["step_f1"][k] for k in ("implicit", "implicit_noref"))
    assert [results["prms"][k]["eta"] for k in ("soft", "hard", "er", "oracle")] == [0.0, "inf", 2.0, None]
    assert results["grpo"]["steps"] == FAST_SETTINGS["grpo_steps"]
    assert len(results["grpo"]["run_seeds"]) == FAST_SETTINGS["grpo_repeats"]
    (prime,), (grpo,) = results["grpo"]["prime"]["runs"], results["grpo"]["grpo"]["runs"]
    assert results["grpo"]["prime"]["accuracy"] == prime["accuracy"] and results["grpo"]["prime"]["accuracy_std"] == 0
    assert len(prime["log"]) == len(grpo["log"]) == FAST_SETTINGS["grpo_steps"]
    assert all("prime/kept_fraction" in step for step in prime["log"])
    assert not any("prime/kept_fraction" in step for step in grpo["log"])


def test_fast_run_labels_match_the_rollout_counts(fast_runs):
    out, results, _ = fast_runs[0]
    labelled = load_from_disk(str(out / "labels" / "dataset"))
    assert len(labelled) == results["data"]["num_train_solutions"]
    ok = [row for row in labelled if row["status"] == "ok"]
    assert len(ok) == results["data"]["num_labelled_solutions"]
    k = results["config"]["num_rollouts"]
    # Every step but the last has k rollouts; the last is the graded solution itself.
    assert results["data"]["num_rollouts"] == sum((len(row["completions"]) - 1) * k for row in ok)
    assert all(len(o) == k for row in ok for o in row["step_outcomes"][:-1])
    assert all(len(row["step_outcomes"][-1]) == 1 for row in ok)


def test_fast_run_is_deterministic(fast_runs):
    (out_a, a, _), (out_b, b, _) = fast_runs
    labels_a = load_from_disk(str(out_a / "labels" / "dataset"))
    labels_b = load_from_disk(str(out_b / "labels" / "dataset"))
    assert labels_a["step_outcomes"] == labels_b["step_outcomes"]
    assert a["seeds"] == b["seeds"]
    for key in ("data", "mc_labels", "prms", "best_of_n", "step_f1", "grpo", "table"):
        assert a[key] == b[key], key
