"""`trl-erprm quickstart`: the pure pieces against hand-computed values, then `--fast` end to end over two seeds with
the search stage, and once more with one seed (the same seed gives the same results)."""

import contextlib
import io
import json
import math

import pytest
from datasets import load_from_disk

from trl_erprm.functional import er_label
from trl_erprm.jobs import read_results
from trl_erprm.quickstart.bon import step_f1
from trl_erprm.quickstart.common import stage_seed
from trl_erprm.quickstart.config import (
    DEFAULT_SETTINGS,
    FAST_SETTINGS,
    QuickstartConfig,
    default_policy_dir,
    make_quickstart_parser,
    prm_name,
    quickstart_config,
)
from trl_erprm.quickstart.labels import label_quality
from trl_erprm.quickstart.pipeline import quickstart_main
from trl_erprm.quickstart.report import compare, summarize_seeds


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


def test_summary_and_comparisons_by_hand():
    per_seed = [{"a": 0.9, "b": 0.5, "c": 0.55, "only_first": 1.0}, {"a": 0.8, "b": 0.6, "c": 0.65}]
    summary = summarize_seeds(per_seed)
    assert set(summary) == {"a", "b", "c"}  # a metric missing in a seed is not summarised
    assert summary["a"]["mean"] == pytest.approx(0.85) and summary["a"]["std"] == pytest.approx(0.05)
    assert summary["a"]["values"] == [0.9, 0.8]
    # a - b = 0.30 against a spread of 0.05 + 0.05: exceeds; c - b = 0.05 against 0.10: within.
    exceeds = compare(summary, "a", "b", "a vs b")
    assert exceeds["verdict"] == "exceeds the spread" and exceeds["difference"] == pytest.approx(0.30)
    assert exceeds["paired"] == pytest.approx([0.4, 0.2]) and exceeds["spread"] == pytest.approx(0.10)
    assert compare(summary, "c", "b", "c vs b")["verdict"] == "within the spread"
    assert compare(summary, "a", "missing", "x") is None
    one = summarize_seeds([{"a": 0.9, "b": 0.1}])
    assert one["a"]["std"] == 0.0 and compare(one, "a", "b", "x")["verdict"] == "one seed: no spread"


def test_config_defaults_fast_and_explicit_sizes():
    default = QuickstartConfig()
    assert all(getattr(default, k) == v for k, v in DEFAULT_SETTINGS.items())
    assert default.raft_selectors == ["soft", "er2", "hard", "outcome", "majority"] and default.raft_rounds == 1
    assert default.head == "lm" and not default.search and default.seed_list == [0]
    fast = quickstart_config(fast=True)
    assert all(getattr(fast, k) == v for k, v in FAST_SETTINGS.items())
    mixed = quickstart_config(fast=True, num_rollouts=8, seed=3, seeds=2)  # explicit wins, even if it is a default
    assert (
        mixed.num_rollouts == 8
        and mixed.seed_list == [3, 4]
        and mixed.num_candidates == FAST_SETTINGS["num_candidates"]
    )
    assert [prm_name(e) for e in (0.0, 1.0, 2.5, math.inf)] == ["soft", "er1", "er2.5", "hard"]


def test_parser_builds_the_same_config():
    parser = make_quickstart_parser()
    (config,) = parser.parse_args_and_config(
        ["--fast", "--num_rollouts", "3", "--etas", "0", "inf", "--er_eta", "hard", "--plot", "false"]
    )
    assert config.etas == [0.0, math.inf] and config.er_eta == math.inf and config.num_rollouts == 3
    assert config.policy_steps == FAST_SETTINGS["policy_steps"] and not config.plot
    assert config.raft_selectors == ["soft", "hard", "outcome", "majority"]  # the ER-PRM is the hard one here
    assert make_quickstart_parser().parse_args_and_config([])[0] == QuickstartConfig()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_rollouts": 0}, "num_rollouts"),
        ({"aggregation": "median"}, "aggregation"),
        ({"er_eta": 3.0}, "er_eta=3.0 is not in etas"),
        ({"etas": [0.0, 0.0, 2.0]}, "distinct"),
        ({"raft_selectors": ["er2", "oracle"]}, "raft_selectors"),
        ({"prm_learning_rate": 0.0}, "prm_learning_rate"),
        ({"misconception": 1.5}, "misconception"),
        ({"head": "value"}, "head"),
        ({"search": True, "search_n_values": [4, 6]}, "multiples"),
    ],
)
def test_config_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuickstartConfig(**kwargs)


