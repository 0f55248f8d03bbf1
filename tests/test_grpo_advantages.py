"""The registry of advantage estimators and the mixin that applies them to a GRPOTrainer subclass.

Estimator values are hand-computed (the arithmetic is in the comments or in `test_functional_advantages.py`, whose
tensors are reused here).
"""

import pytest
import torch
from datasets import Dataset
from grpo_helpers import CPU_GRPO, math_rows
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

from trl_erprm.grpo import ADVANTAGE_ESTIMATORS, PRIMEConfig, ProcessAdvantageMixin, RolloutBatch


def batch_of(**tensors):
    """A RolloutBatch of 4 completions (2 groups of 2) over 3 tokens; the rewards are not read by these estimators."""
    mask = tensors.pop("mask", torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]))
    return RolloutBatch(
        rewards=torch.zeros(4, 1),
        reward_weights=torch.ones(1),
        group_size=2,
        completion_ids=torch.zeros(4, 3, dtype=torch.long),
        mask=mask,
        grpo_advantages=tensors.pop("grpo_advantages", torch.tensor([0.7, -0.7, 0.0, 0.0])),
        tensors=tensors,
    )


def test_the_registry_names_the_estimators():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "prime", "prl", "process_supervision"}
    assert all(callable(f) for f in ADVANTAGE_ESTIMATORS.values())


def test_grpo_estimator_passes_grpo_advantages_through():
    batch = batch_of()
    assert ADVANTAGE_ESTIMATORS["grpo"](batch, None) is batch.grpo_advantages


def test_prime_estimator_zeroes_filtered_groups(tmp_path):
    # the tensors of test_prime_advantages_paper_gamma_one; the second group is filtered out (keep False): the first
    # group's advantages are unchanged (its baselines are within the group), the second's are 0
    args = PRIMEConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, whiten=False)
    batch = batch_of(
        outcome=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        keep=torch.tensor([True, True, False, False]),
        token_rewards=torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0], [0.0, 0.6, 0.0], [0.3, 9.0, 9.0]]),
    )
    out = ADVANTAGE_ESTIMATORS["prime"](batch, args)
    expected = torch.tensor([[0.25, 0.6, 0.85], [-0.5, -0.7, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_prl_estimator_reads_the_old_and_reference_logps():
    # test_prl_advantages_filled_per_step, padded to 4 rows (rows 2 and 3: no KL, A = 0)
    class Args:
        eta = 2.0

    batch = batch_of(
        mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]]),
        grpo_advantages=torch.tensor([1.0, -0.5, 0.0, 0.0]),
        old_logps=torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        ref_logps=torch.tensor([[-1.5, -1.5, -1.5], [-2.0, -2.0, -2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        step_ends=torch.tensor([[0, 1, 1], [0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.bool),
    )
    out = ADVANTAGE_ESTIMATORS["prl"](batch, Args())
    expected = torch.tensor([[2.0, 2.0, 1.75], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


class PassThrough(ProcessAdvantageMixin, GRPOTrainer):
    """The mechanism with GRPO's own advantages: gathered, passed through, sliced back."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_process_advantages()


def test_the_mixin_with_the_grpo_estimator_leaves_grpo_unchanged(causal_lm_path, tmp_path):
    args = GRPOConfig(**{**CPU_GRPO, "output_dir": str(tmp_path), "max_completion_length": 8})
    dataset = Dataset.from_list(math_rows({"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$"}))
    trainer = PassThrough(model=causal_lm_path, reward_funcs=[accuracy_reward], args=args, train_dataset=dataset)
    trainer.train()
    batch = trainer.last_batch
    assert batch["advantages"].shape == (4,)
    assert torch.equal(batch["advantages"], batch["grpo_advantages"])

    class Unknown(PassThrough):
        advantage_estimator = "rloo"  # not registered

    with pytest.raises(ValueError, match="Unknown advantage_estimator 'rloo'"):
        Unknown(model=causal_lm_path, reward_funcs=[accuracy_reward], args=args, train_dataset=dataset)


def test_the_mixin_on_another_trainer_than_grpo_is_refused_at_construction(causal_lm_path, tmp_path):
    """On RLOOTrainer (sequence-level loss) the mixin used to build and then fail deep inside TRL with a tensor size
    mismatch; now construction stops with the reason, before any model is loaded."""
    from trl import RLOOConfig, RLOOTrainer

    class OnRLOO(ProcessAdvantageMixin, RLOOTrainer):
        advantage_estimator = "grpo"

    args = RLOOConfig(**{**CPU_GRPO, "output_dir": str(tmp_path)})
    dataset = Dataset.from_list(math_rows({"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$"}))
    with pytest.raises(TypeError, match=r"OnRLOO puts ProcessAdvantageMixin on RLOOTrainer.*sequence-level"):
        OnRLOO(model=causal_lm_path, reward_funcs=[accuracy_reward], args=args, train_dataset=dataset)
    with pytest.raises(TypeError, match="trl.GRPOTrainer subclasses only"):
        ProcessAdvantageMixin.check_process_advantages(object.__new__(OnRLOO))
