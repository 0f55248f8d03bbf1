"""PRLCallback on a real, unmodified GRPOTrainer (tiny Qwen2 on CPU, math-verify outcome reward).

Completions are scripted through GRPOTrainer's own `rollout_func` extension point, so that the outcome advantages are
not all zero and the completions contain newlines at known places.
"""

import os

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

from trl_erprm.implicit_prm import ImplicitPRM
from trl_erprm.prime import PRIMECallback
from trl_erprm.prl import PRLCallback, PRLConfig, separator_token_ids
from trl_erprm.tiny import build_tiny_model


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TABLE = {
    "What is 2 + 2?": [
        "Step 1: 2 + 2 = 4.\n\nStep 2: so 4.\nThe answer is \\boxed{4}.",
        "Step 1: 2 + 2 = 5.\n\nThe answer is \\boxed{5}.",
    ],
    "What is 3 * 3?": ["3 * 3 = 9.\n\\boxed{9}", "3 * 3 = 6.\n\nThen 6 + 1 = 7.\n\\boxed{7}"],
}
SOLUTIONS = {"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$"}


def scripted_rollout(table):
    """A GRPOTrainer `rollout_func` returning `table[prompt][j]` for the `j`-th completion of a prompt's group."""

    def rollout_func(prompts, trainer):
        tokenizer = trainer.processing_class
        start = trainer.accelerator.process_index * len(prompts)
        prompt_ids, completion_ids = [], []
        for i, prompt in enumerate(prompts):
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            prompt_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            completion = table[prompt[-1]["content"]][(start + i) % trainer.num_generations]
            completion_ids.append(
                tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            )
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout_func


def prl_trainer(model_path, tmp_path, **overrides):
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": q}], "solution": s} for q, s in SOLUTIONS.items()]
    )
    config = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 64,
        "max_steps": 1,
        "learning_rate": 1e-2,
        "beta": 1e-3,
        "bf16": False,
        "use_cpu": True,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
    }
    config.update(overrides)
    return GRPOTrainer(
        model=model_path,
        reward_funcs=[accuracy_reward],
        args=GRPOConfig(**config),
        train_dataset=dataset,
        rollout_func=scripted_rollout(TABLE),
    )


@pytest.fixture(scope="module")
def bos_lm_path(bos_tokenizer, tmp_path_factory):
    """A tiny policy whose tokenizer prepends a BOS token, like Llama tokenizers."""
    path = tmp_path_factory.mktemp("bos_lm")
    build_tiny_model(bos_tokenizer, save_dir=path, seed=1)
    return str(path)


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
    ],
)
def test_prl_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PRLConfig(**kwargs)


def test_prl_config_accepts_eta_names():
    assert PRLConfig(eta="hard").eta == float("inf")
    assert PRLConfig(eta=150).eta == 150.0


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


def test_prl_callback_construction_errors(causal_lm_path, tmp_path):
    trainer = prl_trainer(causal_lm_path, tmp_path, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        PRLCallback(trainer)
    trainer = prl_trainer(causal_lm_path, tmp_path)
    with pytest.raises(ValueError, match="No token"):
        PRLCallback(trainer, PRLConfig(step_separator="\u00a7"))
    with pytest.raises(TypeError, match="GRPOTrainer"):
        PRLCallback(object())

    # nothing above was attached; one callback attaches, and a second one, PRL or PRIME, is refused
    callback = PRLCallback(trainer)
    assert "_generate_and_score_completions" in vars(trainer) and callback in trainer.callback_handler.callbacks
    with pytest.raises(ValueError, match="already has a PRLCallback"):
        PRLCallback(trainer)
    prm = ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=trainer.processing_class)
    with pytest.raises(ValueError, match="already has a PRLCallback"):
        PRIMECallback(trainer, prm)
    callback.remove()
    assert "_generate_and_score_completions" not in vars(trainer) and "_calculate_rewards" not in vars(trainer)
    assert callback not in trainer.callback_handler.callbacks
    PRIMECallback(trainer, prm).remove()  # the trainer is free again


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
    trainer = prl_trainer(bos_lm_path, tmp_path, max_steps=2)
    callback = PRLCallback(trainer, PRLConfig(eta=2.0))
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    assert any(not torch.equal(policy_before[k], v) for k, v in trainer.model.state_dict().items())
    batch = callback.last_batch
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
        values = [entry[key] for entry in trainer.state.log_history if key in entry]
        assert len(values) == 2 and all(torch.isfinite(torch.tensor(values))), key


@pytest.mark.slow
def test_prl_run_with_fixed_step_length(causal_lm_path, tmp_path):
    trainer = prl_trainer(causal_lm_path, tmp_path)
    callback = PRLCallback(trainer, PRLConfig(eta=150.0, step_separator=None, step_len=3))
    trainer.train()

    batch = callback.last_batch
    mask = batch["completion_mask"]
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = positions == (mask.sum(-1, keepdim=True) - 1)
    expected = (((positions + 1) % 3 == 0) | last) & mask.bool()
    check_prl_batch(batch, 150.0, expected)
    # GRPO's advantages are not all zero (one correct answer per group), so the policy gets a signal
    assert batch["grpo_advantages"].abs().sum() > 0
