"""The LM-head soft cross-entropy and the KTO / NCA implicit-PRM losses, against values computed by hand."""

import math

import pytest
import torch

from trl_erprm import resolve_eta
from trl_erprm.functional import (
    implicit_prm_dpo_loss,
    implicit_prm_kto_loss,
    implicit_prm_nca_loss,
    kto_reference_point,
    lm_head_soft_cross_entropy,
    log_ratio_tolerance,
    sequence_log_ratio,
    sign_accuracy,
    soft_cross_entropy,
    two_token_logits,
    two_token_step_scores,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


GOOD, BAD = 3, 1


def test_lm_head_soft_cross_entropy_by_hand():
    # vocabulary of 5; position 0: l_good = 2.0, l_bad = 0.5 (and a large logit elsewhere, which must not count)
    logits = torch.tensor([[[0.0, 0.5, 10.0, 2.0, -1.0], [1.0, 3.0, 0.0, -2.0, 9.0]]])
    targets = torch.tensor([[0.7, -100.0]])
    loss = lm_head_soft_cross_entropy(logits, targets, GOOD, BAD)
    # p_good = sigmoid(1.5): -(0.7 log p_good + 0.3 log p_bad) = 0.7 softplus(-1.5) + 0.3 softplus(1.5)
    expected = 0.7 * softplus(-1.5) + 0.3 * softplus(1.5)
    assert expected == pytest.approx(0.6514132779, abs=1e-9)
    assert loss.shape == (1, 2)
    assert loss[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert loss[0, 1].item() == 0.0  # unlabelled position
    # the 0.7 is never rounded: the loss is linear in v with slope log p_bad - log p_good = -1.5
    for v in (0.0, 0.25, 0.7, 1.0):
        got = lm_head_soft_cross_entropy(logits, torch.tensor([[v, -100.0]]), GOOD, BAD)[0, 0].item()
        assert got == pytest.approx(softplus(1.5) - 1.5 * v, rel=1e-6)


def test_two_token_logits_match_the_scorers_probability_and_soft_cross_entropy():
    logits = torch.randn(2, 4, 7)
    pair = two_token_logits(logits, GOOD, BAD)
    assert pair.shape == (2, 4, 2)
    assert torch.equal(pair[..., 1], logits[..., GOOD]) and torch.equal(pair[..., 0], logits[..., BAD])
    torch.testing.assert_close(pair.softmax(-1)[..., 1], two_token_step_scores(logits, GOOD, BAD))
    targets = torch.rand(2, 4)
    torch.testing.assert_close(
        lm_head_soft_cross_entropy(logits, targets, GOOD, BAD), soft_cross_entropy(pair, targets)
    )


def test_kto_loss_by_hand():
    log_ratio = torch.tensor([2.0, -1.0, 1.0])
    labels = torch.tensor([1.0, 0.0, 0.0])
    loss = implicit_prm_kto_loss(log_ratio, labels, beta=0.5, reference_point=0.4, undesirable_weight=2.0)
    expected = [
        1.0 - sigmoid(0.5 * (2.0 - 0.4)),  # desirable: lambda_D (1 - sigmoid(beta (r - z0)))
        2.0 * (1.0 - sigmoid(0.5 * (0.4 + 1.0))),  # undesirable: lambda_U (1 - sigmoid(beta (z0 - r)))
        2.0 * (1.0 - sigmoid(0.5 * (0.4 - 1.0))),
    ]
    assert expected == pytest.approx([0.3100255189, 0.6636244556, 1.1488850336], abs=1e-9)
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    # the reference point may be a tensor; with z0 = 0 the desirable and undesirable terms mirror each other
    mirrored = implicit_prm_kto_loss(torch.tensor([1.5, -1.5]), torch.tensor([1.0, 0.0]), 1.0, torch.tensor(0.0))
    assert mirrored[0].item() == pytest.approx(mirrored[1].item()) == pytest.approx(1 - sigmoid(1.5))


def test_kto_gradients_push_correct_up_and_incorrect_down():
    log_ratio = torch.tensor([0.3, 0.3], requires_grad=True)
    implicit_prm_kto_loss(log_ratio, torch.tensor([1.0, 0.0]), 0.5, 0.1).sum().backward()
    assert log_ratio.grad[0] < 0 < log_ratio.grad[1]


def test_kto_reference_point_is_a_clamped_detached_mean():
    ratio = torch.tensor([1.0, 2.0], requires_grad=True)
    z0 = kto_reference_point(ratio)
    assert z0.item() == pytest.approx(1.5) and not z0.requires_grad
    assert kto_reference_point(torch.tensor([1.0, -3.0])).item() == 0.0  # a negative KL estimate is clamped to 0
    with pytest.raises(ValueError, match="at least one mismatched"):
        kto_reference_point(torch.tensor([]))


def test_nca_loss_by_hand():
    chosen, rejected = torch.tensor([3.0, 0.0]), torch.tensor([-2.0, 0.0])
    loss = implicit_prm_nca_loss(chosen, rejected, beta=0.1)
    # -log sigmoid(r_w) - (log sigmoid(-r_w) + log sigmoid(-r_l)) / 2 with r = 0.1 * log-ratio
    expected = softplus(-0.3) + 0.5 * (softplus(0.3) + softplus(-0.2))
    assert expected == pytest.approx(1.28060225, abs=1e-7)
    assert loss[0].item() == pytest.approx(expected, rel=1e-6)
    assert loss[1].item() == pytest.approx(2 * math.log(2), rel=1e-6)  # all rewards 0: log 2 + log 2 / 2 * 2


def test_nca_depends_on_the_rewards_themselves_unlike_dpo():
    # shifting both rewards by the same amount leaves DPO unchanged but not NCA
    chosen, rejected = torch.tensor([1.0]), torch.tensor([-1.0])
    dpo = implicit_prm_dpo_loss(chosen, rejected, 1.0)
    assert implicit_prm_dpo_loss(chosen + 5, rejected + 5, 1.0).item() == pytest.approx(dpo.item())
    assert implicit_prm_nca_loss(chosen + 5, rejected + 5, 1.0).item() != pytest.approx(
        implicit_prm_nca_loss(chosen, rejected, 1.0).item()
    )
    # d/dr_w = -(1 - sigmoid(r_w)) + sigmoid(r_w) / 2: the correct reward goes to log 2, the incorrect one down
    for value, sign in ((-5.0, -1), (0.0, -1), (math.log(2), 0), (5.0, 1)):
        w, lose = torch.tensor([value], requires_grad=True), torch.tensor([0.0], requires_grad=True)
        implicit_prm_nca_loss(w, lose, 1.0).sum().backward()
        assert w.grad.item() == pytest.approx(-1 + 1.5 * sigmoid(value), abs=1e-6)
        assert (w.grad.item() > 1e-6) - (w.grad.item() < -1e-6) == sign
        assert lose.grad.item() == pytest.approx(0.25)  # sigmoid(0) / 2 > 0: the incorrect reward is pushed down


def test_resolve_eta_none_names_eta():
    with pytest.raises(TypeError, match=r"eta must be a number or one of .*got None"):
        resolve_eta(None)
    with pytest.raises(TypeError, match="eta must be a number"):
        resolve_eta([1.0])
    assert resolve_eta("inf") == math.inf and resolve_eta(2) == 2.0


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy of an implicit PRM: the sign of a margin, a tie (within float noise) counting 1/2
# ---------------------------------------------------------------------------------------------------------------------


def test_sign_accuracy_by_hand():
    margin = torch.tensor([0.0, 0.0, 2.0, -3.0, 1.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5])  # 0.5 is the positive class
    assert sign_accuracy(margin, labels).tolist() == [0.5, 0.5, 1.0, 1.0, 0.0, 0.0, 1.0]
    # within the tolerance: a tie, whatever the sign; beyond it: the sign decides
    margin = torch.tensor([1e-7, -1e-7, 3e-6, -3e-6, 1e-6])
    labels = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    assert sign_accuracy(margin, labels, 1e-6).tolist() == [0.5, 0.5, 1.0, 0.0, 0.5]
    tolerance = torch.tensor([1e-6, 1e-6, 1e-5, 1e-6, 0.0])
    assert sign_accuracy(margin, labels, tolerance).tolist() == [0.5, 0.5, 0.5, 0.0, 0.0]


def test_log_ratio_tolerance_by_hand():
    eps32 = torch.finfo(torch.float32).eps
    logps = torch.tensor([[-2.0, -0.5, -3.0], [-0.25, -4.0, 0.0]])
    ref = torch.tensor([[-2.5, -0.25, -9.0], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # per token max(1, |logp|) + max(1, |ref|): row 0: (2 + 2.5) + (1 + 1); row 1: (1 + 1) + (4 + 1.5)
    expected = torch.tensor([6.5, 7.5])
    torch.testing.assert_close(log_ratio_tolerance(logps, ref, mask), eps32 * expected)
    eps64 = torch.finfo(torch.float64).eps
    torch.testing.assert_close(log_ratio_tolerance(logps.double(), ref.double(), mask), eps64 * expected)
    torch.testing.assert_close(log_ratio_tolerance(logps, None, mask), eps32 * torch.tensor([3.0, 5.0]))


def test_float_noise_is_a_tie_and_a_real_margin_a_verdict():
    """The same log-probs computed twice in float32 (other summation order, float64 rounded): the log-ratios are
    noise, every sample a tie (accuracy exactly 1/2); a shift of 1e-3 on one token is a verdict."""
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(64, 200, 50, generator=generator)
    index = torch.randint(0, 50, (64, 200, 1), generator=generator)
    logps = torch.log_softmax(logits, -1).gather(-1, index).squeeze(-1)
    ref = torch.log_softmax(logits.double(), -1).gather(-1, index).squeeze(-1).float()
    mask = torch.ones(64, 200)
    mask[::2, 150:] = 0
    labels = (torch.arange(64) % 3 == 0).float()
    log_ratio = sequence_log_ratio(logps, ref, mask)
    tolerance = log_ratio_tolerance(logps, ref, mask)
    assert (log_ratio != 0).all()  # noise, not exact ties: the old rule read its signs
    assert sign_accuracy(log_ratio, labels, tolerance).tolist() == [0.5] * 64
    shift = torch.zeros(64, 200)
    shift[:, 0] = torch.where(labels.bool(), 1e-3, -1e-3)
    assert sign_accuracy(sequence_log_ratio(logps + shift, ref, mask), labels, tolerance).tolist() == [1.0] * 64
    assert sign_accuracy(sequence_log_ratio(logps - shift, ref, mask), labels, tolerance).tolist() == [0.0] * 64
