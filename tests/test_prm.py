"""`trl_erprm.PRMTrainer` / `PRMConfig`: TRL's classes on TRL <= 1.13, a faithful drop-in on newer TRL.

The same expectations run against whichever class is installed, so this file passing on both TRL versions is the
parity check between TRL 1.13's PRMTrainer and the drop-in.
"""

import dataclasses
import math

import pytest
import torch
import trl
from datasets import Dataset
from packaging.version import Version

from trl_erprm import TRL_HAS_PRM, ERPRMTrainer, PRMConfig, PRMTrainer
from trl_erprm.prm import prm_config as dropin_config
from trl_erprm.prm import prm_trainer as dropin_trainer


ROW = {"prompt": "What is 2+3?", "completions": ["2+3=5.", "So 5."], "labels": [True, False]}


def test_prm_classes_come_from_trl_when_trl_has_them():
    if Version(trl.__version__) < Version("1.14.0"):
        from trl.experimental.prm import PRMConfig as TRLPRMConfig
        from trl.experimental.prm import PRMTrainer as TRLPRMTrainer

        assert TRL_HAS_PRM and PRMTrainer is TRLPRMTrainer and PRMConfig is TRLPRMConfig
        assert issubclass(ERPRMTrainer, TRLPRMTrainer)
    else:
        assert not TRL_HAS_PRM
        assert PRMTrainer is dropin_trainer.PRMTrainer and PRMConfig is dropin_config.PRMConfig
        assert issubclass(ERPRMTrainer, dropin_trainer.PRMTrainer)


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
    # The drop-in declares exactly the installed PRMConfig's own fields, with the same defaults.
    ours = {f.name: f.default for f in dataclasses.fields(dropin_config.PRMConfig)}
    theirs = {f.name: f.default for f in dataclasses.fields(PRMConfig)}
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


def test_dropin_matches_installed_prm_trainer(tokenizer, bos_tokenizer):
    """Where TRL has its own PRMTrainer, the drop-in must tokenize exactly like it; elsewhere, like the layout."""
    rows = [ROW, {"prompt": "Q", "completions": ["a", "b b", "c"], "labels": [1, 1, 0]}]
    for tok in (tokenizer, bos_tokenizer):
        for row in rows:
            for args in [("\n", None, None, False, False), ("\n\n", 12, 4, True, False), ("\n", 6, None, True, True)]:
                assert dropin_trainer.PRMTrainer.tokenize_row(row, tok, *args) == PRMTrainer.tokenize_row(
                    row, tok, *args
                )


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


def test_prm_trainer_trains_and_reports_accuracy(token_cls_model, tokenizer, cpu_train_kwargs):
    args = PRMConfig(**cpu_train_kwargs, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3)
    trainer = PRMTrainer(
        model=token_cls_model,
        args=args,
        train_dataset=_hard_dataset(),
        eval_dataset=_hard_dataset(4),
        processing_class=tokenizer,
    )
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])
    assert "prm" in trainer.model.model_tags
