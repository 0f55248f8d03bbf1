"""Process-supervised GRPO advantages (DeepSeekMath section 4.1.3) against hand-computed tensors."""

import math

import pytest
import torch

from trl_erprm.functional import process_supervision_advantages
from trl_erprm.grpo.advantages import ADVANTAGE_ESTIMATORS, RolloutBatch


def reference(step_rewards, step_ends, group_size, lengths, T):
    """The paper's definition with loops: normalise every step reward of a group with the group's mean and std (with
    Bessel's correction, eps 1e-4 added), then A_i^t = sum of the normalised rewards of the steps ending at or after t."""
    out = [[0.0] * T for _ in step_rewards]
    for g in range(0, len(step_rewards), group_size):
        rows = range(g, g + group_size)
        values = [r for i in rows for r in step_rewards[i]]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        for i in rows:
            for t in range(lengths[i]):
                out[i][t] = sum((r - mean) / (std + 1e-4) for r, e in zip(step_rewards[i], step_ends[i]) if e >= t)
    return torch.tensor(out)


def padded(rows, fill):
    S = max(len(r) for r in rows)
    return [list(r) + [fill] * (S - len(r)) for r in rows]


# Two groups of two completions, T = 5. Ragged steps; row 2 has two steps ending at the same token; row 3 has none.
REWARDS = [[0.9, 0.3], [0.6], [1.0, 0.0, 0.2], []]
ENDS = [[1, 4], [2], [0, 0, 3], []]
LENGTHS = [5, 3, 4, 2]


def tensors(rewards=REWARDS, ends=ENDS, lengths=LENGTHS, T=5):
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    step_mask = torch.tensor(padded([[True] * len(r) for r in rewards], False))
    # padding steps hold garbage (NaN rewards, out-of-range ends): they must be ignored
    step_rewards = torch.tensor(padded(rewards, math.nan))
    step_ends = torch.tensor(padded(ends, 99))
    return step_rewards, step_ends, step_mask, mask


def test_hand_computed_values():
    advantages = process_supervision_advantages(*tensors(), group_size=2)
    # group 1: R = {0.9, 0.3, 0.6}, mean 0.6, std 0.3 -> r~ = +-0.3 / 0.3001 and 0
    a = 0.3 / 0.3001
    # group 2: R = {1.0, 0.0, 0.2}, mean 0.4, std sqrt(0.28)
    s = math.sqrt(0.28) + 1e-4
    expected = torch.tensor(
        [
            [a - a, a - a, -a, -a, -a],
            [0.0, 0.0, 0.0, 0.0, 0.0],  # its only step reward equals the group mean; padding stays 0
            [(0.6 - 0.4 - 0.2) / s, -0.2 / s, -0.2 / s, -0.2 / s, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],  # no step: no process advantage
        ]
    )
    torch.testing.assert_close(advantages, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(advantages, reference(REWARDS, ENDS, 2, LENGTHS, 5), atol=1e-6, rtol=0)


def test_random_groups_match_the_loop_definition():
    generator = torch.Generator().manual_seed(0)
    T, G = 12, 4
    rewards, ends, lengths = [], [], []
    for _ in range(3 * G):
        n = int(torch.randint(1, T + 1, (1,), generator=generator))
        k = int(torch.randint(1, 5, (1,), generator=generator))
        ends.append(sorted(torch.randint(0, n, (k,), generator=generator).tolist()))
        rewards.append(torch.rand(k, generator=generator).tolist())
        lengths.append(n)
    advantages = process_supervision_advantages(*tensors(rewards, ends, lengths, T), group_size=G)
    torch.testing.assert_close(advantages, reference(rewards, ends, G, lengths, T), atol=1e-5, rtol=0)


def test_one_step_per_completion_is_grpo_outcome_supervision():
    """DeepSeekMath: outcome supervision is the special case of one step per output (ending at its last token)."""
    outcomes = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.2, 0.9])
    lengths = [3, 5, 2, 4, 4, 1]
    T = 5
    _, _, _, mask = tensors([[0.0]] * 6, [[0]] * 6, lengths, T)
    step_ends = torch.tensor([[n - 1] for n in lengths])
    advantages = process_supervision_advantages(outcomes.unsqueeze(-1), step_ends, torch.ones(6, 1), mask, 3)
    grouped = outcomes.view(-1, 3)
    grpo = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    torch.testing.assert_close(advantages, grpo.unsqueeze(-1) * mask, atol=1e-6, rtol=0)


def test_outcome_coefficient_adds_the_outcome_advantage_on_every_token():
    step_rewards, step_ends, step_mask, mask = tensors()
    outcome = torch.tensor([1.0, -1.0, 0.5, -0.5])
    process = process_supervision_advantages(step_rewards, step_ends, step_mask, mask, 2)
    both = process_supervision_advantages(step_rewards, step_ends, step_mask, mask, 2, outcome, outcome_coef=0.5)
    torch.testing.assert_close(both, process + 0.5 * outcome.unsqueeze(-1) * mask)


def test_a_group_with_one_step_reward_or_equal_rewards_gives_zero_not_nan():
    step_rewards = torch.tensor([[0.7], [0.0]])
    step_mask = torch.tensor([[True], [False]])
    advantages = process_supervision_advantages(step_rewards, torch.tensor([[1], [0]]), step_mask, torch.ones(2, 3), 2)
    assert torch.equal(advantages, torch.zeros(2, 3))
    same = process_supervision_advantages(
        torch.full((2, 2), 0.5), torch.tensor([[0, 2]] * 2), torch.ones(2, 2), torch.ones(2, 3), 2
    )
    assert torch.equal(same, torch.zeros(2, 3))


def test_bad_input_is_refused():
    step_rewards, step_ends, step_mask, mask = tensors()
    with pytest.raises(ValueError, match="whole number of groups"):
        process_supervision_advantages(step_rewards, step_ends, step_mask, mask, 3)
    with pytest.raises(ValueError, match="NaN"):
        process_supervision_advantages(torch.full_like(step_rewards, math.nan), step_ends, step_mask, mask, 2)
    with pytest.raises(ValueError, match="outside the completion"):
        process_supervision_advantages(step_rewards, step_ends + 5, step_mask, mask, 2)
    with pytest.raises(ValueError, match="outcome_advantages"):
        process_supervision_advantages(step_rewards, step_ends, step_mask, mask, 2, outcome_coef=1.0)


def test_the_estimator_is_registered_and_reads_the_batch():
    step_rewards, step_ends, step_mask, mask = tensors()
    batch = RolloutBatch(
        rewards=torch.zeros(4, 1),
        reward_weights=torch.ones(1),
        group_size=2,
        completion_ids=torch.zeros(4, 5, dtype=torch.long),
        mask=mask,
        grpo_advantages=torch.tensor([1.0, -1.0, 0.0, 0.0]),
        tensors={"step_rewards": step_rewards, "step_ends": step_ends, "step_mask": step_mask},
    )

    class Args:
        outcome_coef = 2.0

    expected = process_supervision_advantages(
        step_rewards, step_ends, step_mask, mask, 2, batch.grpo_advantages, outcome_coef=2.0
    )
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["process_supervision"](batch, Args()), expected)
