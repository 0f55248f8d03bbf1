"""PRIME and PRL advantage functions of `trl_erprm.functional` against hand-computed tensors.

Every expected value below was worked out by hand from the formulas of SPEC sections 4 and 5 (the arithmetic is in
the comments), not by running the functions.
"""

import pytest
import torch

from trl_erprm.functional import (
    accuracy_band_mask,
    discounted_returns,
    fill_from_step_ends,
    last_token_mask,
    leave_one_out_baseline,
    masked_whiten,
    prime_advantages,
    prl_advantages,
    step_end_mask_from_token_ids,
    weighted_outcome,
)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Leave-one-out baseline
# ---------------------------------------------------------------------------------------------------------------------


def test_leave_one_out_baseline_k4():
    # group 1: sum 2 -> (2 - v) / 3; group 2: sum 20 -> (20 - v) / 3
    values = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0])
    close(leave_one_out_baseline(values, 4), [1 / 3, 2 / 3, 2 / 3, 1 / 3, 6.0, 16 / 3, 14 / 3, 4.0])


def test_leave_one_out_baseline_k2_is_the_other_sample():
    close(leave_one_out_baseline(torch.tensor([1.0, 3.0, -2.0, 5.0]), 2), [3.0, 1.0, 5.0, -2.0])


def test_leave_one_out_baseline_rejects_k1_and_ragged_groups():
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_baseline(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="whole number of groups"):
        leave_one_out_baseline(torch.tensor([1.0, 2.0, 3.0]), 2)


# ---------------------------------------------------------------------------------------------------------------------
# Returns and whitening
# ---------------------------------------------------------------------------------------------------------------------


def test_discounted_returns_gamma_one_with_padding():
    # the 100 sits on a padding position and must not leak into the returns
    rewards = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    close(discounted_returns(rewards, mask, 1.0), [[6.0, 5.0, 3.0, 0.0], [9.0, 5.0, 0.0, 0.0]])


def test_discounted_returns_gamma_half():
    # row 0: G2 = 3, G1 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75; row 1: G1 = 5, G0 = 4 + 2.5 = 6.5
    rewards = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    close(discounted_returns(rewards, mask, 0.5), [[2.75, 3.5, 3.0, 0.0], [6.5, 5.0, 0.0, 0.0]])


def test_masked_whiten_uses_only_valid_positions():
    # valid values 1, 2, 3, 4: mean 2.5, unbiased variance 5/3, std 1.290994
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(masked_whiten(values, mask), [[-1.161895, -0.387298, 0.387298], [1.161895, 0.0, 0.0]])


def test_masked_whiten_of_an_empty_mask_is_zero_not_nan():
    out = masked_whiten(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2))
    assert not torch.isnan(out).any()
    close(out, [[0.0, 0.0], [0.0, 0.0]])


# ---------------------------------------------------------------------------------------------------------------------
# PRIME advantages
# ---------------------------------------------------------------------------------------------------------------------

# Two groups of K = 2, T = 3. Per-token means r(y)/|y|: 0.6/3 = 0.2, 0.9/2 = 0.45, 0.6/3 = 0.2, 0.3/1 = 0.3.
# Leave-one-out process baselines (the other sample of the pair): 0.45, 0.2, 0.3, 0.2.
# Outcome advantages: 1 - 0 = 1, 0 - 1 = -1, 1 - 1 = 0, 1 - 1 = 0. The 9.0 entries are padding.
O2 = torch.tensor([1.0, 0.0, 1.0, 1.0])
R2 = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0], [0.0, 0.6, 0.0], [0.3, 9.0, 9.0]])
M2 = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])


def test_prime_advantages_paper_gamma_one():
    # row 0: process [-0.35, -0.25, -0.15] -> returns [-0.75, -0.4, -0.15], + 1
    # row 1: process [0.2, 0.3] -> returns [0.5, 0.3], - 1
    # row 2: process [-0.3, 0.3, -0.3] -> returns [-0.3, 0.0, -0.3], + 0
    # row 3: process [0.1] -> returns [0.1], + 0
    out = prime_advantages(O2, R2, M2, group_size=2, gamma=1.0, whiten=False)
    close(out, [[0.25, 0.6, 0.85], [-0.5, -0.7, 0.0], [-0.3, 0.0, -0.3], [0.1, 0.0, 0.0]])


