"""Contract tests of `trl_erprm/_compat.py`: every private TRL / transformers name trl-erprm relies on exists and
behaves as relied on. Run on the oldest and the newest supported TRL; a failure here after an upgrade points at the
one module to fix."""

import dataclasses
import inspect
import os
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from grpo_helpers import CPU_GRPO, math_rows
from transformers import Trainer, TrainingArguments
from trl import GRPOConfig, GRPOTrainer

from trl_erprm import _compat
from trl_erprm.erprm_config import ERPRMConfig
from trl_erprm.erprm_trainer import ERPRMTrainer
from trl_erprm.implicit_prm_config import ImplicitPRMConfig
from trl_erprm.prm import PRMConfig, PRMTrainer


def _rows():
    return Dataset.from_list(
        [
            {"prompt": "What is 2+3?", "completions": ["2+3=5.", "So 5."], "labels": [1.0, 0.0]},
            {"prompt": "What is 4*2?", "completions": ["4*2=8."], "labels": [1.0]},
        ]
    )


# ---------------------------------------------------------------------------------------------------------------------
# TRL: base classes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # TRL's own class warns
def test_base_config_is_trls_with_trls_defaults():
    from trl.trainer.base_config import _BaseConfig

    assert _compat.BaseConfig is _BaseConfig
    assert issubclass(_BaseConfig, TrainingArguments) and dataclasses.is_dataclass(_BaseConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(_BaseConfig)}
    assert defaults["logging_steps"] == 10 and defaults["gradient_checkpointing"] is True
    assert defaults["bf16"] is None  # resolved in __post_init__: bf16 unless fp16
    assert _BaseConfig(output_dir="x", use_cpu=True, fp16=False, bf16=False).bf16 is False


def test_base_trainer_is_trls_and_builds_model_cards_from_class_attributes(token_cls_model, tokenizer, tmp_path):
    from trl.trainer.base_trainer import _BaseTrainer

    assert _compat.BaseTrainer is _BaseTrainer and issubclass(_BaseTrainer, Trainer)
    args = PRMConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False
    )
    trainer = PRMTrainer(model=token_cls_model, args=args, train_dataset=_rows(), processing_class=tokenizer)
    # `_BaseTrainer.create_model_card` reads the class attributes `_tag_names`, `_name` and `_paper` (the GRPO
    # subclasses rely on it; the PRM trainers write their own card from the same attributes, trl_erprm.model_card).
    _BaseTrainer.create_model_card(trainer, model_name="tiny-prm")
    card = (tmp_path / "README.md").read_text()
    assert "prm" in card and PRMTrainer._paper["id"] in card and PRMTrainer._paper["title"] in card
    assert f"with {PRMTrainer._name}" in card
    trainer.create_model_card(model_name="tiny-prm")
    card = (tmp_path / "README.md").read_text()
    assert "- prm" in card and PRMTrainer._paper["id"] in card and PRMTrainer._paper["citation"] in card


def test_unknown_private_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _compat.NoSuchThing  # noqa: B018


# ---------------------------------------------------------------------------------------------------------------------
# transformers: TrainingArguments
# ---------------------------------------------------------------------------------------------------------------------


def test_dict_fields_are_parsed_from_json():
    assert isinstance(TrainingArguments._VALID_DICT_FIELDS, list)
    assert "model_init_kwargs" in ImplicitPRMConfig._VALID_DICT_FIELDS
    assert "model_init_kwargs" not in TrainingArguments._VALID_DICT_FIELDS  # the decorator copies, never mutates
    config = ImplicitPRMConfig(output_dir="x", use_cpu=True, bf16=False, model_init_kwargs='{"dtype": "float32"}')
    assert config.model_init_kwargs == {"dtype": "float32"}


@pytest.mark.parametrize("config_class", [PRMConfig, ERPRMConfig, ImplicitPRMConfig])
def test_configs_do_not_warn_about_their_own_checkpointing_defaults(config_class):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        on = config_class(output_dir="x", use_cpu=True, bf16=False)
        off = config_class(output_dir="x", use_cpu=True, bf16=False, gradient_checkpointing=False)
    assert on.gradient_checkpointing is True and off.gradient_checkpointing is False
    if hasattr(on, "activation_checkpointing"):  # transformers >= 5.2x reads the new name
        assert on.activation_checkpointing is True and off.activation_checkpointing is False


def test_turn_off_activation_checkpointing_reaches_the_name_transformers_reads():
    args = PRMConfig(output_dir="x", use_cpu=True, bf16=False)
    _compat.turn_off_activation_checkpointing(args)
    assert args.gradient_checkpointing is False
    assert getattr(args, "activation_checkpointing", False) is False


