"""ERPRMTrainer: soft labels end to end, the loss, training, LoRA, metrics, model card and bad input."""

import math
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers.trainer_utils import EvalPrediction

from trl_erprm import (
    ERPRMConfig,
    ERPRMDataCollator,
    ERPRMTrainer,
    PRMConfig,
    PRMTrainer,
    compute_soft_metrics,
    er_label,
)


def _config(kwargs, **overrides):
    return ERPRMConfig(**{**kwargs, "per_device_train_batch_size": 4, "max_steps": 2, **overrides})


def _soft_rows():
    return Dataset.from_list(
        [
            {"prompt": "What is 2+3?", "completions": ["2+3=5.", "The answer is 5."], "labels": [0.7, 0.25]},
            {"prompt": "What is 4*2?", "completions": ["4*2=8.", "So 8.", "Done."], "labels": [0.9, 0.5, 1.0]},
        ]
    )


def _hand_soft_ce(logits, labels):
    """Reference loss written out with numpy: mean over labelled tokens of -(v log p1 + (1 - v) log p0)."""
    logits = logits.detach().double().numpy()
    labels = labels.double().numpy()
    total, count = 0.0, 0
    for b, t in zip(*np.nonzero(labels != -100)):
        l0, l1 = logits[b, t]
        m = max(l0, l1)
        log_z = m + math.log(math.exp(l0 - m) + math.exp(l1 - m))
        v = labels[b, t]
        total += -(v * (l1 - log_z) + (1 - v) * (l0 - log_z))
        count += 1
    return total / count


def test_soft_label_survives_tokenization_features_and_collation(token_cls_model, tokenizer, cpu_train_kwargs):
    trainer = ERPRMTrainer(
        model=token_cls_model,
        args=_config(cpu_train_kwargs),
        train_dataset=_soft_rows(),
        eval_dataset=_soft_rows(),
        processing_class=tokenizer,
    )
    assert trainer.train_dataset.features["labels"].feature.dtype == "float32"
    row = trainer.train_dataset[0]
    assert [v for v in row["labels"] if v != -100] == pytest.approx([0.7, 0.25])
    assert [v for v in trainer.eval_dataset[1]["labels"] if v != -100] == pytest.approx([0.9, 0.5, 1.0])
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    values = sorted(batch["labels"][batch["labels"] != -100].tolist())
    assert values == pytest.approx(sorted([0.7, 0.25, 0.9, 0.5, 1.0]))
    # The label sits on the last token of step + separator, as in TRL's layout.
    sep = tokenizer.encode("\n", add_special_tokens=False)
    prompt_len = len(tokenizer("What is 2+3?", add_special_tokens=False)["input_ids"])
    step_len = len(tokenizer("2+3=5.", add_special_tokens=False)["input_ids"]) + len(sep)
    assert row["labels"][prompt_len + step_len - 1] == pytest.approx(0.7)


def test_loss_equals_hand_computed_soft_cross_entropy(token_cls_model, tokenizer, cpu_train_kwargs):
    trainer = ERPRMTrainer(
        model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=_soft_rows(), processing_class=tokenizer
    )
    collator = ERPRMDataCollator(tokenizer)
    batch = collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    model = trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert loss.item() == pytest.approx(_hand_soft_ce(outputs.logits, batch["labels"]), rel=1e-5)
    # A 0.7 label reaches the loss as 0.7: moving it to 0.0 changes the loss by exactly 0.7 * (log p0 - log p1) / n.
    labels = batch["labels"].clone()
    position = torch.isclose(labels, torch.tensor(0.7)).nonzero()
    b, t = position[0].tolist()
    logp = torch.log_softmax(outputs.logits[b, t].double(), -1)
    zeroed = dict(batch, labels=labels.index_put((torch.tensor([b]), torch.tensor([t])), torch.tensor(0.0)))
    with torch.no_grad():
        loss_zero = trainer.compute_loss(model, zeroed)
    n = (labels != -100).sum().item()
    assert (loss - loss_zero).item() == pytest.approx(0.7 * (logp[0] - logp[1]).item() / n, rel=1e-4)