def test_prime_advantages_paper_gamma_half():
    # row 0: G2 = -0.15, G1 = -0.25 - 0.075 = -0.325, G0 = -0.35 - 0.1625 = -0.5125
    # row 1: G1 = 0.3, G0 = 0.2 + 0.15 = 0.35
    # row 2: G2 = -0.3, G1 = 0.3 - 0.15 = 0.15, G0 = -0.3 + 0.075 = -0.225
    out = prime_advantages(O2, R2, M2, group_size=2, gamma=0.5, whiten=False)
    close(out, [[0.4875, 0.675, 0.85], [-0.65, -0.7, 0.0], [-0.225, 0.15, -0.3], [0.1, 0.0, 0.0]])


def test_prime_advantages_reference_baseline():
    # process = r_t * K/(K-1) - sum_group(mean)/(K-1) = 2 r_t - group sum; group sums 0.65 and 0.5
    # row 0: [-0.45, -0.25, -0.05] -> returns [-0.75, -0.3, -0.05], + 1
    # row 1: [0.15, 0.35] -> [0.5, 0.35], - 1
    # row 2: [-0.5, 0.7, -0.5] -> [-0.3, 0.2, -0.5]
    # row 3: [0.1] -> [0.1]
    out = prime_advantages(O2, R2, M2, group_size=2, baseline="reference", whiten=False)
    close(out, [[0.25, 0.7, 0.95], [-0.5, -0.65, 0.0], [-0.3, 0.2, -0.5], [0.1, 0.0, 0.0]])
    # the self term sums to zero over a sequence, so the return at the first token equals the paper's
    paper = prime_advantages(O2, R2, M2, group_size=2, baseline="paper", whiten=False)
    close(out[:, 0], paper[:, 0].tolist())


def test_prime_advantages_reference_baseline_discounts_the_outcome_too():
    # process terms as above; the outcome advantage sits on the last valid token and is discounted with the process:
    # row 0: [-0.45, -0.25, -0.05 + 1] -> G2 = 0.95, G1 = -0.25 + 0.475 = 0.225, G0 = -0.45 + 0.1125 = -0.3375
    # row 1: [0.15, 0.35 - 1] -> G1 = -0.65, G0 = 0.15 - 0.325 = -0.175
    # row 2: [-0.5, 0.7, -0.5] -> G2 = -0.5, G1 = 0.7 - 0.25 = 0.45, G0 = -0.5 + 0.225 = -0.275
    # row 3: [0.1] -> [0.1]
    out = prime_advantages(O2, R2, M2, group_size=2, baseline="reference", gamma=0.5, whiten=False)
    close(out, [[-0.3375, 0.225, 0.95], [-0.175, -0.65, 0.0], [-0.275, 0.45, -0.5], [0.1, 0.0, 0.0]])
    # the paper's Algorithm 1 never discounts the outcome: at gamma = 0.5 the two differ, at gamma = 1 they agree
    paper = prime_advantages(O2, R2, M2, group_size=2, baseline="paper", gamma=0.5, whiten=False)
    assert not torch.allclose(out[0], paper[0])
    reference_1 = prime_advantages(O2, R2, M2, group_size=2, baseline="reference", gamma=1.0, whiten=False)
    paper_1 = prime_advantages(O2, R2, M2, group_size=2, baseline="paper", gamma=1.0, whiten=False)
    close(reference_1[:, 0], paper_1[:, 0].tolist())


