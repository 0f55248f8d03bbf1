"""Selection and step metrics against hand-computed values."""

import math
import random

import pytest

from trl_erprm.evaluation.bon import aggregate_candidate_scores
from trl_erprm.evaluation.metrics import (
    choose_threshold,
    default_n_values,
    first_error_prediction,
    graded_problems,
    grading_timeout_message,
    normalize_answer,
    pick_best,
    processbench_metrics,
    selection_curves,
    vote,
    vote_weights,
)


NAN = math.nan

# Four problems (see the worked values in the tests below):
#   A: answers 5 7 7 5, correct 0 1 1 0, scores .9 .6 .7 .1
#   B: answers 12 10 -, correct 1 0 0, scores .3 .8 NaN   (fewer candidates; one without answer nor score)
#   C: answers 1 1, both wrong
#   D: no candidate
CORRECT = [[0, 1, 1, 0], [1, 0, 0], [0, 0], []]
KEYS = [["5", "7", "7", "5"], ["12", "10", None], ["1", "1"], []]
SCORES = {"min": [[0.9, 0.6, 0.7, 0.1], [0.3, 0.8, NAN], [0.5, 0.4], []]}


def test_normalize_answer():
    assert normalize_answer(" $\\dfrac{1}{2}$. ") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 3, \\frac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalize_answer("1,000") == normalize_answer("1000") == "1000"
    assert normalize_answer("2.50") == "2.5" and normalize_answer("3.0") == "3" and normalize_answer("0.0") == "0"
    assert normalize_answer("1,2") == "1,2"  # a pair, not a thousands separator
    assert normalize_answer("10\\,000") == "10000"
    assert normalize_answer(None) is None and normalize_answer(" $ ") is None
    assert normalize_answer("0.5") != normalize_answer("1/2")  # mathematical equality is the grader's job


def test_pick_best_and_vote_rules():
    assert pick_best([0.2, 0.9, 0.9], [0, 1, 2]) == 1  # tie -> lowest index
    assert pick_best([NAN, 0.1], [0, 1]) == 1  # NaN ranks lowest
    assert pick_best([NAN, NAN], [1, 0]) == 0  # all NaN -> lowest index
    assert pick_best([0.0, -5.0], [1]) == 1
    assert vote(["a", "b", "b", "a"], [0, 1, 2, 3]) == 0  # 2-2 tie -> group whose first member comes first
    assert vote(["a", "b", "b"], [0, 1, 2]) == 1
    assert vote([None, "b"], [0, 1]) == 1 and vote([None, None], [0, 1]) is None
    assert vote(["a", "b", "b"], [0, 1, 2], weights=[0.9, 0.3, 0.4]) == 0  # 0.9 > 0.7
    assert vote(["a", "b", "b"], [0, 1, 2], weights=[0.9, NAN, 0.4]) == 0  # NaN weighs 0


def test_weighted_vote_refuses_negative_weights_and_implicit_values_vote_with_their_sigmoid():
    """An implicit PRM's q values summed as they are flip the vote: three -0.1 for "4" (-0.3) lose to one -0.2 for
    "5". Negative weights are refused; sigmoid(q) (the implicit PRM's probability of a correct outcome) is >= 0."""
    keys, q = ["4", "4", "4", "5"], [-0.1, -0.1, -0.1, -0.2]
    with pytest.raises(ValueError, match=r"non-negative weights, but candidate 0 weighs -0.1.*'sigmoid'"):
        vote(keys, range(4), q)
    assert vote_weights([-0.1, 0.0, NAN, 2.0], "sigmoid")[:2] == [pytest.approx(1 / (1 + math.exp(0.1))), 0.5]
    assert math.isnan(vote_weights([NAN], "sigmoid")[0]) and vote_weights([-800.0, 800.0], "sigmoid") == [0.0, 1.0]
    assert vote_weights([0.3], "score") == [0.3]
    assert vote(keys, range(4), vote_weights(q, "sigmoid")) == 0  # 3 x 0.475 > 0.450
    with pytest.raises(ValueError, match="Unknown vote weight"):
        vote_weights(q, "softmax")
    correct = [[1, 1, 1, 0], [0, 1]]
    curves = selection_curves(correct, [keys, ["1", "2"]], {"min": [q, [0.2, 0.9]]}, [4], subsets="all",
                              vote_weight="sigmoid")  # fmt: skip
    assert curves["weighted_majority_min"][4]["mean"] == 1.0  # "4" in the first problem, "2" in the second
    with pytest.raises(ValueError, match=r"candidate 1 of problem 1 \(aggregation 'min'\) weighs -0.9"):
        selection_curves(correct, [keys, ["1", "2"]], {"min": [[0.1] * 4, [0.2, -0.9]]}, [4])