def test_hard_labels_give_the_same_loss_as_prm_trainer(tokenizer, token_cls_path, cpu_train_kwargs):
    from transformers import AutoModelForTokenClassification

    rows = Dataset.from_list(
        [
            {"prompt": "What is 2+3?", "completions": ["2+3=5.", "So 6."], "labels": [1, 0]},
            {"prompt": "What is 1+1?", "completions": ["1+1=2."], "labels": [1]},
        ]
    )
    model = AutoModelForTokenClassification.from_pretrained(token_cls_path)
    ours = ERPRMTrainer(model=model, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer)
    theirs = PRMTrainer(
        model=model, args=PRMConfig(**cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
    )
    ours_batch = ours.data_collator([ours.train_dataset[i] for i in range(2)])
    theirs_batch = theirs.data_collator([theirs.train_dataset[i] for i in range(2)])
    assert torch.equal(ours_batch["input_ids"], theirs_batch["input_ids"])
    assert torch.equal(ours_batch["labels"].long(), theirs_batch["labels"])
    model.eval()
    with torch.no_grad():
        ours_loss = ours.compute_loss(model, dict(ours_batch))
        theirs_loss = model(**theirs_batch).loss
    assert ours_loss.item() == pytest.approx(theirs_loss.item(), rel=1e-5)


def _learnable_rows(n):
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        rows.append(
            {
                "prompt": f"What is {a} + {b}?",
                "completions": [f"{a} + {b} = {a + b}. good", f"So {a + b + 1}. bad", f"The answer is {a + b}. good"],
                "labels": [0.9, 0.1, 0.8],
            }
        )
    return Dataset.from_list(rows)


def test_training_changes_weights_and_lowers_loss(token_cls_model, tokenizer, cpu_train_kwargs):
    args = _config(cpu_train_kwargs, max_steps=30, learning_rate=3e-3, per_device_eval_batch_size=16)
    trainer = ERPRMTrainer(
        model=token_cls_model,
        args=args,
        train_dataset=_learnable_rows(32),
        eval_dataset=_learnable_rows(16),
        processing_class=tokenizer,
    )
    before_params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(before_params[k], v)]
    assert "score.weight" in changed and len(changed) > 10
    assert after["eval_loss"] < before["eval_loss"] - 0.05
    assert after["eval_mae"] < before["eval_mae"]
    assert after["eval_brier"] < before["eval_brier"]


def test_lora_changes_only_adapter_weights(token_cls_model, tokenizer, cpu_train_kwargs):
    from peft import LoraConfig

    peft_config = LoraConfig(task_type="TOKEN_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = _config(cpu_train_kwargs, max_steps=4, learning_rate=1e-2)
    trainer = ERPRMTrainer(
        model=token_cls_model,
        args=args,
        train_dataset=_learnable_rows(8),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)}
    trainable = {k for k, v in trainer.model.named_parameters() if v.requires_grad}
    assert changed and changed <= trainable
    assert all("lora_" in k or "modules_to_save" in k for k in changed)
    assert any("lora_" in k for k in changed)


def test_outcomes_become_labels_at_batch_time(token_cls_model, tokenizer, cpu_train_kwargs):
    rows = Dataset.from_list(
        [
            {
                "prompt": "What is 2+3?",
                "completions": ["2+3=5.", "So 5."],
                "step_outcomes": [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0]],
            }
        ]
    )
    trainer = ERPRMTrainer(
        model=token_cls_model, args=_config(cpu_train_kwargs, eta=2.0), train_dataset=rows, processing_class=tokenizer
    )
    row = trainer.train_dataset[0]
    assert row["step_outcomes"] == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0]]
    batch = next(iter(trainer.get_train_dataloader()))
    assert "step_outcomes" not in batch
    assert batch["labels"][batch["labels"] != -100].tolist() == pytest.approx([0.4772293, 1.0], rel=1e-6)
    for eta, expected in [(0.0, [0.25, 1.0]), ("hard", [1.0, 1.0]), (-math.inf, [0.0, 1.0]), (5.0, None)]:
        labels = ERPRMDataCollator(tokenizer, eta=eta)([row])["labels"]
        values = labels[labels != -100].tolist()
        expected = expected or [er_label([1, 0, 0, 0], 5.0), 1.0]
        assert values == pytest.approx(expected, rel=1e-6)
    trainer.train()  # the outcomes column is not dropped by remove_unused_columns


