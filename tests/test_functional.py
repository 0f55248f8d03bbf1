"""ER label math and the soft cross-entropy, against hand-computed values and exact limits."""

import math

import numpy as np
import pytest
import torch

from trl_erprm import er_label, resolve_eta
from trl_erprm.functional import aggregate_steps, soft_cross_entropy, two_token_step_scores


# SPEC section 1: binary rewards with p = 0.25.
@pytest.mark.parametrize(("eta", "expected"), [(1, 0.357), (2, 0.477), (5, 0.727), (10, 0.861), (50, 0.972)])
def test_er_label_reproduces_paper_values(eta, expected):
    assert er_label([1, 0, 0, 0], eta) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("eta", [0.3, 1.0, 4.0, -2.0])
def test_er_label_matches_closed_form_for_binary_rewards(eta):
    for k in range(5):
        p = k / 4
        closed = math.log(1 - p + p * math.exp(eta)) / eta
        assert er_label([1] * k + [0] * (4 - k), eta) == pytest.approx(closed, rel=1e-12, abs=1e-12)


def test_er_label_limits_are_exact():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.0]
    assert er_label(rewards, 0) == pytest.approx(0.4, abs=0)
    assert er_label(rewards, "soft") == 0.4
    assert er_label(rewards, math.inf) == 1.0
    assert er_label(rewards, "hard") == 1.0
    assert er_label(rewards, -math.inf) == 0.0
    assert er_label(rewards, "pessimistic") == 0.0
    assert er_label([1, 1, 1], -math.inf) == 1.0


def test_er_label_approaches_limits_without_overflow():
    rewards = [1.0, 0.0, 0.0, 0.0]
    assert er_label(rewards, 1e-12) == pytest.approx(0.25, abs=1e-10)  # no catastrophic cancellation near 0
    assert er_label(rewards, 1e6) == pytest.approx(1.0, abs=1e-5)  # exp(1e6) would overflow in the naive form
    assert er_label(rewards, 1e308) == pytest.approx(1.0)
    assert er_label(rewards, -1e6) == pytest.approx(0.0, abs=1e-5)
    assert all(np.isfinite(er_label(np.array([rewards]), eta)).all() for eta in (1e-300, 700.0, 1e5, -1e5))


def test_er_label_properties_for_binary_rewards():
    for k in range(9):
        p = k / 8
        rewards = [1] * k + [0] * (8 - k)
        values = [er_label(rewards, eta) for eta in (0.1, 1.0, 3.0, 10.0)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert all(v >= p - 1e-12 for v in values)  # >= the soft label for eta > 0
        assert values == sorted(values)  # increasing in eta
        assert er_label(rewards, -1.0) <= p + 1e-12


def test_er_label_real_valued_rewards_and_stable_form():
    rewards = torch.tensor([0.2, 0.9, -0.5, 0.4], dtype=torch.float64)
    for eta in (0.5, 3.0, -1.5):
        direct = (torch.logsumexp(eta * rewards, 0) - math.log(4)) / eta
        assert er_label(rewards, eta).item() == pytest.approx(direct.item(), rel=1e-12)


def test_er_label_shapes_types_and_mask():
    batch = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)
    out = er_label(batch, 2.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2,)
    assert out.tolist() == pytest.approx([0.4772293, math.log(0.5 + 0.5 * math.e**2) / 2], rel=1e-6)
    three_d = er_label(np.ones((2, 3, 5)), 1.0)
    assert isinstance(three_d, np.ndarray) and three_d.shape == (2, 3)
    assert isinstance(er_label([0, 1], 1.0), float)
    assert er_label(torch.tensor([[1, 0]]), 0.0).dtype == torch.get_default_dtype()  # integer input -> float
    # Ragged rollout counts via a mask: [1, 0] and [1, 0, 0, 0].
    padded = torch.tensor([[1.0, 0.0, 9.0, 9.0], [1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert er_label(padded, 0.0, mask=mask).tolist() == pytest.approx([0.5, 0.25])
    assert er_label(padded, math.inf, mask=mask).tolist() == [1.0, 1.0]
    assert er_label(padded, 1.0, mask=mask).tolist() == pytest.approx(
        [math.log(0.5 + 0.5 * math.e), math.log(0.75 + 0.25 * math.e)]
    )


def test_er_label_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        er_label([1, 0], float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        er_label([1, float("nan")], 1.0)
    with pytest.raises(ValueError, match="no rollouts"):
        er_label(np.zeros((3, 0)), 1.0)
    with pytest.raises(ValueError, match="at least one"):
        er_label([[1, 0]], 1.0, mask=[[False, False]])
    with pytest.raises(ValueError, match="neither a number"):
        resolve_eta("medium")
    assert resolve_eta("2.5") == 2.5 and resolve_eta("inf") == math.inf and resolve_eta(3) == 3.0


def test_soft_cross_entropy_hand_computed():
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0], [0.3, 0.3]]])
    targets = torch.tensor([[0.7, -100.0, 0.0]])
    loss = soft_cross_entropy(logits, targets)
    p1 = 1 / (1 + math.exp(-1.0))
    assert loss[0, 0].item() == pytest.approx(-(0.7 * math.log(p1) + 0.3 * math.log(1 - p1)), rel=1e-6)
    assert loss[0, 1].item() == 0.0
    assert loss[0, 2].item() == pytest.approx(math.log(2), rel=1e-6)
    # Hard targets: equal to the usual cross-entropy.
    hard = torch.tensor([[1.0, 0.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits[0], hard[0].long(), reduction="none")
    assert torch.allclose(soft_cross_entropy(logits, hard)[0], ce)


def test_two_token_scores_and_aggregation():
    logits = torch.zeros(2, 5)
    logits[0, 3], logits[1, 4] = 2.0, 1.0
    scores = two_token_step_scores(logits, good_token_id=3, bad_token_id=4)
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.e)])
    steps = torch.tensor([[0.9, 0.2, 0.7], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_steps(steps, mask, "min").tolist() == pytest.approx([0.2, 0.5])
    assert aggregate_steps(steps, mask, "last").tolist() == pytest.approx([0.7, 0.5])
    assert aggregate_steps(steps, mask, "prod").tolist() == pytest.approx([0.9 * 0.2 * 0.7, 0.5])
    assert aggregate_steps(steps, mask, "mean").tolist() == pytest.approx([0.6, 0.5])
    assert aggregate_steps(steps, mask, "sum").tolist() == pytest.approx([1.8, 0.5])
    assert math.isnan(aggregate_steps(steps, torch.zeros_like(mask), "min")[0].item())
    with pytest.raises(ValueError, match="Unknown step aggregation"):
        aggregate_steps(steps, mask, "median")


def test_advantage_guards():
    from trl_erprm.functional import discounted_returns, prime_advantages

    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.zeros(2, 3), mask, gamma=1.5)
    with pytest.raises(ValueError, match="NaN"):
        prime_advantages(torch.tensor([1.0, float("nan")]), torch.zeros(2, 3), mask, group_size=2)