def _reference_code_returns(token_scores, outcome, mask, n_samples, rm_gamma, verifier_gamma):
    """The algorithm of `compute_rloo_returns` in the PRIME reference code, written out with loops: per reward source
    (token scores on every valid token, the verifier's outcome on the last valid token), a leave-one-out baseline
    with self term over the source's masked per-sample means, a discounted return with the source's own gamma, the
    sum of the sources, then verl's whitening `(x - mean) * rsqrt(var_unbiased + 1e-8)` over the mask."""
    B, T = token_scores.shape
    lengths = mask.sum(-1).long()
    sources = []
    for values, gamma, on_last in ((token_scores, rm_gamma, False), (outcome, verifier_gamma, True)):
        reward = torch.zeros(B, T, dtype=torch.float64)
        where = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            if on_last:
                where[b, lengths[b] - 1] = True
                reward[b, lengths[b] - 1] = values[b]
            else:
                where[b, : lengths[b]] = True
                reward[b, : lengths[b]] = values[b, : lengths[b]]
        for start in range(0, B, n_samples):
            means = [reward[b][where[b]].mean() for b in range(start, start + n_samples)]
            baseline = sum(means) / (n_samples - 1)
            for b in range(start, start + n_samples):
                reward[b][where[b]] = reward[b][where[b]] * n_samples / (n_samples - 1) - baseline
        returns = torch.zeros(B, T, dtype=torch.float64)
        for t in reversed(range(T)):
            returns[:, t] = reward[:, t] + (gamma * returns[:, t + 1] if t + 1 < T else 0.0)
        sources.append(returns)
    total = sources[0] + sources[1]
    valid = total[mask.bool()]
    whitened = (total - valid.mean()) * torch.rsqrt(valid.var(unbiased=True) + 1e-8)
    return whitened * mask


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_prime_reference_baseline_reproduces_the_reference_algorithm(gamma):
    generator = torch.Generator().manual_seed(0)
    B, T, K = 8, 7, 4
    token_scores = torch.randn(B, T, generator=generator, dtype=torch.float64) * 0.1
    outcome = torch.randint(0, 2, (B,), generator=generator).double()
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double()
    expected = _reference_code_returns(token_scores, outcome, mask, K, gamma, gamma)
    out = prime_advantages(outcome, token_scores, mask, K, gamma=gamma, baseline="reference", whiten=True)
    # the only difference is where the whitening epsilon goes (variance there, standard deviation here)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_last_token_mask_with_holes_and_an_empty_row():
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    assert last_token_mask(mask).tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]


def test_weighted_outcome_ignores_none_and_flags_unscorable():
    # row 0: 0.5 * 1 + 0.5 * 0 = 0.5; row 1: the second function returned None -> 0.5 * 1; row 2: both None
    nan = float("nan")
    rewards = torch.tensor([[1.0, 0.0], [1.0, nan], [nan, nan]])
    outcome, unscorable = weighted_outcome(rewards, torch.tensor([0.5, 0.5]))
    close(outcome, [0.5, 0.5, 0.0])
    assert unscorable.tolist() == [False, False, True]


# One group of K = 3, T = 2. Means 0.3, 0.3, 0.9 -> process baselines (0.3+0.9)/2 = 0.6, 0.6, (0.3+0.3)/2 = 0.3.
# Outcome advantages: 1 - 0 = 1, 0 - 0.5 = -0.5, 0 - 0.5 = -0.5.
O3 = torch.tensor([1.0, 0.0, 0.0])
R3 = torch.tensor([[0.3, 0.3], [0.0, 0.6], [0.9, 7.0]])
M3 = torch.tensor([[1, 1], [1, 1], [1, 0]])


def test_prime_advantages_k3_and_coefficients():
    # process returns: row 0 [-0.6, -0.3], row 1 [-0.6, 0.0], row 2 [0.6]
    out = prime_advantages(O3, R3, M3, group_size=3, whiten=False)
    close(out, [[0.4, 0.7], [-1.1, -0.5], [0.1, 0.0]])
    out = prime_advantages(O3, R3, M3, group_size=3, outcome_coef=2.0, process_coef=0.5, whiten=False)
    close(out, [[1.7, 1.85], [-1.3, -1.0], [-0.7, 0.0]])


def test_prime_advantages_whitened():
    # valid values 0.4, 0.7, -1.1, -0.5, 0.1: mean -0.08, unbiased variance 0.522, std 0.7224957
    out = prime_advantages(O3, R3, M3, group_size=3, whiten=True)
    close(out, [[0.664364, 1.079591], [-1.411773, -0.581318], [0.249136, 0.0]])


def test_prime_advantages_rejects_an_unknown_baseline():
    with pytest.raises(ValueError, match="baseline"):
        prime_advantages(O2, R2, M2, group_size=2, baseline="self")