def test_compute_soft_metrics_hand_computed():
    labels = np.array([[0.9, -100, 0.2], [0.6, 0.4, -100]])
    probs = np.array([[0.8, 0.5, 0.3], [0.4, 0.1, 0.99]])
    logits = np.stack([np.zeros_like(probs), np.log(probs / (1 - probs))], -1)
    metrics = compute_soft_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    # labelled: (p, v) = (0.8, 0.9), (0.3, 0.2), (0.4, 0.6), (0.1, 0.4)
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    assert metrics["mae"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.3) / 4)
    assert metrics["brier"] == pytest.approx((0.01 + 0.01 + 0.04 + 0.09) / 4)
    assert metrics["precision"] == pytest.approx(1.0) and metrics["recall"] == pytest.approx(0.5)
    assert compute_soft_metrics(EvalPrediction(predictions=probs, label_ids=labels))["mae"] == pytest.approx(0.175)


def test_model_card_tags_and_citation(token_cls_model, tokenizer, cpu_train_kwargs):
    trainer = ERPRMTrainer(
        model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=_soft_rows(), processing_class=tokenizer
    )
    assert {"trl", "prm", "er-prm"} <= set(trainer.model.model_tags)
    trainer.create_model_card(model_name="tiny-erprm")
    card = open(f"{cpu_train_kwargs['output_dir']}/README.md").read()
    assert "er-prm" in card and "2412.11006" in card and "Entropy-Regularized Process Reward Model" in card


def test_model_can_be_given_as_a_local_path(token_cls_path, cpu_train_kwargs):
    trainer = ERPRMTrainer(model=token_cls_path, args=_config(cpu_train_kwargs), train_dataset=_soft_rows())
    assert trainer.model.config.num_labels == 2 and trainer.processing_class is not None
    trainer.train()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Q", "completions": ["a", "b"], "labels": [1.0]}, r"row 1: field 'labels' has 1 entries"),
        ({"prompt": "Q", "completions": ["a"], "labels": [1.5]}, r"row 1: field 'labels' step 0 is 1.5"),
        ({"prompt": "Q", "completions": ["a"], "labels": [float("nan")]}, r"row 1: field 'labels' step 0 is nan"),
        ({"prompt": "Q", "completions": [], "labels": []}, r"row 1: field 'completions' must be a non-empty list"),
        ({"prompt": "Q", "completions": ["a", "\n"], "labels": [1, 1]}, r"row 1: field 'completions' step 1 is empty"),
        ({"prompt": "\n", "completions": ["a"], "labels": [1]}, r"row 1: field 'prompt' is empty"),
    ],
)
def test_bad_rows_raise_before_training(row, message, token_cls_model, tokenizer, cpu_train_kwargs):
    good = {"prompt": "What is 1+1?", "completions": ["1+1=2."], "labels": [1.0]}
    with pytest.raises(ValueError, match=message):
        ERPRMTrainer(
            model=token_cls_model,
            args=_config(cpu_train_kwargs),
            train_dataset=Dataset.from_list([good, row]),
            processing_class=tokenizer,
        )


def test_non_string_step_and_missing_labels(token_cls_model, tokenizer, cpu_train_kwargs):
    rows = Dataset.from_dict({"prompt": ["Q"], "completions": [[1, 2]], "labels": [[1.0, 0.0]]})
    with pytest.raises(ValueError, match="row 0: field 'completions' step 0 is a int"):
        ERPRMTrainer(
            model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
        )
    rows = Dataset.from_dict({"prompt": ["Q"], "completions": [["a"]]})
    with pytest.raises(ValueError, match="neither a 'labels' nor a 'step_outcomes'"):
        ERPRMTrainer(
            model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
        )
    rows = Dataset.from_dict({"prompt": ["Q"], "completions": [["a"]], "step_outcomes": [[[]]]})
    with pytest.raises(ValueError, match="row 0: field 'step_outcomes' step 0 has no rollout"):
        ERPRMTrainer(
            model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
        )


def test_eta_is_validated(cpu_train_kwargs):
    with pytest.raises(ValueError, match="eta is NaN"):
        _config(cpu_train_kwargs, eta=float("nan"))
    assert _config(cpu_train_kwargs, eta="hard").eta == math.inf
    assert _config(cpu_train_kwargs, eta="soft").eta == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Input validation covers what the trainer computes (issue 11, item 4)
