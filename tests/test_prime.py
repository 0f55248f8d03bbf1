"""PRIMETrainer, a real GRPOTrainer subclass, on a tiny Qwen2 on CPU with the math-verify outcome reward.

Scripted completions go through GRPOTrainer's own `rollout_func` extension point (a real generation backend that
returns fixed text), so that outcomes, and hence the accuracy filter, are known in advance; the other runs sample
from the model. Checkpoints and resume are in `test_prime_checkpoint.py`.
"""

import logging

import pytest
import torch
from datasets import Dataset
from grpo_helpers import CPU_GRPO, changed, logged, math_rows, scripted_rollout, state, user
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

from trl_erprm.grpo import PRIMEConfig, PRIMETrainer
from trl_erprm.implicit_prm import ImplicitPRM
from trl_erprm.tiny import build_tiny_model


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
WIDE = {"accuracy_lower_bound": 0.0, "accuracy_upper_bound": 1.0}


@pytest.fixture(scope="module")
def math_dataset():
    # prompts of different lengths, so that prompts are left-padded in a batch
    return Dataset.from_list(
        math_rows(
            {
                "What is 2 + 2?": "$4$",
                "Ann has 12 apples and gets 5 more. How many apples does Ann have?": "$17$",
                "What is 3 * 3?": "$9$",
                "Bob has 7 pens and buys 8 more pens. How many pens does he have now?": "$15$",
            }
        )
    )


def prime_config(tmp_path, **overrides):
    return PRIMEConfig(**{"output_dir": str(tmp_path / "out"), **CPU_GRPO, **overrides})


def implicit_prm(model_path, tokenizer, **kwargs):
    return ImplicitPRM(model_path, ref_model=model_path, tokenizer=tokenizer, beta=0.05, **kwargs)


