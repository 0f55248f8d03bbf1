"""PRIMECallback on a real, unmodified GRPOTrainer (tiny Qwen2 on CPU, math-verify outcome reward).

Scripted completions go through GRPOTrainer's own `rollout_func` extension point (a real generation backend that
returns fixed text), so that outcomes, and hence the accuracy filter, are known in advance; the other runs sample
from the model.
"""

import os

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

from trl_erprm.implicit_prm import ImplicitPRM
from trl_erprm.prime import PRM_CHECKPOINT_FOLDER, PRM_OPTIMIZER_NAME, PRIMECallback, PRIMEConfig
from trl_erprm.tiny import build_tiny_model


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PRIME_METRICS = [
    "prime/prm_loss",
    "prime/prm_accuracy_before",
    "prime/prm_accuracy_after",
    "prime/prm_grad_norm",
    "prime/process_reward/mean",
    "prime/process_reward/std",
    "prime/kept_fraction",
    "prime/unscorable_fraction",
]


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def math_dataset():
    # prompts of different lengths, so that prompts are left-padded in a batch
    rows = [
        ("What is 2 + 2?", "$4$"),
        ("Ann has 12 apples and gets 5 more. How many apples does Ann have?", "$17$"),
        ("What is 3 * 3?", "$9$"),
        ("Bob has 7 pens and buys 8 more pens. How many pens does he have now?", "$15$"),
    ]
    return Dataset.from_list([{"prompt": user(q), "solution": s} for q, s in rows])


def grpo_trainer(model_path, tmp_path, dataset, rollout_func=None, reward_funcs=None, **overrides):
    config = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 6,
        "max_steps": 1,
        "learning_rate": 1e-2,
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
        reward_funcs=reward_funcs or [accuracy_reward],
        args=GRPOConfig(**config),
        train_dataset=dataset,
        rollout_func=rollout_func,
    )


def implicit_prm(model_path, trainer, **kwargs):
    return ImplicitPRM(model_path, ref_model=model_path, tokenizer=trainer.processing_class, beta=0.05, **kwargs)


def scripted_rollout(table):
    """A GRPOTrainer `rollout_func` returning fixed completions: completion `j` of the group of a prompt is
    `table[prompt][j]`, `j` being the sample's position in the global batch modulo `num_generations`."""

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


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and construction
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"accuracy_lower_bound": 0.9, "accuracy_upper_bound": 0.1}, "accuracy_lower_bound"),
        ({"accuracy_upper_bound": 1.5}, "accuracy_upper_bound"),
        ({"update_mode": "triple"}, "update_mode"),
        ({"reference": "sft"}, "reference"),
        ({"baseline": "self"}, "baseline"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"prm_micro_batch_size": 0}, "prm_micro_batch_size"),
        ({"prm_max_grad_norm": 0.0}, "prm_max_grad_norm"),
    ],
)
def test_prime_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PRIMEConfig(**kwargs)