# ---------------------------------------------------------------------------------------------------------------------


def test_outcomes_outside_0_1_are_rejected_like_labels(token_cls_model, tokenizer, cpu_train_kwargs):
    rows = Dataset.from_list(
        [
            {"prompt": "What is 1+1?", "completions": ["1+1=2."], "step_outcomes": [[1.0, 0.0]]},
            {"prompt": "What is 2+2?", "completions": ["2+2=4.", "So 4."], "step_outcomes": [[1.0, -1.0], [1.0]]},
        ]
    )
    with pytest.raises(ValueError, match=r"row 1: field 'step_outcomes' step 0 holds a reward outside \[0, 1\]"):
        ERPRMTrainer(
            model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
        )


def test_train_on_outcomes_and_evaluate_on_labels_only(token_cls_model, tokenizer, cpu_train_kwargs):
    train = Dataset.from_list(
        [
            {"prompt": f"What is {i}+1?", "completions": [f"{i}+1={i + 1}.", "Done."], "step_outcomes": [[1, 0], [1]]}
            for i in range(4)
        ]
    )
    human = Dataset.from_list(
        [{"prompt": "What is 5+1?", "completions": ["5+1=6.", "Done."], "labels": [0.3, 1.0]}] * 2
    )
    trainer = ERPRMTrainer(
        model=token_cls_model,
        args=_config(cpu_train_kwargs, eta="hard", per_device_eval_batch_size=2),
        train_dataset=train,
        eval_dataset=human,
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_eval_dataloader()))
    assert batch["labels"][batch["labels"] != -100].tolist() == pytest.approx([0.3, 1.0, 0.3, 1.0])  # kept
    train_batch = next(iter(trainer.get_train_dataloader()))
    assert train_batch["labels"][train_batch["labels"] != -100].tolist() == pytest.approx([1.0] * 8)  # eta = inf
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_label_mean"] == pytest.approx(0.65) and math.isfinite(metrics["eval_loss"])


def _labelled_by_the_labeler():
    ok = {"prompt": "What is 1+1?", "completions": ["1+1=2."], "step_outcomes": [[1.0]], "labels": [1.0]}
    return Dataset.from_list(
        [
            {**ok, "status": "ok", "status_message": ""},
            {**ok, "step_outcomes": None, "labels": None, "status": "missing_gold", "status_message": "no gold"},
            {**ok, "status": "ok", "status_message": ""},
        ]
    )


def test_rows_the_labeler_could_not_label_name_their_status(token_cls_model, tokenizer, cpu_train_kwargs):
    with pytest.raises(ValueError, match=r"row 1: field 'status' is 'missing_gold'.*skip_failed_rows=True"):
        ERPRMTrainer(
            model=token_cls_model,
            args=_config(cpu_train_kwargs),
            train_dataset=_labelled_by_the_labeler(),
            processing_class=tokenizer,
        )
    with pytest.warns(UserWarning, match=r"Dropped 1 of 3 rows .*\{'missing_gold': 1\}"):
        trainer = ERPRMTrainer(
            model=token_cls_model,
            args=_config(cpu_train_kwargs, skip_failed_rows=True),
            train_dataset=_labelled_by_the_labeler(),
            eval_dataset=_labelled_by_the_labeler(),
            processing_class=tokenizer,
        )
    assert len(trainer.train_dataset) == 2 and len(trainer.eval_dataset) == 2
    trainer.train()


def test_prompts_longer_than_max_length_warn_and_fail_when_nothing_is_left(
    token_cls_model, tokenizer, cpu_train_kwargs
):
    long = {"prompt": "What is " + " + ".join(["1"] * 40) + "?", "completions": ["It is 40."], "labels": [1.0]}
    short = {"prompt": "What is 1+1?", "completions": ["1+1=2."], "labels": [1.0]}
    with pytest.warns(UserWarning, match=r"1 of 2 rows of the train dataset keep no labelled step .*max_length=30"):
        ERPRMTrainer(
            model=token_cls_model,
            args=_config(cpu_train_kwargs, max_length=30),
            train_dataset=Dataset.from_list([long, short]),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match=r"2 of 2 rows .* nothing to train on. Raise max_length"):
        ERPRMTrainer(
            model=token_cls_model,
            args=_config(cpu_train_kwargs, max_length=30),
            train_dataset=Dataset.from_list([long, long]),
            processing_class=tokenizer,
        )