def test_enable_activation_checkpointing(token_cls_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _compat.enable_activation_checkpointing(token_cls_model)
    assert any(getattr(m, "gradient_checkpointing", False) for m in token_cls_model.modules())


# ---------------------------------------------------------------------------------------------------------------------
# transformers: Trainer hooks
# ---------------------------------------------------------------------------------------------------------------------


def test_save_checkpoint_hook_writes_the_model_card(token_cls_model, tokenizer, cpu_train_kwargs):
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    args = PRMConfig(**{**cpu_train_kwargs, "save_strategy": "steps"}, save_steps=1, max_steps=1)
    trainer = PRMTrainer(model=token_cls_model, args=args, train_dataset=_rows(), processing_class=tokenizer)
    trainer.train()
    output = Path(trainer.args.output_dir)
    assert any(p.name.startswith("checkpoint-") for p in output.iterdir())
    assert PRMTrainer._paper["id"] in (output / "README.md").read_text()


def test_keep_columns_hook_keeps_the_outcomes_column(token_cls_model, tokenizer, cpu_train_kwargs):
    assert "_signature_columns" in inspect.getsource(Trainer._set_signature_columns_if_needed)
    rows = Dataset.from_list([{"prompt": "Q", "completions": ["a.", "b."], "step_outcomes": [[1.0, 0.0], [1.0]]}] * 2)
    args = ERPRMConfig(**cpu_train_kwargs, remove_unused_columns=True, eta=0.0)
    trainer = ERPRMTrainer(model=token_cls_model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer._set_signature_columns_if_needed()
    assert "step_outcomes" in trainer._signature_columns and "input_ids" in trainer._signature_columns
    assert "step_outcomes" in trainer._remove_unused_columns(trainer.train_dataset).column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert torch.equal(batch["labels"][batch["labels"] != -100], torch.tensor([0.5, 1.0, 0.5, 1.0]))


def test_prepare_inputs_moves_a_batch_to_the_trainer_device(token_cls_model, tokenizer, cpu_train_kwargs):
    trainer = PRMTrainer(
        model=token_cls_model, args=PRMConfig(**cpu_train_kwargs), train_dataset=_rows(), processing_class=tokenizer
    )
    batch = {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.tensor([[1, 1]])}
    moved = _compat.prepare_inputs(trainer, batch)
    assert set(moved) == set(batch) and all(v.device == trainer.args.device for v in moved.values())


# =====================================================================================================================
# GRPO
# =====================================================================================================================

SOLUTIONS = {"What is 2 + 2?": "$4$", "Ann has 12 apples and gets 5 more. How many now?": "$17$"}


LOG_METRIC_OWNERS = []


def length_reward(completions, completion_ids, **kwargs):
    """Reward 1: the number of tokens of the completion (records the owner of the `log_metric` it was given)."""
    LOG_METRIC_OWNERS.append(_compat.log_metric_owner(kwargs["log_metric"]))
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
        self.reward_inputs_seen = self.reward_inputs()
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


def test_log_metric_given_to_a_reward_function_is_the_trainers(recorded):
    # PRMReward does not log its step figures when the trainer calling it (a PRMGRPOTrainer) logs them itself
    assert any(owner is recorded for owner in LOG_METRIC_OWNERS)
    assert all(isinstance(owner, Recorder) for owner in LOG_METRIC_OWNERS)
    assert _compat.log_metric_owner(length_reward) is None and _compat.log_metric_owner(None) is None


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


def test_reward_inputs_are_the_local_rows_in_the_order_of_the_output(recorded):
    """PRMGRPOTrainer reads the prompts and completion texts of a batch from `_calculate_rewards`'s arguments."""
    output, _ = recorded.rollouts[0]
    seen = recorded.reward_inputs_seen
    B = output["completion_ids"].shape[0]
    assert len(seen.inputs) == len(seen.prompts) == len(seen.completions) == B
    tokenizer = recorded.processing_class
    for row, ids, mask, prompt, completion in zip(
        seen.inputs, output["completion_ids"], output["completion_mask"], seen.prompts, seen.completions
    ):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        assert text == tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
        assert prompt == row["prompt"] and row["solution"] == SOLUTIONS[prompt[-1]["content"]]


def test_attention_implementation_reads_what_set_attn_implementation_sets(causal_lm):
    from trl_erprm._compat import attention_implementation

    assert attention_implementation(causal_lm) == "sdpa"  # the default on CPU
    causal_lm.set_attn_implementation("eager")
    assert attention_implementation(causal_lm) == "eager"