def test_prime_callback_construction_errors(causal_lm_path, bos_tokenizer, tmp_path, math_dataset):
    trainer = grpo_trainer(causal_lm_path, tmp_path, math_dataset)

    with pytest.raises(TypeError, match="GRPOTrainer"):
        PRIMECallback(object(), implicit_prm(causal_lm_path, trainer))

    # a PRM with another vocabulary (the tokenizer with a BOS token has one more token)
    other = build_tiny_model(bos_tokenizer, save_dir=tmp_path / "bos_lm")
    with pytest.raises(ValueError, match="vocabulary"):
        PRIMECallback(trainer, ImplicitPRM(other, ref_model=None, tokenizer=bos_tokenizer))

    # the policy itself is not a PRM
    with pytest.raises(ValueError, match="separate model"):
        PRIMECallback(trainer, ImplicitPRM(trainer.model, ref_model=None, tokenizer=trainer.processing_class))

    # nor is GRPO's reference model (training it would move GRPO's reference)
    with_reference = grpo_trainer(causal_lm_path, tmp_path, math_dataset, beta=0.04)
    with pytest.raises(ValueError, match="GRPO's reference"):
        PRIMECallback(
            with_reference, ImplicitPRM(with_reference.ref_model, ref_model=None, tokenizer=trainer.processing_class)
        )

    # GRPO computes no reference log-probs with beta == 0
    with pytest.raises(ValueError, match="beta"):
        PRIMECallback(trainer, implicit_prm(causal_lm_path, trainer), PRIMEConfig(reuse_ref_logps=True))

    # GRPOConfig itself rejects num_generations=1; a trainer whose attribute says 1 is rejected too
    trainer.num_generations = 1
    with pytest.raises(ValueError, match="leave-one-out"):
        PRIMECallback(trainer, implicit_prm(causal_lm_path, trainer))
    trainer.num_generations = 2

    # nothing above was attached; one callback attaches, a second one is refused, remove() restores the trainer
    callback = PRIMECallback(trainer, implicit_prm(causal_lm_path, trainer))
    assert "_generate_and_score_completions" in vars(trainer)
    assert callback in trainer.callback_handler.callbacks
    with pytest.raises(ValueError, match="already has"):
        PRIMECallback(trainer, implicit_prm(causal_lm_path, trainer))
    callback.remove()
    assert "_generate_and_score_completions" not in vars(trainer)
    assert "_calculate_rewards" not in vars(trainer)
    assert "_load_optimizer_and_scheduler" not in vars(trainer)
    assert callback not in trainer.callback_handler.callbacks


# ---------------------------------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prime_run_updates_prm_and_policy_and_logs(causal_lm_path, tmp_path, math_dataset):
    trainer = grpo_trainer(causal_lm_path, tmp_path, math_dataset, max_steps=2)
    prm = implicit_prm(causal_lm_path, trainer)
    callback = PRIMECallback(
        trainer, prm, PRIMEConfig(accuracy_lower_bound=0.0, accuracy_upper_bound=1.0, prm_learning_rate=1e-3)
    )
    prm_before, policy_before = state(prm.model), state(trainer.model)
    trainer.train()

    assert changed(prm_before, prm.model), "the online update did not change the PRM"
    assert changed(policy_before, trainer.model), "the policy did not change"
    for key in PRIME_METRICS:
        values = logged(trainer, key)
        assert len(values) == 2, f"{key} was not logged at both steps"
        assert all(torch.isfinite(torch.tensor(values))), f"{key}: {values}"
    # the PRM starts equal to its reference: every implicit reward is 0 and the accuracy is at chance (ties)
    assert logged(trainer, "prime/prm_accuracy_before")[0] == 0.5
    assert logged(trainer, "prime/process_reward/std")[0] == 0.0
    assert logged(trainer, "prime/process_reward/std")[1] > 0.0
    assert logged(trainer, "prime/kept_fraction") == [1.0, 1.0]

    batch = callback.last_batch
    advantages, mask = batch["advantages"], batch["completion_mask"]
    assert advantages.shape == mask.shape and advantages.shape[0] == 4
    assert torch.isfinite(advantages).all()
    assert torch.all(advantages[mask == 0] == 0)
    assert advantages[mask == 1].abs().sum() > 0
    assert callback.reuse_ref_logps is False  # GRPO has beta=0: it computed no reference log-probs to reuse


SCRIPTED = {
    # accuracy 0.5: kept
    "What is 2 + 2?": [
        "Step 1: 2 + 2 = 4.\n\nThe answer is \\boxed{4}.",
        "Step 1: 2 + 2 = 5.\n\nThe answer is \\boxed{5}.",
    ],
    # accuracy 0: filtered
    "What is 3 * 3?": ["The answer is \\boxed{6}.", "The answer is \\boxed{8}."],
    # the gold answer does not parse, so accuracy_reward returns None for both: unscorable, filtered
    "What is 1 + 1?": ["The answer is \\boxed{2}.", "The answer is \\boxed{2}."],
}
SCRIPTED_SOLUTIONS = {"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$", "What is 1 + 1?": "no answer given"}