def test_compute_soft_metrics_accepts_what_transformers_hands_it():
    labels = np.array([[0.9, -100, 0.2], [0.6, 0.4, -100]])
    probs = np.array([[0.8, 0.5, 0.3], [0.4, 0.1, 0.99]])
    logits = np.stack([np.zeros_like(probs), np.log(probs / (1 - probs))], -1)
    expected = compute_soft_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    variants = [
        (logits, labels),  # a plain tuple
        ((logits, np.zeros((2, 3, 4))), labels),  # predictions that are a tuple (models with several outputs)
        EvalPrediction(predictions=(logits,), label_ids=labels),
        EvalPrediction(predictions=logits, label_ids=labels, inputs=np.zeros((2, 3))),  # include_for_metrics
    ]
    for variant in variants:
        assert compute_soft_metrics(variant) == pytest.approx(expected)


def test_eta_none_names_eta(cpu_train_kwargs):
    with pytest.raises(TypeError, match="eta must be a number or one of"):
        _config(cpu_train_kwargs, eta=None)


def test_stored_labels_made_at_another_eta_warn_before_being_replaced(
    token_cls_model, tokenizer, cpu_train_kwargs, tmp_path, caplog
):
    """Labeler rows carry `labels` (at the labeler's eta) and `step_outcomes`; the trainer recomputes the labels at
    ERPRMConfig.eta. Labels made at eta=2 trained at the default eta=1 used to be replaced with an INFO line only."""
    import json
    import logging

    outcomes = [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    row = {"prompt": "What is 2+3?", "completions": ["2+3=5.", "So 5."], "step_outcomes": outcomes}
    rows = Dataset.from_list([{**row, "labels": [float(er_label(o, 2.0)) for o in outcomes]}])

    def warnings_for(dataset, eta):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trl_erprm"):
            ERPRMTrainer(
                model=token_cls_model,
                args=_config(cpu_train_kwargs, eta=eta),
                train_dataset=dataset,
                processing_class=tokenizer,
            )
        return [r.getMessage() for r in caplog.records if "ERPRMConfig.eta" in r.getMessage()]

    (message,) = warnings_for(rows, 1.0)
    assert message.startswith("Row 0 step 0: the stored label 0.4772 is not the label at ERPRMConfig.eta=1.0 (0.3574)")
    assert "drop the 'step_outcomes' column" in message
    assert warnings_for(rows, 2.0) == []  # the same eta: nothing to say
    # A labeler dataset records its eta: that is read instead of comparing rows.
    rows.info.description = json.dumps({"erprm_labeling": {"eta": 2.0}})
    saved = tmp_path / "labelled"
    rows.save_to_disk(str(saved))
    (message,) = warnings_for(Dataset.load_from_disk(str(saved)), 1.0)
    assert "computed by the labeler at eta=2.0, but ERPRMTrainer recomputes" in message
    assert warnings_for(Dataset.load_from_disk(str(saved)), 2.0) == []


def test_steps_holding_the_separator_are_kept_with_one_counting_warning(token_cls_model, tokenizer, cpu_train_kwargs):
    """Multi-line steps with the default separator "\\n" are legitimate data, but a solution split at "\\n" at inference
    gives more steps: one warning counts them (a trailing separator splits nothing)."""
    rows = Dataset.from_list(
        [
            {"prompt": "What is 2+3?", "completions": ["2+3=5.\n", "So 5."], "labels": [1.0, 1.0]},
            {"prompt": "What is 4*2?", "completions": ["4*2\n=8.", "So\n8."], "labels": [1.0, 0.0]},
            {"prompt": "What is 1+1?", "completions": ["1+1\n=2."], "labels": [1.0]},
        ]
    )
    with pytest.warns(UserWarning, match=r"3 steps in 2 rows of the train dataset contain the step separator '\\n' "
                      r"\(the first: row 1 step 0\)"):  # fmt: skip
        trainer = ERPRMTrainer(
            model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
        )
    assert len(trainer.train_dataset) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no step holds "\n\n"
        ERPRMTrainer(
            model=token_cls_model,
            args=_config(cpu_train_kwargs, step_separator="\n\n"),
            train_dataset=rows,
            processing_class=tokenizer,
        )