def test_seeds_and_cache_folder(monkeypatch, tmp_path):
    assert stage_seed(0, "rollouts") == stage_seed(0, "rollouts")
    assert len({stage_seed(0, "rollouts"), stage_seed(1, "rollouts"), stage_seed(0, "raft")}) == 3
    assert 0 <= stage_seed(5, "x") < 2**31
    monkeypatch.setenv("TRL_ERPRM_CACHE", str(tmp_path / "c"))
    assert default_policy_dir() == str(tmp_path / "c" / "quickstart")
    monkeypatch.delenv("TRL_ERPRM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_policy_dir() == str(tmp_path / "x" / "trl-erprm" / "quickstart")


# ---------------------------------------------------------------------------------------------------------------------
# End to end: `--fast --seeds 2 --search`, then `--fast` with the first seed alone
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    runs = []
    for name, extra in (("two", ["--seeds", "2", "--search"]), ("one", [])):  # the second reuses seed 0's policy
        stdout = io.StringIO()
        argv = ["--fast", "--output_dir", str(root / name), "--policy_dir", str(root / "policies"), *extra]
        with contextlib.redirect_stdout(stdout):
            assert quickstart_main(argv) == 0
        runs.append((root / name, json.loads((root / name / "results.json").read_text()), stdout.getvalue()))
    return runs


def test_fast_run_writes_the_reports(fast_runs):
    out, results, stdout = fast_runs[0]
    for name in ("results.json", "table.md", "bon_accuracy_vs_n.png", "eta_sweep.png", "raft_accuracy.png"):
        assert (out / name).is_file(), name
    assert (out / "bon_accuracy_vs_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(results) == {
        "config", "seeds", "environment", "n_values", "per_seed", "summary", "comparisons", "table", "files",
        "total_wall_s",
    }  # fmt: skip
    assert results["seeds"] == [0, 1] and results["config"]["fast"] and results["n_values"] == [1, 2, 4]
    for seed, run in zip((0, 1), results["per_seed"]):
        assert run["seed"] == seed and json.loads((out / f"seed-{seed}" / "results.json").read_text()) == run
        assert set(run) == {
            "seed", "stage_seeds", "policy", "data", "mc_labels", "prms", "best_of_n", "step_metrics", "raft",
            "search", "timings", "total_wall_s",
        }  # fmt: skip
        assert len(run["timings"]) == 9 and all(isinstance(s, int) for s in run["stage_seeds"].values())
    assert results["per_seed"][0]["policy"]["path"] != results["per_seed"][1]["policy"]["path"]  # one per seed
    # Progress for every stage of both seeds, and the table printed as written.
    assert all(stdout.count(f"==> [{k}/9]") == 2 for k in range(1, 10))
    assert results["table"] in stdout and (out / "table.md").read_text().strip() == results["table"]
    for label in ("first sample", "majority vote", "BoN, PRM on ER labels (eta=2) = the ER-PRM", "BoN, control PRM"):
        assert f"| {label}" in results["table"]
    assert "RAFT: held-out accuracy" in results["table"] and "Search with the ER-PRM" in results["table"]


def test_fast_run_summary_and_comparisons(fast_runs):
    _, results, _ = fast_runs[0]
    summary = results["summary"]
    for key in (
        "first_sample",
        "bon/bon_er2/4",
        "bon/majority/4",
        "bon/bon_control/4",
        "raft/er2/1",
        "local_auc/hard",
    ):
        stats = summary[key]
        values = stats["values"]
        assert len(values) == 2 and stats["mean"] == pytest.approx(sum(values) / 2)
        assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / 2)
    # every per-seed value is that seed's own metric
    assert summary["first_sample"]["values"] == [r["best_of_n"]["first_sample"] for r in results["per_seed"]]
    assert summary["bon/bon_er2/4"]["values"] == [
        r["best_of_n"]["curves"]["bon_er2"]["4"]["mean"] for r in results["per_seed"]
    ]
    whats = [c["what"] for c in results["comparisons"]]
    assert "BoN@4 er2 vs majority vote" in whats and "RAFT er2 (round 1) vs start policy" in whats
    for c in results["comparisons"]:
        assert c["verdict"] == ("exceeds the spread" if abs(c["difference"]) > c["spread"] else "within the spread")
        assert f"- {c['what']}: {100 * c['difference']:+.1f}" in results["table"]


def _accuracies(run):
    values = [run["best_of_n"]["first_sample"], run["data"]["train_answer_accuracy"]]
    for by_n in run["best_of_n"]["curves"].values():
        values += [v for stats in by_n.values() for v in (stats["mean"], *stats["values"])]
    values += [a for s in run["raft"]["selectors"].values() for a in s["accuracy"]]
    values += [q["step_accuracy"] for q in run["mc_labels"].values()]
    values += [m["local_auc"] for m in run["step_metrics"].values() if not math.isnan(m["local_auc"])]
    return values