def test_default_n_values():
    assert default_n_values(1) == [1]
    assert default_n_values(8) == [1, 2, 4, 8]
    assert default_n_values(12) == [1, 2, 4, 8, 12]


def test_selection_curves_hand_computed_exact():
    curves = selection_curves(CORRECT, KEYS, SCORES, n_values=[1, 2, 4], subsets="all")
    mean = {method: {n: v["mean"] for n, v in by_n.items()} for method, by_n in curves.items()}
    # N=4: A picks cand 0 (0.9, wrong); majority 5-7 tie -> "5" (wrong); weighted 5: 1.0 < 7: 1.3 (right); pass.
    #      B uses its 3 candidates: BoN picks 10 (wrong); majority tie -> 12 (right); weighted 10: .8 > .3 (wrong).
    assert mean["bon_min"][4] == pytest.approx(0 / 4)
    assert mean["majority"][4] == pytest.approx(1 / 4)
    assert mean["weighted_majority_min"][4] == pytest.approx(1 / 4)
    assert mean["pass@n"][4] == pytest.approx(2 / 4)
    # N=1: every method is the mean correctness: (2/4 + 1/3 + 0 + 0) / 4.
    for method in mean:
        assert mean[method][1] == pytest.approx((0.5 + 1 / 3) / 4)
    # N=2, all 6 pairs of A and 3 pairs of B (worked out by hand):
    #   A: BoN 3/6, majority 3/6, weighted 3/6, pass 5/6;  B: BoN 1/3, majority 2/3, weighted 1/3, pass 2/3.
    assert mean["bon_min"][2] == pytest.approx((3 / 6 + 1 / 3) / 4)
    assert mean["majority"][2] == pytest.approx((3 / 6 + 2 / 3) / 4)
    assert mean["weighted_majority_min"][2] == pytest.approx((3 / 6 + 1 / 3) / 4)
    assert mean["pass@n"][2] == pytest.approx((5 / 6 + 2 / 3) / 4)
    assert all(v["std"] == 0 for by_n in curves.values() for v in by_n.values())


def test_selection_curves_random_subsets():
    curves = selection_curves(CORRECT, KEYS, SCORES, n_values=[1, 2, 4], num_seeds=7, seed=3)
    exact = selection_curves(CORRECT, KEYS, SCORES, n_values=[4], subsets="all")
    for method in curves:
        assert len(curves[method][1]["values"]) == 7
        # N=4 covers every candidate of every problem: no randomness left.
        assert curves[method][4]["values"] == [exact[method][4]["mean"]] * 7 and curves[method][4]["std"] == 0
        assert 0.0 <= curves[method][2]["mean"] <= 1.0
    assert selection_curves(CORRECT, KEYS, SCORES, [1, 2], num_seeds=7, seed=3) == {
        m: {n: curves[m][n] for n in (1, 2)} for m in curves
    }  # same seed, same draws
    # With the same draws, pass@N bounds every method from above at every seed.
    for n in (1, 2):
        for s in range(7):
            assert all(curves[m][n]["values"][s] <= curves["pass@n"][n]["values"][s] + 1e-12 for m in curves)
    with pytest.raises(ValueError, match="subsets"):
        selection_curves(CORRECT, KEYS, SCORES, subsets="some")