@pytest.mark.slow
def test_prime_filters_groups_and_unscorable_completions(causal_lm_path, tmp_path):
    dataset = Dataset.from_list([{"prompt": user(q), "solution": s} for q, s in SCRIPTED_SOLUTIONS.items()])
    trainer = grpo_trainer(
        causal_lm_path, tmp_path, dataset, rollout_func=scripted_rollout(SCRIPTED), per_device_train_batch_size=6
    )
    prm = implicit_prm(causal_lm_path, trainer)
    callback = PRIMECallback(trainer, prm, PRIMEConfig(prm_learning_rate=1e-3))
    trainer.train()

    batch = callback.last_batch
    prompts = trainer.processing_class.batch_decode(batch["input_ids"], skip_special_tokens=True)
    kept = [("2 + 2" in p) for p in prompts]
    assert batch["keep"].tolist() == kept
    advantages, mask = batch["advantages"], batch["completion_mask"]
    for row, keep in enumerate(kept):
        valid = advantages[row][mask[row] == 1]
        if keep:  # the correct completion is pushed up, the wrong one down (the PRM starts at 0 reward)
            assert (valid > 0).all() if batch["outcome"][row] == 1 else (valid < 0).all()
        else:
            assert torch.all(advantages[row] == 0)
    assert logged(trainer, "prime/kept_fraction") == [pytest.approx(1 / 3)]
    assert logged(trainer, "prime/unscorable_fraction") == [pytest.approx(1 / 3)]
    # the PRM learnt from the kept pair only: the correct completion now has a higher implicit reward
    logps = prm.compute_logps(batch["input_ids"], batch["attention_mask"], mask.shape[1])
    ref = prm.compute_logps(batch["input_ids"], batch["attention_mask"], mask.shape[1], reference=True)
    reward = ((logps - ref) * mask).sum(-1)
    correct = [r for r in range(len(kept)) if kept[r] and batch["outcome"][r] == 1]
    wrong = [r for r in range(len(kept)) if kept[r] and batch["outcome"][r] == 0]
    assert reward[correct].min() > reward[wrong].max()


@pytest.mark.slow
def test_prime_all_groups_filtered_gives_zero_advantages_and_no_update(causal_lm_path, tmp_path):
    table = {"What is 2 + 2?": ["\\boxed{5}", "\\boxed{6}"], "What is 3 * 3?": ["\\boxed{1}", "\\boxed{2}"]}
    dataset = Dataset.from_list(
        [{"prompt": user("What is 2 + 2?"), "solution": "$4$"}, {"prompt": user("What is 3 * 3?"), "solution": "$9$"}]
    )
    trainer = grpo_trainer(causal_lm_path, tmp_path, dataset, rollout_func=scripted_rollout(table))
    prm = implicit_prm(causal_lm_path, trainer)
    callback = PRIMECallback(trainer, prm)
    prm_before = state(prm.model)
    trainer.train()

    advantages = callback.last_batch["advantages"]
    assert not torch.isnan(advantages).any()
    assert torch.all(advantages == 0)
    assert not changed(prm_before, prm.model)
    assert logged(trainer, "prime/kept_fraction") == [0.0]
    assert logged(trainer, "prime/prm_loss") == []  # nothing was scored: no PRM metric rather than a fake 0


@pytest.mark.slow
def test_prime_outcome_outside_unit_interval_is_an_error(causal_lm_path, tmp_path):
    dataset = Dataset.from_list([{"prompt": user(q), "solution": SCRIPTED_SOLUTIONS[q]} for q in SCRIPTED])
    trainer = grpo_trainer(
        causal_lm_path,
        tmp_path,
        dataset,
        rollout_func=scripted_rollout(SCRIPTED),
        reward_weights=[2.0],
        per_device_train_batch_size=6,
    )
    PRIMECallback(trainer, implicit_prm(causal_lm_path, trainer))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*accuracy_reward"):
        trainer.train()


