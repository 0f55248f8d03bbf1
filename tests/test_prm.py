"""`trl_erprm.PRMTrainer` / `PRMConfig`: trl-erprm's drop-in for TRL 1.13's PRM classes, used on every TRL version.

On trl 1.13 (the last TRL with `trl.experimental.prm`) the tests marked `needs_trl_prm` compare the drop-in with TRL's
own classes: tokenization, metrics, PEFT preparation and a whole training run must be identical. On newer TRL they
cannot run (TRL's class is gone) and the same layout is checked against a hand-written expectation instead.
"""

import copy
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
import trl
from datasets import Dataset
from packaging.version import Version
from peft import LoraConfig
from transformers.trainer_utils import EvalPrediction

from trl_erprm import TRL_HAS_PRM, ERPRMTrainer, PRMConfig, PRMTrainer
from trl_erprm.prm import prm_config as dropin_config
from trl_erprm.prm import prm_trainer as dropin_trainer


ROW = {"prompt": "What is 2+3?", "completions": ["2+3=5.", "So 5."], "labels": [True, False]}
needs_trl_prm = pytest.mark.skipif(not TRL_HAS_PRM, reason="TRL's own PRMTrainer exists only on trl <= 1.13")


def _trl_prm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL warns on every import of its experimental namespace
        from trl.experimental import prm

    return prm


def test_prm_classes_are_ours_on_every_trl():
    assert PRMTrainer is dropin_trainer.PRMTrainer and PRMConfig is dropin_config.PRMConfig
    assert issubclass(ERPRMTrainer, dropin_trainer.PRMTrainer)
    assert TRL_HAS_PRM == (Version(trl.__version__) < Version("1.14.0"))


def test_config_fields_and_defaults():
    config = PRMConfig(output_dir="x", use_cpu=True, bf16=False)
    assert config.max_length == 1024
    assert config.max_completion_length is None
    assert config.step_separator == "\n"
    assert config.train_on_last_step_only is False
    assert config.disable_dropout is True
    assert config.dataset_num_proc is None
    assert config.learning_rate == 1e-5
    assert config.logging_steps == 10 and config.gradient_checkpointing is True


@needs_trl_prm
def test_config_declares_trls_fields_with_trls_defaults():
    ours = {f.name: f.default for f in dataclasses.fields(dropin_config.PRMConfig)}
    theirs = {f.name: f.default for f in dataclasses.fields(_trl_prm().PRMConfig)}
    assert ours == theirs


def _expected_layout(tokenizer, row, separator, last_only=False, is_eval=False):
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt = [tokenizer.bos_token_id] + prompt
    sep = tokenizer.encode(separator, add_special_tokens=False)
    ids, labels = list(prompt), [-100] * len(prompt)
    for k, (step, label) in enumerate(zip(row["completions"], row["labels"])):
        step_ids = tokenizer(step, add_special_tokens=False)["input_ids"] + sep
        ids += step_ids
        keep = not last_only or is_eval or k == len(row["completions"]) - 1
        labels += [-100] * (len(step_ids) - 1) + [int(label) if keep else -100]
    return ids, labels


@pytest.mark.parametrize("use_bos", [False, True])
@pytest.mark.parametrize(("last_only", "is_eval"), [(False, False), (True, False), (True, True)])
def test_tokenize_row_layout(tokenizer, bos_tokenizer, use_bos, last_only, is_eval):
    tok = bos_tokenizer if use_bos else tokenizer
    out = PRMTrainer.tokenize_row(ROW, tok, "\n", None, None, last_only, is_eval)
    ids, labels = _expected_layout(tok, ROW, "\n", last_only, is_eval)
    assert out == {"input_ids": ids, "labels": labels}
    assert out["input_ids"][0] == tok.bos_token_id if use_bos else True


def test_tokenize_row_truncation(tokenizer):
    full = PRMTrainer.tokenize_row(ROW, tokenizer, "\n", None, None, False, False)
    prompt_len = len(tokenizer(ROW["prompt"], add_special_tokens=False)["input_ids"])
    cut = PRMTrainer.tokenize_row(ROW, tokenizer, "\n", None, 3, False, False)
    assert cut["input_ids"] == full["input_ids"][: prompt_len + 3]
    assert cut["labels"] == full["labels"][: prompt_len + 3]
    cut = PRMTrainer.tokenize_row(ROW, tokenizer, "\n", prompt_len + 2, None, False, False)
    assert cut["input_ids"] == full["input_ids"][: prompt_len + 2]


