"""Contract tests of `trl_erprm._compat`: what trl-erprm relies on in TRL's and transformers' private internals.

Each test fails if the installed TRL / transformers stops doing what `_compat` assumes; run on the oldest (1.13.0) and
the newest (1.16.0) supported TRL. Real trainers on a tiny model, no mocks.
"""

import inspect
import os

import pytest
import torch
from datasets import Dataset
from grpo_helpers import CPU_GRPO, math_rows
from transformers import Trainer
from trl import GRPOConfig, GRPOTrainer

from trl_erprm import _compat


# =====================================================================================================================
# GRPO
# =====================================================================================================================

SOLUTIONS = {"What is 2 + 2?": "$4$", "Ann has 12 apples and gets 5 more. How many now?": "$17$"}


def length_reward(completions, completion_ids, **kwargs):
    """Reward 1: the number of tokens of the completion."""
    return [float(len(ids)) for ids in completion_ids]


def sometimes_none_reward(completions, **kwargs):
    """Reward 2: None for every other completion (TRL turns it into NaN), else 1."""
    return [None if i % 2 else 1.0 for i in range(len(completions))]


class Recorder(_compat.GRPOTrainerHooks, GRPOTrainer):
    """A GRPOTrainer subclass on the hooks, recording what each hook receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollouts, self.saved, self.loaded = [], [], []

    def process_rollouts(self, output, rewards):
        self.rollouts.append((dict(output), rewards.clone()))
        return output

    def save_extra_state(self, folder):
        self.saved.append((folder, os.path.exists(os.path.join(folder, "trainer_state.json"))))

    def load_extra_state(self, folder):
        self.loaded.append((folder, len(self.optimizer.state) > 0))


def recorder(model_path, output_dir, **overrides):
    args = GRPOConfig(**{**CPU_GRPO, "output_dir": str(output_dir), "max_completion_length": 8, **overrides})
    return Recorder(
        model=model_path,
        reward_funcs=[length_reward, sometimes_none_reward],
        args=args,
        train_dataset=Dataset.from_list(math_rows(SOLUTIONS)),
    )


@pytest.fixture(scope="module")
def recorded(causal_lm_path, tmp_path_factory):
    """Two steps with a reference model (beta > 0), two iterations per generation (old log-probs computed) and a
    checkpoint at every step."""
    out = tmp_path_factory.mktemp("compat") / "out"
    trainer = recorder(
        causal_lm_path, out, max_steps=2, beta=0.04, num_iterations=2, save_strategy="steps", save_steps=1
    )
    trainer.train()
    return trainer


def test_private_methods_have_the_signatures_we_call():
    def names(function):
        return list(inspect.signature(function).parameters)

    assert names(GRPOTrainer._calculate_rewards) == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    assert names(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert names(GRPOTrainer._get_per_token_logps_and_entropies)[:6] == [
        "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size",
    ]  # fmt: skip
    assert names(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    assert names(Trainer._save_checkpoint) == ["self", "model", "trial"]
    assert names(Trainer._load_optimizer_and_scheduler) == ["self", "checkpoint"]
    assert names(Trainer._get_output_dir) == ["self", "trial"]


def test_calculate_rewards_returns_the_gathered_rewards_per_function(recorded):
    # one generation batch per two steps (num_iterations=2): one call of process_rollouts, with (B, num_funcs)
    assert len(recorded.rollouts) == 1
    output, rewards = recorded.rollouts[0]
    B = output["completion_ids"].shape[0]
    assert rewards.shape == (B * recorded.accelerator.num_processes, 2)
    assert rewards[:, 0].tolist() == output["completion_mask"].sum(-1).float().tolist()  # in the batch's row order
    assert torch.isnan(rewards[1::2, 1]).all() and (rewards[0::2, 1] == 1).all()  # None becomes NaN
    # the rewards are gathered over processes before GRPO normalises them per group: a 2-process run of PRIME
    # (tests/test_prime_multiprocess.py) equals a 1-process run only if they are; this is the line that does it
    assert "gather(rewards_per_func)" in inspect.getsource(GRPOTrainer._calculate_rewards)


def test_the_output_dict_has_the_keys_we_read(recorded, causal_lm_path, tmp_path):
    output, _ = recorded.rollouts[0]
    assert set(_compat.ROLLOUT_KEYS) <= set(output)
    assert _compat.OLD_LOGPS_KEY in output and _compat.REF_LOGPS_KEY in output
    rollout = _compat.read_rollout(output)
    B, T = rollout.completion_ids.shape
    assert rollout.advantages.shape == (B,)
    assert rollout.old_logps.shape == rollout.ref_logps.shape == (B, T)
    assert torch.equal(rollout.loss_mask, rollout.completion_mask)  # no tool mask without tools

    # with beta == 0 and one iteration, neither log-prob tensor is computed
    plain = recorder(causal_lm_path, tmp_path / "plain")
    plain.train()
    output, _ = plain.rollouts[0]
    assert _compat.OLD_LOGPS_KEY not in output and _compat.REF_LOGPS_KEY not in output


def test_per_token_logps_returns_what_grpo_computes(causal_lm_path, tmp_path):
    trainer = recorder(causal_lm_path, tmp_path / "out", beta=0.04, num_iterations=2)
    trainer.train()
    output, _ = trainer.rollouts[0]
    rollout = _compat.read_rollout(output)
    input_ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
    attention_mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
    T = rollout.completion_ids.shape[1]
    with torch.no_grad():
        ref = _compat.per_token_logps(trainer, trainer.ref_model, input_ids, attention_mask, T, batch_size=2)
    mask = rollout.completion_mask.bool()
    assert ref.shape == (len(input_ids), T)
    torch.testing.assert_close(ref[mask], rollout.ref_logps[mask], atol=1e-5, rtol=1e-5)


def test_compute_loss_takes_token_level_advantages(recorded):
    output, _ = recorded.rollouts[0]
    inputs = dict(output)
    B, T = output["completion_ids"].shape
    advantages = torch.linspace(-1.0, 1.0, B)
    with torch.no_grad():
        sequence = recorded._compute_loss(recorded.model, {**inputs, "advantages": advantages})
        tokens = recorded._compute_loss(recorded.model, {**inputs, "advantages": advantages[:, None].expand(B, T)})
        torch.testing.assert_close(tokens, sequence)
        changed = advantages[:, None].expand(B, T).clone()
        changed[:, 0] = 5.0
        assert not torch.allclose(recorded._compute_loss(recorded.model, {**inputs, "advantages": changed}), sequence)
    assert _compat.takes_token_advantages(recorded)


def test_metrics_buffer_is_averaged_into_the_logs(recorded):
    _compat.log_metric(recorded, "contract/value", 1.0)
    _compat.log_metric(recorded, "contract/value", 3.0)
    recorded.model.train()
    recorded.log({})
    assert recorded.state.log_history[-1]["contract/value"] == 2.0


def test_policy_tokenizer_and_eos_ids(recorded, tokenizer):
    assert _compat.policy_tokenizer(recorded).get_vocab() == tokenizer.get_vocab()
    assert tokenizer.eos_token_id in _compat.eos_token_ids(recorded)


def test_checkpoint_hooks_run_before_the_trainer_state_and_on_resume(recorded, causal_lm_path):
    out = recorded.args.output_dir
    expected = [os.path.join(out, f"checkpoint-{step}") for step in (1, 2)]
    assert [folder for folder, _ in recorded.saved] == expected
    assert not any(state_existed for _, state_existed in recorded.saved)  # the hook ran before trainer_state.json
    assert all(os.path.isfile(os.path.join(folder, "trainer_state.json")) for folder in expected)
    assert _compat.checkpoint_folder(recorded) == expected[-1]

    resumed = recorder(causal_lm_path, out, max_steps=2, beta=0.04, num_iterations=2)
    resumed.train(resume_from_checkpoint=expected[0])
    assert resumed.loaded == [(expected[0], True)]  # after the trainer restored its optimizer


def test_save_model_inside_a_checkpoint_is_flagged(causal_lm_path, tmp_path):
    seen = []

    class Flagging(Recorder):
        def save_model(self, output_dir=None, **kwargs):
            seen.append(self.saving_checkpoint)
            super().save_model(output_dir, **kwargs)

    args = GRPOConfig(**{**CPU_GRPO, "output_dir": str(tmp_path), "save_strategy": "steps", "save_steps": 1})
    trainer = Flagging(model=causal_lm_path, reward_funcs=[length_reward], args=args,
                       train_dataset=Dataset.from_list(math_rows(SOLUTIONS)))  # fmt: skip
    trainer.train()
    trainer.save_model()
    assert seen == [True, False]


def test_public_attributes_we_read(recorded, causal_lm_path, tmp_path):
    # not private, but set by GRPOTrainer.__init__ rather than declared API: PRIMETrainer and PRLTrainer read them
    assert recorded.reward_weights.shape == (2,) and recorded.reward_func_names == [
        "length_reward",
        "sometimes_none_reward",
    ]
    assert recorded.num_generations == 2 and recorded.beta == 0.04 and recorded.temperature == 1.0
    assert recorded.ref_model is not None
    assert recorded.model.config.name_or_path == causal_lm_path
    plain = recorder(causal_lm_path, tmp_path)
    assert plain.beta == 0.0 and plain.ref_model is None  # beta == 0: no reference model, no reference log-probs