@pytest.mark.slow
def test_prime_reuses_grpo_reference_logps(causal_lm_path, tmp_path, math_dataset):
    trainer = grpo_trainer(causal_lm_path, tmp_path, math_dataset, beta=0.04)
    prm = implicit_prm(causal_lm_path, trainer)
    callback = PRIMECallback(trainer, prm, PRIMEConfig(accuracy_lower_bound=0.0, accuracy_upper_bound=1.0))
    assert callback.reuse_ref_logps is True  # both references were loaded from the same folder, same dtype
    trainer.train()

    # GRPO's reference log-probs (left-padded prompts of different lengths) equal the PRM reference's own
    batch = callback.last_batch
    rows, mask = batch["rows"], batch["completion_mask"][batch["rows"]]
    own = prm.compute_logps(batch["input_ids"][rows], batch["attention_mask"][rows], mask.shape[1], reference=True)
    assert batch["attention_mask"][:, 0].eq(0).any(), "the test needs a left-padded prompt"
    torch.testing.assert_close(batch["ref_logps"] * mask, own * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("update_mode", ["single", "double"])
def test_prime_single_and_double_forward(update_mode, causal_lm_path, tmp_path, math_dataset):
    trainer = grpo_trainer(causal_lm_path, tmp_path, math_dataset)
    prm = implicit_prm(causal_lm_path, trainer)
    config = PRIMEConfig(
        accuracy_lower_bound=0.0, accuracy_upper_bound=1.0, prm_learning_rate=1e-3, update_mode=update_mode
    )
    callback = PRIMECallback(trainer, prm, config)
    trainer.train()

    batch = callback.last_batch
    mask = batch["completion_mask"]
    updated = prm.token_rewards_from_ids(batch["input_ids"], batch["attention_mask"], mask.shape[1], mask)
    if update_mode == "single":  # rewards from the PRM before its update, which equalled its reference
        assert torch.all(batch["token_rewards"] == 0)
        assert updated.abs().sum() > 0
    else:  # rewards recomputed with the updated PRM
        assert batch["token_rewards"].abs().sum() > 0
        torch.testing.assert_close(batch["token_rewards"], updated, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_prime_policy_reference_uses_the_sampling_logps(causal_lm_path, tmp_path, math_dataset):
    trainer = grpo_trainer(causal_lm_path, tmp_path, math_dataset)
    prm = implicit_prm(causal_lm_path, trainer)
    config = PRIMEConfig(accuracy_lower_bound=0.0, accuracy_upper_bound=1.0, reference="policy", update_mode="none")
    callback = PRIMECallback(trainer, prm, config)
    prm_before = state(prm.model)
    trainer.train()

    # the policy was sampled before its first update, so its log-probs equal the (untouched) PRM's: zero rewards
    batch = callback.last_batch
    assert not changed(prm_before, prm.model)
    mask = batch["completion_mask"]
    expected = prm.compute_logps(batch["input_ids"], batch["attention_mask"], mask.shape[1])
    torch.testing.assert_close(batch["ref_logps"] * mask, expected * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch["token_rewards"], torch.zeros_like(batch["token_rewards"]), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_prime_checkpoint_and_resume_restore_the_prm(causal_lm_path, tmp_path, math_dataset):
    trainer = grpo_trainer(causal_lm_path, tmp_path, math_dataset, max_steps=2, save_strategy="steps", save_steps=1)
    prm = implicit_prm(causal_lm_path, trainer)
    callback = PRIMECallback(
        trainer, prm, PRIMEConfig(accuracy_lower_bound=0.0, accuracy_upper_bound=1.0, prm_learning_rate=1e-3)
    )
    trainer.train()
    trained = state(prm.model)
    optimizer_step = callback.optimizer.state_dict()["state"][0]["step"].item()
    assert optimizer_step == 2

    checkpoint = tmp_path / "out" / "checkpoint-2"
    for step in (1, 2):
        folder = tmp_path / "out" / f"checkpoint-{step}" / PRM_CHECKPOINT_FOLDER
        assert (folder / "model.safetensors").is_file() and (folder / PRM_OPTIMIZER_NAME).is_file()

    # a fresh trainer and a fresh PRM: resuming loads the PRM of the checkpoint, weights and optimizer state
    resumed = grpo_trainer(causal_lm_path, tmp_path, math_dataset, max_steps=2)
    fresh = implicit_prm(causal_lm_path, resumed)
    assert changed(trained, fresh.model)
    resumed_callback = PRIMECallback(resumed, fresh)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert not changed(trained, fresh.model)
    assert resumed_callback.optimizer.state_dict()["state"][0]["step"].item() == 2