@needs_trl_prm
def test_dropin_tokenizes_exactly_like_trl(tokenizer, bos_tokenizer):
    trl_tokenize_row = _trl_prm().PRMTrainer.tokenize_row
    rows = [ROW, {"prompt": "Q", "completions": ["a", "b b", "c"], "labels": [1, 1, 0]}]
    settings = [("\n", None, None, False, False), ("\n\n", 12, 4, True, False), ("\n", 6, None, True, True)]
    settings += [("", None, None, False, True), (" ки", 9, None, False, False)]
    for tok in (tokenizer, bos_tokenizer):
        for row in rows:
            for args in settings:
                assert PRMTrainer.tokenize_row(row, tok, *args) == trl_tokenize_row(row, tok, *args)


def _metric_inputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 2))
    labels = np.full((3, 5), -100)
    labels[0, [1, 3]] = [1, 0]
    labels[1, 4] = 1
    labels[2, [0, 2, 4]] = [0, 0, 1]
    pairwise = np.array([[0.3, 0.1], [0.2, 0.2], [-1.0, 2.0], [0.5, 0.5]])  # two ties, left out
    return [(logits, labels), (pairwise, np.zeros(4, dtype=np.int64))]


def test_compute_accuracy_by_hand():
    (logits, labels), (pairwise, pair_labels) = _metric_inputs()
    keep = labels != -100
    expected = np.mean(logits.argmax(-1)[keep] == labels[keep])
    assert dropin_trainer.compute_accuracy(EvalPrediction(logits, labels)) == {"accuracy": expected}
    assert dropin_trainer.compute_accuracy((logits, labels)) == {"accuracy": expected}  # a plain tuple works too
    assert dropin_trainer.compute_accuracy((pairwise, pair_labels)) == {"accuracy": 0.5}  # 1 of the 2 non-ties


@needs_trl_prm
def test_compute_accuracy_equals_trls():
    for predictions, labels in _metric_inputs():
        for eval_pred in (EvalPrediction(predictions, labels), (predictions, labels)):
            assert dropin_trainer.compute_accuracy(eval_pred) == _trl_prm().prm_trainer.compute_accuracy(eval_pred)


def _peft_state(model):
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hooked = getattr(base, "_require_grads_hook", None) is not None
    checkpointed = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False)]
    settings = [dict(getattr(m._gradient_checkpointing_func, "keywords", {})) for m in checkpointed]
    return type(model).__name__, trainable, base.is_activation_checkpointing, hooked, settings


@pytest.mark.parametrize("use_reentrant", [None, False, True])
@pytest.mark.parametrize("gradient_checkpointing", [True, False])
def test_peft_preparation_equals_trls(token_cls_model, use_reentrant, gradient_checkpointing):
    """The drop-in prepares a model for LoRA exactly like TRL's helper (still shipped in `trl.experimental.utils`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.utils import prepare_peft_model as trl_prepare_peft_model
    kwargs = None if use_reentrant is None else {"use_reentrant": use_reentrant}
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="TOKEN_CLS")
    states = []
    for prepare in (dropin_trainer.prepare_peft_model, trl_prepare_peft_model):
        args = PRMConfig(
            output_dir="x",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=kwargs,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TRL calls transformers' deprecated name
            model = prepare(copy.deepcopy(token_cls_model), copy.deepcopy(lora), args)
        states.append((_peft_state(model), args.gradient_checkpointing))
    assert states[0] == states[1]
    assert states[0][0][2] == gradient_checkpointing  # checkpointing on exactly when asked
    assert states[0][0][3] == gradient_checkpointing  # adapters get input gradients (peft adds them too)


def _hard_dataset(n=8):
    rows = []
    for i in range(n):
        good = i % 2 == 0
        rows.append(
            {
                "prompt": f"Add {i} and 1.",
                "completions": [f"{i} + 1 = {i + 1 if good else i + 2}.", "Done."],
                "labels": [good, good],
            }
        )
    return Dataset.from_list(rows)


def _train(trainer_class, config_class, model, tokenizer, cpu_train_kwargs):
    args = config_class(**cpu_train_kwargs, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=_hard_dataset(),
        eval_dataset=_hard_dataset(4),
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return trainer, losses, trainer.evaluate()


def test_prm_trainer_trains_and_reports_accuracy(token_cls_model, tokenizer, cpu_train_kwargs):
    before = {k: v.clone() for k, v in token_cls_model.named_parameters()}
    trainer, _, metrics = _train(PRMTrainer, PRMConfig, token_cls_model, tokenizer, cpu_train_kwargs)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])
    assert "prm" in trainer.model.model_tags


@needs_trl_prm
def test_training_and_metrics_identical_to_trls(token_cls_model, tokenizer, cpu_train_kwargs):
    """Same model, data and seed: TRL 1.13's PRMTrainer and the drop-in train to the same weights and metrics."""
    prm = _trl_prm()
    cpu_train_kwargs = {**cpu_train_kwargs, "logging_steps": 1}
    ours, our_losses, our_metrics = _train(
        PRMTrainer, PRMConfig, copy.deepcopy(token_cls_model), tokenizer, cpu_train_kwargs
    )
    theirs, their_losses, their_metrics = _train(
        prm.PRMTrainer, prm.PRMConfig, copy.deepcopy(token_cls_model), tokenizer, cpu_train_kwargs
    )
    assert ours.train_dataset[:] == theirs.train_dataset[:] and ours.eval_dataset[:] == theirs.eval_dataset[:]
    assert our_losses == their_losses and len(our_losses) == 3
    for (name, a), (_, b) in zip(ours.model.named_parameters(), theirs.model.named_parameters()):
        assert torch.equal(a, b), name
    runtime = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    assert {k: v for k, v in our_metrics.items() if k not in runtime} == {
        k: v for k, v in their_metrics.items() if k not in runtime
    }