def test_fast_run_values_are_sane(fast_runs):
    out, results, _ = fast_runs[0]
    config = results["config"]
    for run in results["per_seed"]:
        data, bon = run["data"], run["best_of_n"]
        assert all(0.0 <= v <= 1.0 for v in _accuracies(run))
        assert data["num_test_candidates"] == config["num_test_problems"] * config["num_candidates"]
        assert data["num_train_solutions"] == config["num_train_problems"] * config["samples_per_problem"]
        prms = ["soft", "er2", "hard", "control", "implicit", "implicit_noref"]
        assert set(run["step_metrics"]) == set(prms) and set(run["mc_labels"]) == {"soft", "er2", "hard"}
        assert [run["prms"][k]["eta"] for k in ("soft", "er2", "hard", "control")] == [0.0, 2.0, "inf", None]
        for n in map(str, results["n_values"]):
            passed = bon["curves"]["pass@n"][n]["values"]
            for method in [f"bon_{p}" for p in prms] + ["majority"]:
                # pass@N is an upper bound of any selection from the same subsets
                assert all(p >= v for p, v in zip(passed, bon["curves"][method][n]["values"]))
                assert len(bon["curves"][method][n]["values"]) == config["num_subset_draws"]
        assert all(by_n["4"]["std"] == 0.0 for by_n in bon["curves"].values())  # N = all candidates: one subset
    # The LM-head PRMs were trained from the policy and saved.
    assert (out / "seed-0" / "prms" / "er2" / "model.safetensors").is_file()


def test_fast_run_labels_match_the_rollout_counts(fast_runs):
    out, results, _ = fast_runs[0]
    run = results["per_seed"][0]
    labelled = load_from_disk(str(out / "seed-0" / "labels" / "dataset"))
    assert len(labelled) == run["data"]["num_train_solutions"]
    ok = [row for row in labelled if row["status"] == "ok"]
    assert len(ok) == run["data"]["num_labelled_solutions"]
    k = results["config"]["num_rollouts"]
    assert all(len(o) == k for row in ok for o in row["step_outcomes"][:-1])
    assert all(len(row["step_outcomes"][-1]) == 1 for row in ok)  # the last step is the solution's own grade


def test_fast_run_raft_shares_one_sampling_pass(fast_runs):
    out, results, _ = fast_runs[0]
    config, raft = results["config"], results["per_seed"][0]["raft"]
    assert list(raft["selectors"]) == config["raft_selectors"]
    samples = [read_results(out / "seed-0" / "raft" / name / "round-1" / "samples") for name in raft["selectors"]]
    assert all(s == samples[0] for s in samples)  # round 1: the same samples for every selector
    assert len(samples[0]) == config["num_train_problems"]
    assert all(len(r["completions"]) == config["raft_num_samples"] for r in samples[0].values())
    starts = {s["accuracy"][0] for s in raft["selectors"].values()}
    assert starts == {raft["start"]}  # the same start policy, evaluated with the same seeds
    assert all(len(s["accuracy"]) == config["raft_rounds"] + 1 for s in raft["selectors"].values())


def test_fast_run_search_stage(fast_runs):
    _, results, _ = fast_runs[0]
    search = results["per_seed"][0]["search"]
    assert search["n_values"] == results["config"]["search_n_values"] == [4, 8]
    assert search["num_problems"] == results["config"]["search_problems"]
    assert {"beam_search", "dvts", "best_of_n", "majority"} <= set(search["curves"])
    for method in ("beam_search", "dvts", "best_of_n"):
        assert all(search["tokens"][method][str(n)]["mean"] > 0 for n in (4, 8))
    assert "search/beam_search/8" in results["summary"]


def test_fast_run_is_deterministic(fast_runs):
    (out_a, a, _), (out_b, b, _) = fast_runs
    assert b["seeds"] == [0] and "search" not in b["per_seed"][0]
    labels_a = load_from_disk(str(out_a / "seed-0" / "labels" / "dataset"))
    labels_b = load_from_disk(str(out_b / "seed-0" / "labels" / "dataset"))
    assert labels_a["step_outcomes"] == labels_b["step_outcomes"]
    run_a, run_b = a["per_seed"][0], b["per_seed"][0]
    for key in ("stage_seeds", "data", "mc_labels", "best_of_n", "step_metrics"):
        assert run_a[key] == run_b[key], key
    assert {k: s["accuracy"] for k, s in run_a["raft"]["selectors"].items()} == {
        k: s["accuracy"] for k, s in run_b["raft"]["selectors"].items()
    }
    assert all(c["verdict"] == "one seed: no spread" for c in b["comparisons"])
