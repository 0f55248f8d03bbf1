"""PRLTrainer, a real GRPOTrainer subclass, on a tiny Qwen2 on CPU with the math-verify outcome reward.

Completions are scripted through GRPOTrainer's own `rollout_func` extension point, so that the outcome advantages are
not all zero and the completions contain newlines at known places.
"""

import pytest
import torch
from datasets import Dataset
from grpo_helpers import CPU_GRPO, logged, math_rows, scripted_rollout
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

from trl_erprm.grpo import PRLConfig, PRLTrainer
from trl_erprm.steps import separator_token_ids
from trl_erprm.tiny import build_tiny_model


TABLE = {
    "What is 2 + 2?": [
        "Step 1: 2 + 2 = 4.\n\nStep 2: so 4.\nThe answer is \\boxed{4}.",
        "Step 1: 2 + 2 = 5.\n\nThe answer is \\boxed{5}.",
    ],
    "What is 3 * 3?": ["3 * 3 = 9.\n\\boxed{9}", "3 * 3 = 6.\n\nThen 6 + 1 = 7.\n\\boxed{7}"],
}
SOLUTIONS = {"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$"}


def prl_config(tmp_path, **overrides):
    return PRLConfig(**{**CPU_GRPO, "output_dir": str(tmp_path / "out"), "max_completion_length": 64, **overrides})


def prl_trainer(model_path, tmp_path, **overrides):
    return PRLTrainer(
        model=model_path,
        reward_funcs=[accuracy_reward],
        args=prl_config(tmp_path, **overrides),
        train_dataset=Dataset.from_list(math_rows(SOLUTIONS)),
        rollout_func=scripted_rollout(TABLE),
    )


@pytest.fixture(scope="module")
def bos_lm_path(bos_tokenizer, tmp_path_factory):
    """A tiny policy whose tokenizer prepends a BOS token, like Llama tokenizers."""
    path = tmp_path_factory.mktemp("bos_lm")
    build_tiny_model(bos_tokenizer, save_dir=path, seed=1)
    return str(path)


def test_prl_trainer_is_a_grpo_trainer():
    assert issubclass(PRLTrainer, GRPOTrainer) and issubclass(PRLConfig, GRPOConfig)
    assert PRLTrainer._name == "PRL" and PRLTrainer._paper["id"] == "2601.10201"
    assert "prl" in PRLTrainer._tag_names


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and separators
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eta": 0.0}, "eta"),
        ({"eta": -5.0}, "eta"),
        ({"step_separator": None, "step_len": None}, "step_separator"),
        ({"step_separator": ""}, "step_separator"),
        ({"step_len": 0}, "step_len"),
        ({"beta": 0.0}, "beta"),
    ],
)
def test_prl_config_rejects_bad_values(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        prl_config(tmp_path, **kwargs)


def test_prl_config_accepts_eta_names_and_defaults_to_a_small_beta(tmp_path):
    assert prl_config(tmp_path, eta="hard").eta == float("inf")
    assert prl_config(tmp_path, eta=150).eta == 150.0
    assert prl_config(tmp_path).beta == 1e-3


def test_separator_token_ids_avoid_the_bos_pitfall(bos_tokenizer):
    # the pitfall: the first id of encode("\n") is the BOS, which never occurs inside a completion
    assert bos_tokenizer.encode("\n")[0] == bos_tokenizer.bos_token_id
    ids = separator_token_ids(bos_tokenizer, "\n")
    assert bos_tokenizer.bos_token_id not in ids
    assert set(bos_tokenizer.encode("\n", add_special_tokens=False)) <= set(ids)
    # merged tokens such as ".\n\n" end a step too
    merged = bos_tokenizer.encode("4.\n\nThe", add_special_tokens=False)
    assert any(i in ids and bos_tokenizer.decode([i]) != "\n" for i in merged)
    assert all("\n" in bos_tokenizer.decode([i]) for i in ids)
    assert not set(ids) & set(bos_tokenizer.all_special_ids)


def test_separator_token_ids_of_an_absent_separator_is_empty(tokenizer):
    assert separator_token_ids(tokenizer, "\u00a7") == []
    with pytest.raises(ValueError, match="separator"):
        separator_token_ids(tokenizer, "")


def test_prl_trainer_construction_errors(causal_lm_path, tmp_path):
    with pytest.raises(TypeError, match="PRLConfig"):
        PRLTrainer(model=causal_lm_path, reward_funcs=[accuracy_reward], args=GRPOConfig(**CPU_GRPO, beta=1e-3))
    with pytest.raises(ValueError, match="No token"):
        prl_trainer(causal_lm_path, tmp_path, step_separator="\u00a7")
    with pytest.raises(ValueError, match="tool calling"):
        PRLTrainer(model=causal_lm_path, reward_funcs=[accuracy_reward], args=prl_config(tmp_path), tools=[len])


# ---------------------------------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------------------------------


def check_prl_batch(batch, eta, expected_ends):
    """Advantages are `A_i - S/eta` at each step end, constant within a step, 0 on padding."""
    advantages, mask, ends = batch["advantages"], batch["completion_mask"], batch["step_ends"]
    assert torch.equal(ends, expected_ends)
    log_ratio = (batch["old_logps"] - batch["ref_logps"]) * mask
    for row in range(advantages.shape[0]):
        start = 0
        for end in ends[row].nonzero().flatten().tolist():
            value = batch["grpo_advantages"][row] - log_ratio[row, end:].sum() / eta
            torch.testing.assert_close(advantages[row, start : end + 1], value.expand(end + 1 - start))
            start = end + 1
        assert torch.all(advantages[row, start:] == 0)


@pytest.mark.slow
def test_prl_run_with_a_bos_tokenizer_splits_at_newlines(bos_lm_path, bos_tokenizer, tmp_path):
    trainer = prl_trainer(bos_lm_path, tmp_path, max_steps=2, eta=2.0)
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    assert any(not torch.equal(policy_before[k], v) for k, v in trainer.model.state_dict().items())
    batch = trainer.last_batch
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    newline = torch.tensor([["\n" in bos_tokenizer.decode([int(i)]) for i in row] for row in ids])
    last = torch.zeros_like(newline)
    last[torch.arange(len(ids)), mask.sum(-1) - 1] = True
    expected = (newline | last) & mask.bool()
    assert (expected.sum(-1) >= 2).all(), "every scripted completion has at least two steps"
    check_prl_batch(batch, 2.0, expected)
    # after one policy update the policy differs from the reference: the KL correction is not zero
    assert (batch["old_logps"] - batch["ref_logps"])[mask.bool()].abs().max() > 0
    for key in ("prl/kl_to_go/mean", "prl/steps_per_completion", "prl/advantages/mean", "prl/advantages/std"):
        values = logged(trainer, key)
        assert len(values) == 2 and all(torch.isfinite(torch.tensor(values))), key


@pytest.mark.slow
def test_prl_run_with_fixed_step_length(causal_lm_path, tmp_path):
    trainer = prl_trainer(causal_lm_path, tmp_path, eta=150.0, step_separator=None, step_len=3)
    trainer.train()

    batch = trainer.last_batch
    mask = batch["completion_mask"]
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = positions == (mask.sum(-1, keepdim=True) - 1)
    expected = (((positions + 1) % 3 == 0) | last) & mask.bool()
    check_prl_batch(batch, 150.0, expected)
    # GRPO's advantages are not all zero (one correct answer per group), so the policy gets a signal
    assert batch["grpo_advantages"].abs().sum() > 0