def test_prime_advantages_with_every_sample_masked_out_is_zero():
    out = prime_advantages(O2, R2, torch.zeros_like(M2), group_size=2)
    assert not torch.isnan(out).any()
    close(out, torch.zeros(4, 3).tolist())


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy band
# ---------------------------------------------------------------------------------------------------------------------


def test_accuracy_band_mask_default_band():
    # group accuracies 0.25 keep, 0.5 keep, 1.0 drop, 0.75 keep
    o = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.float)
    keep = accuracy_band_mask(o, 4)
    assert keep.tolist() == [True] * 8 + [False] * 4 + [True] * 4


def test_accuracy_band_mask_edges_are_inclusive_and_zero_is_dropped():
    # K = 5: accuracies 0.2 (edge, kept), 0.8 (edge, kept), 0.0 (dropped)
    o = torch.tensor([1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.float)
    assert accuracy_band_mask(o, 5).tolist() == [True] * 10 + [False] * 5


def test_accuracy_band_mask_drops_groups_with_a_truncated_completion():
    o = torch.tensor([1, 0, 0, 1, 1, 0], dtype=torch.float)
    truncated = torch.tensor([False, False, False, True, False, False])
    assert accuracy_band_mask(o, 2, truncated=truncated).tolist() == [True, True, False, False, True, True]


# ---------------------------------------------------------------------------------------------------------------------
# Steps and PRL
# ---------------------------------------------------------------------------------------------------------------------

IDS = torch.tensor([[5, 10, 7, 10, 3, 0], [10, 4, 4, 0, 0, 0]])
IDS_MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])


def test_step_end_mask_from_separators():
    # row 0: separators at 1 and 3, last valid token at 4; row 1: separator at 0, last valid at 2
    ends = step_end_mask_from_token_ids(IDS, IDS_MASK, separator_token_ids=[10])
    assert ends.int().tolist() == [[0, 1, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0]]


def test_step_end_mask_every_step_len_tokens():
    # step_len 2: positions 1, 3, 5 (5 is padding in both rows) plus the last valid token
    ends = step_end_mask_from_token_ids(IDS, IDS_MASK, step_len=2)
    assert ends.int().tolist() == [[0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="step_len"):
        step_end_mask_from_token_ids(IDS, IDS_MASK, step_len=0)


def test_step_end_mask_with_a_bos_id_finds_no_step():
    # The BOS pitfall: tokenizer.encode("\n")[0] is the BOS id (say 1), which never occurs inside a completion, so
    # each completion collapses into one step ending at its last token.
    ends = step_end_mask_from_token_ids(IDS, IDS_MASK, separator_token_ids=[1])
    assert ends.int().tolist() == [[0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]


def test_fill_from_step_ends():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    ends = torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    close(fill_from_step_ends(values, ends, mask), [[2.0, 2.0, 4.0, 4.0, 5.0, 0.0]])


def test_prl_advantages_filled_per_step():
    # row 0: log ratios [0.5, -0.5, -1.5] -> S = [-1.5, -2.0, -1.5] -> R = 1 - S/2 = [1.75, 2.0, 1.75];
    #        steps end at 1 (separator) and 2 (last) -> [2.0, 2.0, 1.75]
    # row 1: log ratios [1, 1, (padding)] -> S = [2, 1] -> R = -0.5 - S/2 = [-1.5, -1.0]; one step -> [-1.0, -1.0]
    a = torch.tensor([1.0, -0.5])
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.5, -1.5], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ends = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    close(prl_advantages(a, old, ref, mask, ends, eta=2.0), [[2.0, 2.0, 1.75], [-1.0, -1.0, 0.0]])


def test_prl_advantages_eta_limits():
    a = torch.tensor([1.0, -0.5])
    old = torch.tensor([[-1.0, -2.0], [-1.0, -1.0]])
    ref = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    ends = torch.tensor([[0, 1], [0, 1]], dtype=torch.bool)
    # eta = +inf ("hard"): no KL correction, every valid token gets A_i
    close(prl_advantages(a, old, ref, mask, ends, eta="hard"), [[1.0, 1.0], [-0.5, -0.5]])
    with pytest.raises(ValueError, match="eta"):
        prl_advantages(a, old, ref, mask, ends, eta=0.0)