def prime_trainer(model_path, tmp_path, dataset, prm=True, rollout_func=None, **overrides):
    """A PRIMETrainer; `prm=True` passes an ImplicitPRM built from the policy's folder (as PRIME does)."""
    from transformers import AutoTokenizer

    if prm is True:
        prm = implicit_prm(model_path, AutoTokenizer.from_pretrained(model_path))
    return PRIMETrainer(
        model=model_path,
        reward_funcs=[accuracy_reward],
        args=prime_config(tmp_path, **overrides),
        prm=prm,
        train_dataset=dataset,
        rollout_func=rollout_func,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and construction
# ---------------------------------------------------------------------------------------------------------------------


def test_prime_trainer_is_a_grpo_trainer():
    assert issubclass(PRIMETrainer, GRPOTrainer)
    assert issubclass(PRIMEConfig, GRPOConfig)
    assert PRIMETrainer._name == "PRIME" and PRIMETrainer._paper["id"] == "2502.01456"
    assert {"trl", "prime"} <= set(PRIMETrainer._tag_names)


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
        ({"prm_beta": 0.0}, "prm_beta"),
        ({"prm_micro_batch_size": 0}, "prm_micro_batch_size"),
        ({"prm_max_grad_norm": 0.0}, "prm_max_grad_norm"),
    ],
)
def test_prime_config_rejects_bad_values(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        prime_config(tmp_path, **kwargs)


def test_prime_config_fields_are_documented_with_help():
    import dataclasses

    own = [f for f in dataclasses.fields(PRIMEConfig) if f.name in PRIMEConfig.__dict__["__annotations__"]]
    assert len(own) > 15
    for f in own:
        assert f.metadata.get("help"), f.name
        assert f"{f.name} (`" in PRIMEConfig.__doc__, f.name


def test_prime_trainer_construction_errors(causal_lm_path, bos_tokenizer, tokenizer, tmp_path, math_dataset):
    # a GRPOConfig lacks PRIME's fields
    with pytest.raises(TypeError, match="PRIMEConfig"):
        PRIMETrainer(model=causal_lm_path, reward_funcs=[accuracy_reward], args=GRPOConfig(**CPU_GRPO))
    # the fourth positional argument is the PRM, not the dataset
    with pytest.raises(TypeError, match="ImplicitPRM"):
        PRIMETrainer(causal_lm_path, [accuracy_reward], prime_config(tmp_path), math_dataset)
    # a PRM object and PRM fields of the config are two answers to one question
    with pytest.raises(ValueError, match="prm_beta"):
        prime_trainer(causal_lm_path, tmp_path, math_dataset, prm_beta=0.1)
    # a PRM with another vocabulary (the tokenizer with a BOS token has one more token)
    other = build_tiny_model(bos_tokenizer, save_dir=tmp_path / "bos_lm")
    with pytest.raises(ValueError, match="vocabulary"):
        prime_trainer(
            causal_lm_path, tmp_path, math_dataset, prm=ImplicitPRM(other, ref_model=None, tokenizer=bos_tokenizer)
        )
    # GRPO computes no reference log-probs with beta == 0
    with pytest.raises(ValueError, match="beta"):
        prime_trainer(causal_lm_path, tmp_path, math_dataset, reuse_ref_logps=True)


def test_prime_trainer_refuses_the_policy_as_prm(causal_lm_path, tokenizer, tmp_path, math_dataset):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    with pytest.raises(ValueError, match="separate model"):
        PRIMETrainer(
            model=policy,
            reward_funcs=[accuracy_reward],
            args=prime_config(tmp_path),
            prm=ImplicitPRM(policy, ref_model=None, tokenizer=tokenizer),
            train_dataset=math_dataset,
            processing_class=tokenizer,
        )


def test_prime_trainer_builds_the_prm_from_the_policy(causal_lm_path, tmp_path, math_dataset):
    trainer = prime_trainer(causal_lm_path, tmp_path, math_dataset, prm=None, prm_beta=0.1)
    prm = trainer.prm
    assert prm.beta == 0.1 and prm.has_reference and not prm.reference_is_adapter
    assert prm.model is not trainer.model and prm.ref_model is not None
    assert prm.model.config.name_or_path == causal_lm_path
    assert next(prm.model.parameters()).dtype == torch.float32
    assert trainer.prm_optimizer.param_groups[0]["lr"] == 1e-6
    # the PRM starts as a copy of the policy
    for name, weight in trainer.model.state_dict().items():
        torch.testing.assert_close(prm.model.state_dict()[name], weight)


# ---------------------------------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prime_run_updates_prm_and_policy_and_logs(causal_lm_path, tmp_path, math_dataset):
    trainer = prime_trainer(causal_lm_path, tmp_path, math_dataset, max_steps=2, prm_learning_rate=1e-3, **WIDE)
    prm_before, policy_before = state(trainer.prm.model), state(trainer.model)
    trainer.train()

    assert changed(prm_before, trainer.prm.model), "the online update did not change the PRM"
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

    batch = trainer.last_batch
    advantages, mask = batch["advantages"], batch["completion_mask"]
    assert advantages.shape == mask.shape and advantages.shape[0] == 4
    assert torch.isfinite(advantages).all()
    assert torch.all(advantages[mask == 0] == 0)
    assert advantages[mask == 1].abs().sum() > 0
    assert trainer.reuse_ref_logps is False  # GRPO has beta=0: it computed no reference log-probs to reuse


@pytest.mark.slow
def test_untouched_prm_reads_chance_accuracy_through_float_noise(causal_lm_path, tokenizer, tmp_path, math_dataset):
    """The PRM equals its reference but runs in float64 against a float32 reference: its log-ratios are rounding
    noise (~1e-7, not 0). Their signs are no verdict: the accuracy is exactly chance."""
    from transformers import AutoModelForCausalLM

    from trl_erprm.functional import log_ratio_tolerance, sequence_log_ratio

    prm = ImplicitPRM(
        AutoModelForCausalLM.from_pretrained(causal_lm_path, dtype=torch.float64),
        ref_model=AutoModelForCausalLM.from_pretrained(causal_lm_path),
        tokenizer=tokenizer,
        beta=0.05,
    )
    trainer = prime_trainer(causal_lm_path, tmp_path, math_dataset, prm=prm, update_mode="none", **WIDE)
    trainer.train()
    assert logged(trainer, "prime/prm_accuracy_before") == [0.5]

    batch = trainer.last_batch  # the log-ratios the accuracy read: noise, within the tolerance
    ids, am, mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logps = prm.compute_logps(ids, am, mask.shape[1])
    log_ratio = sequence_log_ratio(logps, batch["ref_logps"], mask)
    tolerance = log_ratio_tolerance(logps, batch["ref_logps"], mask)
    assert (log_ratio != 0).any() and (log_ratio.abs() <= tolerance).all(), (log_ratio, tolerance)
    assert tolerance.max() < 1e-4  # float32: a real verdict of 1e-4 is still read


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
    dataset = Dataset.from_list(math_rows(SCRIPTED_SOLUTIONS))
    trainer = prime_trainer(
        causal_lm_path,
        tmp_path,
        dataset,
        rollout_func=scripted_rollout(SCRIPTED),
        per_device_train_batch_size=6,
        prm_learning_rate=1e-3,
    )
    trainer.train()

    batch, prm = trainer.last_batch, trainer.prm
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
def test_prime_all_groups_filtered_warns_once_with_the_knob(causal_lm_path, tmp_path, caplog):
    table = {"What is 2 + 2?": ["\\boxed{5}", "\\boxed{6}"], "What is 3 * 3?": ["\\boxed{9}", "\\boxed{9}"]}
    dataset = Dataset.from_list(
        [{"prompt": user("What is 2 + 2?"), "solution": "$4$"}, {"prompt": user("What is 3 * 3?"), "solution": "$9$"}]
    )
    trainer = prime_trainer(causal_lm_path, tmp_path, dataset, rollout_func=scripted_rollout(table), max_steps=2)
    prm_before, policy_before = state(trainer.prm.model), state(trainer.model)
    with caplog.at_level(logging.WARNING, logger="trl_erprm"):
        trainer.train()

    advantages = trainer.last_batch["advantages"]
    assert not torch.isnan(advantages).any()
    assert torch.all(advantages == 0)
    assert not changed(prm_before, trainer.prm.model)
    assert not changed(policy_before, trainer.model)  # loss 0 (beta = 0): the step does nothing
    assert logged(trainer, "prime/kept_fraction") == [0.0, 0.0]
    assert logged(trainer, "prime/prm_loss") == []  # nothing was scored: no PRM metric rather than a fake 0
    warnings = [r.getMessage() for r in caplog.records if "survived the accuracy filter" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not at every step
    message = warnings[0]
    assert "1 all correct or above the band" in message and "1 all wrong or below the band" in message
    assert "accuracy_lower_bound=0.2" in message and "accuracy_upper_bound=0.8" in message and "loss 0" in message


@pytest.mark.slow
def test_prime_outcome_outside_unit_interval_is_an_error(causal_lm_path, tmp_path):
    dataset = Dataset.from_list(math_rows(SCRIPTED_SOLUTIONS))
    trainer = prime_trainer(
        causal_lm_path,
        tmp_path,
        dataset,
        rollout_func=scripted_rollout(SCRIPTED),
        reward_weights=[2.0],
        per_device_train_batch_size=6,
    )
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*accuracy_reward"):
        trainer.train()


@pytest.mark.slow
def test_prime_reuses_grpo_reference_logps(causal_lm_path, tmp_path, math_dataset):
    trainer = prime_trainer(causal_lm_path, tmp_path, math_dataset, beta=0.04, **WIDE)
    assert trainer.reuse_ref_logps is True  # both references were loaded from the same folder, same dtype
    trainer.train()

    # GRPO's reference log-probs (left-padded prompts of different lengths) equal the PRM reference's own
    batch, prm = trainer.last_batch, trainer.prm
    rows, mask = batch["rows"], batch["completion_mask"][batch["rows"]]
    own = prm.compute_logps(batch["input_ids"][rows], batch["attention_mask"][rows], mask.shape[1], reference=True)
    assert batch["attention_mask"][:, 0].eq(0).any(), "the test needs a left-padded prompt"
    torch.testing.assert_close(batch["ref_logps"] * mask, own * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("update_mode", ["single", "double"])
def test_prime_single_and_double_forward(update_mode, causal_lm_path, tmp_path, math_dataset):
    trainer = prime_trainer(
        causal_lm_path, tmp_path, math_dataset, prm_learning_rate=1e-3, update_mode=update_mode, **WIDE
    )
    trainer.train()

    batch, prm = trainer.last_batch, trainer.prm
    mask = batch["completion_mask"]
    updated = prm.token_rewards_from_ids(batch["input_ids"], batch["attention_mask"], mask.shape[1], mask)
    if update_mode == "single":  # rewards from the PRM before its update, which equalled its reference
        assert torch.all(batch["token_rewards"] == 0)
        assert updated.abs().sum() > 0
    else:  # rewards recomputed with the updated PRM
        assert batch["token_rewards"].abs().sum() > 0
        torch.testing.assert_close(batch["token_rewards"], updated, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_prime_policy_reference_uses_the_sampling_logps(temperature, causal_lm_path, tmp_path, math_dataset):
    """At a GRPO temperature other than 1 the reference is the sampling policy at temperature 1, as the PRM's log-probs
    are (GRPO's sampling log-probs at temperature 0.5 used to give biased rewards: 0.02 with an identical PRM)."""
    trainer = prime_trainer(
        causal_lm_path, tmp_path, math_dataset, reference="policy", update_mode="none", temperature=temperature, **WIDE
    )
    prm_before = state(trainer.prm.model)
    trainer.train()

    # the policy was sampled before its first update, so its log-probs equal the (untouched) PRM's: zero rewards
    batch, prm = trainer.last_batch, trainer.prm
    assert not changed(prm_before, prm.model)
    mask = batch["completion_mask"]
    expected = prm.compute_logps(batch["input_ids"], batch["attention_mask"], mask.shape[1])
    torch.testing.assert_close(batch["ref_logps"] * mask, expected * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch["token_rewards"], torch.zeros_like(batch["token_rewards"]), atol=1e-6, rtol=0)