@pytest.mark.parametrize("bad", [float("nan"), None, 0.7, 2.0])  # TRL's int(label) made 0.7 a 0, silently
def test_a_nan_or_missing_label_names_its_row_and_field(bad, token_cls_model, tokenizer, cpu_train_kwargs):
    rows = Dataset.from_list([ROW, {**ROW, "labels": [1.0, bad]}])
    with pytest.raises(ValueError, match=rf"train dataset row 1: field 'labels' step 1 is {bad}; PRMTrainer needs"):
        PRMTrainer(
            model=token_cls_model, args=PRMConfig(**cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
        )


def test_saved_folder_records_the_separator_and_the_card_scores_steps(
    token_cls_model, tokenizer, cpu_train_kwargs, tmp_path
):
    from trl_erprm.evaluation.scorers import load_scorer

    args = PRMConfig(**{**cpu_train_kwargs, "step_separator": "\n\n", "max_steps": 1})
    trainer = PRMTrainer(
        model=token_cls_model, args=args, train_dataset=Dataset.from_list([ROW] * 2), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model()
    out = cpu_train_kwargs["output_dir"]
    assert load_scorer(out).step_separator == "\n\n"  # prm_config.json, read by the scorers
    trainer.create_model_card()
    card = open(f"{out}/README.md").read()
    assert "pipeline_tag: token-classification" in card and "text-generation" not in card


def test_compute_accuracy_takes_every_form_transformers_hands_it():
    labels = np.array([[1, -100, 0], [0, 1, -100]])
    logits = np.array([[[0.1, 0.9], [0.5, 0.5], [0.8, 0.2]], [[0.3, 0.7], [0.2, 0.8], [0.5, 0.5]]])
    expected = dropin_trainer.compute_accuracy(EvalPrediction(predictions=logits, label_ids=labels))
    assert expected == {"accuracy": pytest.approx(3 / 4)}
    for variant in (
        (logits, labels),
        ((logits, np.zeros((2, 3, 8))), labels),
        EvalPrediction(predictions=logits, label_ids=labels, inputs=np.zeros((2, 3))),
    ):
        assert dropin_trainer.compute_accuracy(variant) == expected


def test_no_labelled_step_left_after_truncation_is_an_error(token_cls_model, tokenizer, cpu_train_kwargs):
    long = {**ROW, "prompt": "What is " + " + ".join(["1"] * 40) + "?"}
    with pytest.raises(ValueError, match=r"2 of 2 rows of the train dataset keep no labelled step"):
        PRMTrainer(
            model=token_cls_model,
            args=PRMConfig(**cpu_train_kwargs, max_length=20),
            train_dataset=Dataset.from_list([long, long]),
            processing_class=tokenizer,
        )