def test_aggregate_candidate_scores():
    steps = [[0.9, 0.5], [0.6, 0.8], [], [0.7, NAN]]
    assert aggregate_candidate_scores(steps, "min")[:2] == pytest.approx([0.5, 0.6])
    assert aggregate_candidate_scores(steps, "last")[:2] == pytest.approx([0.5, 0.8])
    assert aggregate_candidate_scores(steps, "prod")[:2] == pytest.approx([0.45, 0.48])
    assert aggregate_candidate_scores(steps, "mean")[:2] == pytest.approx([0.7, 0.7])
    for how in ("min", "last", "prod", "mean"):
        out = aggregate_candidate_scores(steps, how)
        assert math.isnan(out[2]) and math.isnan(out[3])  # no steps; a NaN step never vanishes
    assert aggregate_candidate_scores([], "min") == []


# ---------------------------------------------------------------------------------------------------------------------
# ProcessBench
# ---------------------------------------------------------------------------------------------------------------------

STEP_SCORES = [[0.9, 0.8, 0.7], [0.9, 0.4], [0.8, 0.3, 0.9], [0.6, 0.2], [0.7, 0.6, 0.45]]
STEP_LABELS = [-1, -1, 1, 0, 2]


def test_first_error_prediction():
    assert first_error_prediction([0.9, 0.4, 0.1], 0.5) == 1
    assert first_error_prediction([0.9, 0.5], 0.5) == -1  # strictly below
    assert first_error_prediction([0.9, NAN, 0.1], 0.5) == 1
    assert first_error_prediction([], 0.5) == -1


