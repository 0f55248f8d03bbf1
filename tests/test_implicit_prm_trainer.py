"""ImplicitPRMTrainer: data checks, DPO pairing, collation, CE/DPO/KTO/NCA/LoRA training measured before and after."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl_erprm.data import DataCollatorForImplicitPRM, build_dpo_pairs, mismatched_rows, validate_outcome_rows
from trl_erprm.functional import implicit_prm_kto_loss, implicit_prm_nca_loss, kto_reference_point
from trl_erprm.implicit_prm import ImplicitPRM, completion_logps
from trl_erprm.implicit_prm_config import ImplicitPRMConfig
from trl_erprm.implicit_prm_trainer import ImplicitPRMTrainer


BETA = 0.1


def toy_rows(n: int = 8) -> list[dict]:
    """One correct and one incorrect completion per addition prompt."""
    rows = []
    for a in range(2, 2 + n):
        b = a + 3
        prompt = f"What is {a} + {b}?"
        rows.append({"prompt": prompt, "completion": f"{a} + {b} = {a + b}.\n\n\\boxed{{{a + b}}}", "label": 1})
        rows.append(
            {"prompt": prompt, "completion": f"{a} + {b} = {a + b + 1}.\n\n\\boxed{{{a + b + 1}}}", "label": 0}
        )
    return rows


def make_args(tmp_path, **kwargs) -> ImplicitPRMConfig:
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 12,
        "beta": BETA,
        "report_to": "none",
        "logging_steps": 4,
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "seed": 0,
    }
    defaults.update(kwargs)
    return ImplicitPRMConfig(**defaults)


def mean_scores(prm: ImplicitPRM, dataset: Dataset) -> tuple[float, float]:
    scores = prm(dataset["prompt"], dataset["completion"])
    correct = [s for s, y in zip(scores, dataset["label"]) if y]
    incorrect = [s for s, y in zip(scores, dataset["label"]) if not y]
    return sum(correct) / len(correct), sum(incorrect) / len(incorrect)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, loss_type, match",
    [
        ({"prompt": "p", "completion": "c", "label": 2}, "ce", "Row 1: field 'label' is 2"),
        ({"prompt": "p", "completion": "c", "label": float("nan")}, "ce", "Row 1: field 'label' is nan"),
        ({"prompt": "p", "completion": "c", "label": 0.5}, "dpo", "Row 1: field 'label' is 0.5"),
        ({"prompt": "p", "completion": "", "label": 1}, "ce", "Row 1: field 'completion' is empty"),
        ({"prompt": "", "completion": "c", "label": 1}, "ce", "Row 1: field 'prompt' is empty"),
    ],
)
def test_bad_rows_name_row_field_and_fix(row, loss_type, match):
    good = {"prompt": "p", "completion": "c", "label": 1}
    with pytest.raises(ValueError, match=match):
        validate_outcome_rows(Dataset.from_list([good, row]), loss_type)


def test_labels_accepted_and_missing_columns():
    with pytest.raises(ValueError, match="train dataset: Row 0: field 'label' is 'yes'; use 1/True"):
        validate_outcome_rows(Dataset.from_list([{"prompt": "p", "completion": "c", "label": "yes"}]))
    for values in ((True, False), (1, 0), (1.0, 0.0)):
        rows = [{"prompt": "p", "completion": "c", "label": v} for v in values]
        assert validate_outcome_rows(Dataset.from_list(rows), "dpo") == [1.0, 0.0]
    assert validate_outcome_rows(Dataset.from_list([{"prompt": "p", "completion": "c", "label": 0.25}])) == [0.25]
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['label'\]"):
        validate_outcome_rows(Dataset.from_list([{"prompt": "p", "completion": "c"}]))
    bad_message = [{"prompt": "p", "completion": [{"role": "user", "content": "c"}], "label": 1}]
    with pytest.raises(ValueError, match="Row 0: field 'completion' must hold exactly one assistant message"):
        validate_outcome_rows(Dataset.from_list(bad_message))


def test_build_dpo_pairs_by_hand():
    keys = ["a", "a", "b", "a", "a", "b", "c"]
    labels = [1, 0, 1, 1, 0, 1, 0]  # a: correct 0, 3 / incorrect 1, 4; b: only correct; c: only incorrect
    assert build_dpo_pairs(keys, labels) == [(0, 1), (3, 4), (0, 4), (3, 1)]
    assert build_dpo_pairs(keys, labels, max_pairs_per_prompt=2) == [(0, 1), (3, 4)]  # every completion used once
    assert build_dpo_pairs(["x", "x", "x"], [1, 0, 0]) == [(0, 1), (0, 2)]


def test_collator_layout_by_hand():
    collator = DataCollatorForImplicitPRM(pad_token_id=9)
    batch = collator(
        [
            {"prompt_ids": [1, 2], "completion_ids": [3], "label": 1.0},
            {"prompt_ids": [4], "completion_ids": [5, 6], "label": 0.0},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [9, 4, 5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert batch["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["outcome_labels"].tolist() == [1.0, 0.0]
    pairs = collator([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3, 4]}])
    assert pairs["input_ids"].tolist() == [[1, 2, 9], [1, 3, 4]]  # chosen rows first, then rejected
    assert "outcome_labels" not in pairs


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["ce", "dpo", "kto", "nca"])
def test_training_raises_correct_above_incorrect(loss_type, tokenizer, causal_lm_path, tmp_path):
    dataset = Dataset.from_list(toy_rows())
    before = ImplicitPRM(causal_lm_path, ref_model=causal_lm_path, tokenizer=tokenizer, beta=BETA, aggregation="last")
    correct_before, incorrect_before = mean_scores(before, dataset)
    assert correct_before == incorrect_before == 0.0  # the PRM starts equal to its reference
    trainer = ImplicitPRMTrainer(
        causal_lm_path,
        args=make_args(tmp_path, loss_type=loss_type),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    for how in ("last", "min"):
        after = ImplicitPRM(trainer.model, ref_model=causal_lm_path, tokenizer=tokenizer, beta=BETA, aggregation=how)
        correct, incorrect = mean_scores(after, dataset)
        assert correct - incorrect > 0.5, (how, correct, incorrect)
    logs = trainer.state.log_history
    key = "rewards/correct" if loss_type in ("ce", "kto") else "rewards/margins"
    assert key in logs[0]
    if loss_type == "kto":  # KTO's accuracy is `r > z_0` against the label, z_0 moving with the model (logged as kl)
        assert logs[-2]["rewards/correct"] > logs[-2]["rewards/incorrect"] and logs[-2]["accuracy"] > 0.6
        assert "kl" in logs[-2]
    else:
        assert logs[-2]["accuracy"] > 0.8
    assert logs[-2]["loss"] < logs[0]["loss"]  # each of the four losses lowers on the toy set


@pytest.mark.slow
def test_lora_training_changes_only_adapter_weights(tokenizer, causal_lm_path, tmp_path):
    from peft import LoraConfig

    dataset = Dataset.from_list(toy_rows())
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=modules)
    # gradient checkpointing + LoRA on purpose (the inputs must require grad for the adapter to train)
    args = make_args(tmp_path, learning_rate=1e-2, beta=0.5, gradient_checkpointing=True)
    trainer = ImplicitPRMTrainer(
        causal_lm_path, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    assert trainer.ref_model is None and trainer._scorer.reference_is_adapter  # one model in memory
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    prm = ImplicitPRM(trainer.model, ref_model="adapter", tokenizer=tokenizer, beta=0.5, aggregation="last")
    correct, incorrect = mean_scores(prm, dataset)
    assert correct - incorrect > 0.5, (correct, incorrect)


def test_precomputed_reference_matches_on_the_fly(tokenizer, causal_lm_path, tmp_path):
    dataset = Dataset.from_list(toy_rows(2))
    common = {"optim": "sgd", "learning_rate": 0.5, "max_steps": 3, "per_device_train_batch_size": 4}
    live = ImplicitPRMTrainer(
        causal_lm_path, args=make_args(tmp_path, **common), train_dataset=dataset, processing_class=tokenizer
    )
    pre = ImplicitPRMTrainer(
        causal_lm_path,
        args=make_args(tmp_path, precompute_ref_log_probs=True, **common),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert pre.ref_model is None and live.ref_model is not None  # no reference copy kept after precomputation
    # the precomputed column holds the raw log-probs of the initial model
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    row = pre.train_dataset[1]
    ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0], -1)
    n = len(row["prompt_ids"])
    expected = [float(logp[n + t - 1, tok]) for t, tok in enumerate(row["completion_ids"])]
    assert row["ref_logps"] == pytest.approx(expected, abs=1e-5)
    live.train()
    pre.train()
    for (name, a), (_, b) in zip(live.model.named_parameters(), pre.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert not torch.equal(next(live.model.parameters()), next(model.parameters()))


def test_gradient_accumulation_matches_full_batch(tokenizer, causal_lm_path, tmp_path):
    dataset = Dataset.from_list(toy_rows(2))  # 4 rows: one step sees them all in both setups
    models = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        args = make_args(
            tmp_path,
            optim="sgd",
            learning_rate=1.0,
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
        )
        trainer = ImplicitPRMTrainer(causal_lm_path, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        models.append(trainer.model)
    initial = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    step_full = [p - q for p, q in zip(models[0].parameters(), initial.parameters())]
    step_accumulated = [p - q for p, q in zip(models[1].parameters(), initial.parameters())]
    assert max(float(s.detach().abs().max()) for s in step_full) > 1e-4
    for a, b in zip(step_full, step_accumulated):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_conversational_rows_model_card_and_save(tokenizer, causal_lm_path, tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["completion"]}],
            "label": bool(r["label"]),
        }
        for r in toy_rows(2)
    ]
    trainer = ImplicitPRMTrainer(
        causal_lm_path,
        args=make_args(tmp_path, max_steps=1, loss_type="dpo"),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    text = tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert trainer.train_dataset[0]["prompt_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(trainer.train_dataset) == 2  # one correct x incorrect pair per prompt
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_rewards/margins" in metrics
    trainer.save_model(str(tmp_path / "saved"))
    trainer.create_model_card(model_name="tiny-implicit-prm")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Free Process Rewards without Process Labels" in card and "implicit-prm" in card and "2412.01981" in card
    prm = ImplicitPRM(str(tmp_path / "saved"), ref_model=causal_lm_path, tokenizer=tokenizer)
    assert all(isinstance(s, float) for s in prm([r["prompt"] for r in rows], [r["completion"] for r in rows]))


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="loss_type"):
        make_args(tmp_path, loss_type="ipo")
    with pytest.raises(ValueError, match="desirable_weight and undesirable_weight must be > 0"):
        make_args(tmp_path, loss_type="kto", undesirable_weight=0.0)
    with pytest.raises(ValueError, match="beta"):
        make_args(tmp_path, beta=0.0)
    args = make_args(tmp_path, model_init_kwargs='{"dtype": "float32"}')
    assert args.model_init_kwargs == {"dtype": "float32"}  # parsed from the CLI string form


# ---------------------------------------------------------------------------------------------------------------------
# KTO and NCA (the other two losses of the paper)
# ---------------------------------------------------------------------------------------------------------------------


def test_mismatched_rows_pair_every_row_with_another_prompt():
    assert mismatched_rows(list("aabbbc")) == [2, 2, 5, 5, 5, 0]
    assert mismatched_rows(list("ab")) == [1, 0]
    with pytest.raises(ValueError, match="single prompt"):
        mismatched_rows(["same", "same"])
    collator = DataCollatorForImplicitPRM(pad_token_id=9)
    batch = collator(
        [
            {"prompt_ids": [1, 2], "completion_ids": [3], "label": 1.0, "kl_completion_ids": [5, 6]},
            {"prompt_ids": [4], "completion_ids": [5, 6], "label": 0.0, "kl_completion_ids": [3]},
        ]
    )
    assert batch["kl_input_ids"].tolist() == [[1, 2, 5, 6], [9, 4, 3, 9]]  # each prompt with another's completion
    assert batch["kl_completion_mask"].tolist() == [[1, 1], [1, 0]]


@pytest.fixture(scope="module")
def other_lm_path(tokenizer, tmp_path_factory):
    """A second tiny causal LM (another seed): a reference that differs from the model, so log-ratios are not 0."""
    from trl_erprm.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("other_lm")
    build_tiny_model(tokenizer, "causal_lm", save_dir=path, seed=1)
    return str(path)


def _sequence_log_ratio(model, ref, batch, prefix=""):
    mask = batch[f"{prefix}completion_mask"]
    ids, attention = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    with torch.no_grad():
        ratio = completion_logps(model, ids, attention, mask.shape[1]) - completion_logps(
            ref, ids, attention, mask.shape[1]
        )
    return (ratio * mask).sum(-1)


@pytest.mark.parametrize("loss_type", ["kto", "nca"])
def test_kto_and_nca_losses_equal_a_hand_computation(loss_type, tokenizer, causal_lm_path, other_lm_path, tmp_path):
    args = make_args(tmp_path, loss_type=loss_type, desirable_weight=1.0, undesirable_weight=1.5)
    trainer = ImplicitPRMTrainer(
        causal_lm_path,
        ref_model=other_lm_path,
        args=args,
        train_dataset=Dataset.from_list(toy_rows(3)),
        processing_class=tokenizer,
    )
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    model = trainer.model.eval()
    ref = AutoModelForCausalLM.from_pretrained(other_lm_path).eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
    ratio = _sequence_log_ratio(model, ref, batch)
    if loss_type == "kto":
        assert "kl_input_ids" in batch and len(rows) == 6
        z0 = kto_reference_point(_sequence_log_ratio(model, ref, batch, "kl_"))
        expected = implicit_prm_kto_loss(ratio, batch["outcome_labels"], BETA, z0, 1.0, 1.5).mean()
        # written out for the first row (correct): 1 - sigmoid(beta * (r - z0))
        first = 1 - torch.sigmoid(BETA * (ratio[0] - z0))
        assert implicit_prm_kto_loss(ratio, batch["outcome_labels"], BETA, z0, 1.0, 1.5)[0].item() == pytest.approx(
            first.item(), rel=1e-6
        )
    else:
        n = len(rows)
        expected = implicit_prm_nca_loss(ratio[:n], ratio[n:], BETA).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert abs(ratio).max() > 0.1  # the reference really differs


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["separate", "adapter", "precomputed"])
def test_kto_and_nca_with_every_reference(reference, tokenizer, causal_lm_path, tmp_path):
    from peft import LoraConfig

    dataset = Dataset.from_list(toy_rows(4))
    for loss_type in ("kto", "nca"):
        common = {"loss_type": loss_type, "max_steps": 8, "logging_steps": 1}
        kwargs = {"args": make_args(tmp_path, **common), "processing_class": tokenizer}
        if reference == "separate":
            kwargs["ref_model"] = causal_lm_path
        elif reference == "adapter":
            kwargs["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
            kwargs["args"] = make_args(tmp_path, learning_rate=2e-2, **common)
        else:
            kwargs["args"] = make_args(tmp_path, precompute_ref_log_probs=True, **common)
        trainer = ImplicitPRMTrainer(causal_lm_path, train_dataset=dataset, **kwargs)
        if reference == "precomputed":
            assert trainer.ref_model is None
            columns = set(trainer.train_dataset.column_names)
            assert ({"ref_logps", "kl_ref_logps"} if loss_type == "kto" else {"chosen_ref_logps"}) <= columns
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        assert losses[-1] < losses[0], (loss_type, reference, losses)
        ref = "adapter" if reference == "adapter" else causal_lm_path
        prm = ImplicitPRM(trainer.model, ref_model=ref, tokenizer=tokenizer, beta=BETA, aggregation="last")
        correct, incorrect = mean_scores(prm, dataset)
        assert correct > incorrect, (loss_type, reference, correct, incorrect)


def test_kto_needs_two_prompts(tokenizer, causal_lm_path, tmp_path):
    rows = toy_rows(1)
    with pytest.raises(ValueError, match="single prompt"):
        ImplicitPRMTrainer(
            causal_lm_path,
            args=make_args(tmp_path, loss_type="kto"),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