def test_processbench_metrics_hand_computed():
    predictions = [first_error_prediction(s, 0.5) for s in STEP_SCORES]
    assert predictions == [-1, 1, 1, 1, 2]
    m = processbench_metrics(STEP_LABELS, predictions)
    assert m["error_accuracy"] == pytest.approx(2 / 3) and m["correct_accuracy"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(4 / 7)
    assert (m["num_error_items"], m["num_correct_items"]) == (3, 2)
    assert processbench_metrics([0, -1], [1, 0])["f1"] == 0.0
    assert math.isnan(processbench_metrics([-1], [-1])["f1"])  # no erroneous item: undefined


def test_choose_threshold_hand_computed_and_brute_force():
    threshold, f1 = choose_threshold(STEP_SCORES, STEP_LABELS)
    assert (threshold, f1) == (0.6, pytest.approx(4 / 7))  # smallest threshold reaching the best F1
    rng = random.Random(0)
    for _ in range(30):
        scores = [[rng.choice([0.1, 0.3, 0.5, 0.7, 0.9, NAN]) for _ in range(rng.randint(1, 5))] for _ in range(12)]
        labels = [rng.randint(-1, len(s) - 1) for s in scores]
        if all(y == -1 for y in labels) or all(y != -1 for y in labels):
            continue
        finite = sorted({v for s in scores for v in s if not math.isnan(v)})
        if not finite:
            continue
        brute = []
        for t in [*finite, 1.0]:
            value = processbench_metrics(labels, [first_error_prediction(s, t) for s in scores])["f1"]
            brute.append((value, -t))
        best_f1, neg_t = max(brute)
        threshold, f1 = choose_threshold(scores, labels)
        assert f1 == pytest.approx(best_f1)
        assert processbench_metrics(labels, [first_error_prediction(s, threshold) for s in scores])["f1"] == (
            pytest.approx(best_f1)
        )
        if -neg_t != 1.0:
            assert threshold == -neg_t
    with pytest.raises(ValueError, match="items with an error and items without"):
        choose_threshold([[0.5]], [-1])


def test_graded_problems_leaves_out_timeouts_and_unparsable_golds():
    """One rule for bon, search and RAFT: a timeout or an unparsable gold leaves the problem out (counted); an error or
    a missing answer is a verdict (wrong)."""
    statuses = [
        ["correct", "incorrect"],
        ["incorrect", "timeout"],
        ["gold_unparsable", "timeout"],
        ["error", "no_answer"],
        [],
        ["timeout", "timeout"],
    ]
    kept, left_out = graded_problems(statuses)
    assert kept == [0, 3, 4]
    assert left_out == {"problems_gold_unparsable": 1, "problems_with_grading_timeouts": 2}
    assert "2 problem(s) have a candidate whose grading timed out" in grading_timeout_message(2)


def test_local_step_auc_by_hand():
    from trl_erprm.evaluation.metrics import local_step_auc

    nan = math.nan
    scores = [
        # problem A: an error-free solution, a solution wrong from step 0, one wrong from step 1
        [[0.9, 0.8], [0.3, 0.7], [0.9, 0.2]],
        # problem B: a tie at step 0, and a NaN score (left out)
        [[0.5], [0.5], [nan]],
    ]
    first_errors = [[-1, 0, 1], [-1, 0, 0]]
    # A, k=0: good 0.9 (error-free), 0.9 (first error later) vs bad 0.3 -> 2 wins. A, k=1: good 0.8 vs bad 0.2 -> 1
    # win (the solution wrong from step 0 is neither good nor first-wrong at k=1). B, k=0: 0.5 vs 0.5 -> one half.
    assert local_step_auc(scores, first_errors) == pytest.approx(3.5 / 4)
    # A PRM that ranks by problem only (every step of a problem scored alike) is at chance within problems.
    assert local_step_auc([[[0.9], [0.9]], [[0.1], [0.1]]], [[-1, 0], [-1, 0]]) == 0.5
    assert math.isnan(local_step_auc([[[0.9], [0.8]]], [[-1, -1]]))  # no wrong step: no pair
    with pytest.raises(ValueError, match="Problem 0: 2 scored solutions but 1 first errors"):
        local_step_auc([[[0.9], [0.8]]], [[-1]])


def test_pairwise_accuracy_by_hand():
    from trl_erprm.evaluation.metrics import pairwise_accuracy

    scores = [[0.9, 0.1, 0.5], [0.2, 0.6], [math.nan, 0.3], [0.7, 0.8], [0.4, 0.4]]
    correct = [[True, False, True], [True, False], [False, True], [True, True], [True, False]]
    # (0.9 > 0.1), (0.5 > 0.1): 2 wins; (0.2 < 0.6): 0; NaN ranks lowest: 0.3 beats it: 1; all right: no pair; tie: 1/2
    assert pairwise_accuracy(scores, correct) == pytest.approx(3.5 / 5)
    assert math.isnan(pairwise_accuracy([[0.1, 0.2]], [[False, False]]))
    with pytest.raises(ValueError, match="Problem 0: 2 scores but 1 correctness values"):
        pairwise_accuracy([[0.1, 0.2]], [[True]])


def test_selection_curves_take_the_vote_weight_per_aggregation():
    """PRMs of both kinds in one call: probabilities vote with their score, an implicit PRM's values with sigmoid."""
    correct, keys = [[1.0, 0.0, 0.0]], [["4", "5", "5"]]
    scores = {"prob": [[0.3, 0.2, 0.2]], "implicit": [[1.5, -0.5, -0.5]]}
    curves = selection_curves(correct, keys, scores, n_values=[3], num_seeds=1, vote_weight={"implicit": "sigmoid"})
    assert curves["weighted_majority_prob"][3]["mean"] == 0.0  # "4" weighs 0.3, "5" weighs 0.2 + 0.2
    # sigmoid(1.5) = 0.818 for "4" against 2 * sigmoid(-0.5) = 0.755 for "5"
    assert curves["weighted_majority_implicit"][3]["mean"] == 1.0
    with pytest.raises(ValueError, match="aggregation 'implicit'"):
        selection_curves(correct, keys, scores, n_values=[3], num_seeds=1)  # raw negative values refused
