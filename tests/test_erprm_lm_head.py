"""ERPRMTrainer with head="lm": Math-Shepherd / ER-PRM LM-head PRMs trained end to end on tiny local models.

The label of each step sits on the token of its tag; the loss is the soft cross-entropy over the "good" and "bad"
candidate logits there; the saved folder records the convention so that the scorers load it alone.
"""

import json
import math
import random

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from trl_erprm import ERPRMConfig, ERPRMTrainer, StepFormat
from trl_erprm.data import ERPRMDataCollator, lm_head_candidate_ids, tokenize_lm_head_row, validate_stepwise_dataset
from trl_erprm.evaluation.bon import bon_main
from trl_erprm.evaluation.scorers import LMHeadScorer, TokenClassificationScorer, load_scorer
from trl_erprm.models import PRM_CONFIG_NAME, load_prm_config
from trl_erprm.tiny import build_tiny_model


def _config(kwargs, **overrides):
    return ERPRMConfig(**{**kwargs, "head": "lm", "per_device_train_batch_size": 4, "max_steps": 2, **overrides})


def _soft_rows():
    return Dataset.from_list(
        [
            {"prompt": "What is 2+3?", "completions": ["2+3=5.", "The answer is 5."], "labels": [0.7, 0.25]},
            {"prompt": "What is 4*2?", "completions": ["4*2=8.", "So 8.", "Done."], "labels": [0.9, 0.5, 1.0]},
        ]
    )


def _learnable_rows(n, start=0):
    """Each solution has a step ending in "good" (label 0.9) and one ending in "bad" (label 0.1)."""
    rows = []
    for i in range(start, start + n):
        a, b = i % 7 + 1, i % 5 + 2
        rows.append(
            {
                "prompt": f"What is {a} + {b}?",
                "completions": [f"{a} + {b} = {a + b}. good", f"So {a + b + 1}. bad", f"The answer is {a + b}. good"],
                "labels": [0.9, 0.1, 0.9],
            }
        )
    return Dataset.from_list(rows)


def _softplus(x):
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------------------------------
# Layout and loss
# ---------------------------------------------------------------------------------------------------------------------


def test_labels_sit_on_the_tag_tokens_and_stay_soft(causal_lm, tokenizer, cpu_train_kwargs):
    trainer = ERPRMTrainer(
        model=causal_lm, args=_config(cpu_train_kwargs), train_dataset=_soft_rows(), processing_class=tokenizer
    )
    assert trainer.train_dataset.features["labels"].feature.dtype == "float32"
    tag_id = tokenizer.encode(" ки", add_special_tokens=False)
    assert len(tag_id) == 1  # the tiny tokenizer has " ки" as one token
    for row, expected in zip(trainer.train_dataset, ([0.7, 0.25], [0.9, 0.5, 1.0])):
        positions = [t for t, v in enumerate(row["labels"]) if v != -100]
        assert [row["labels"][t] for t in positions] == pytest.approx(expected)
        assert [row["input_ids"][t] for t in positions] == tag_id * len(expected)  # on the tag, nowhere else
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert text == "What is 2+3? 2+3=5. ки\nThe answer is 5. ки"  # prompt + " " + steps, tags, separators


def test_loss_equals_hand_computation_and_a_07_label_reaches_it_as_07(causal_lm, tokenizer, cpu_train_kwargs):
    trainer = ERPRMTrainer(
        model=causal_lm, args=_config(cpu_train_kwargs), train_dataset=_soft_rows(), processing_class=tokenizer
    )
    good, bad = trainer.good_token_id, trainer.bad_token_id
    assert (good, bad) == lm_head_candidate_ids(tokenizer, "+", "-")
    batch = ERPRMDataCollator(tokenizer)([trainer.train_dataset[0], trainer.train_dataset[1]])
    model = trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    logits = outputs.logits.double()
    total, count = 0.0, 0
    for b, t in (batch["labels"] != -100).nonzero().tolist():
        v = float(batch["labels"][b, t])
        margin = float(logits[b, t, good] - logits[b, t, bad])  # log p_good - log p_bad
        total += v * _softplus(-margin) + (1 - v) * _softplus(margin)
        count += 1
    assert count == 5
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    # moving the 0.7 label to 0.0 changes the loss by exactly 0.7 * (log p_bad - log p_good) / n: it was 0.7
    b, t = torch.isclose(batch["labels"], torch.tensor(0.7)).nonzero()[0].tolist()
    margin = float(logits[b, t, good] - logits[b, t, bad])
    zeroed = batch["labels"].clone()
    zeroed[b, t] = 0.0
    with torch.no_grad():
        loss_zero = trainer.compute_loss(model, dict(batch, labels=zeroed))
    assert (loss - loss_zero).item() == pytest.approx(-0.7 * margin / count, rel=1e-4)


def test_a_tag_merged_with_its_neighbour_is_still_found(tmp_path):
    # A tokenizer without pre-tokenization rules learns "7ки" as ONE token from a corpus full of it.
    rng = random.Random(0)
    corpus = [
        " ".join(
            f"{rng.choice('abcdefghij')} = {rng.randint(0, 9)}" + ("7ки" if rng.random() < 0.5 else "")
            for _ in range(8)
        )
        for _ in range(400)
    ]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(
        vocab_size=264,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus, trainer=bpe)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    row = {"prompt": "Q:", "completions": ["x = 7", "so 7"], "labels": [0.8, 0.3]}
    fmt = StepFormat("\n", tag="ки")
    input_ids, labels, kept = tokenize_lm_head_row(row, tokenizer, fmt, " ")
    positions = [t for t, v in enumerate(labels) if v != -100]
    pieces = [tokenizer.decode([input_ids[t]]) for t in positions]
    assert kept == [0, 1] and [labels[t] for t in positions] == [0.8, 0.3]
    assert pieces == ["7ки", "7ки"], pieces  # the tag is inside a token merged with its neighbour, and found there
    assert len(tokenizer.encode("ки", add_special_tokens=False)) == 3  # alone, the tag is not even one token

    # the trainer and the scorer use the same positions
    args = ERPRMConfig(
        output_dir=str(tmp_path / "out"), head="lm", step_tag="ки", good_token="+", bad_token="-", use_cpu=True,
        bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False, max_steps=1,
    )  # fmt: skip
    model = build_tiny_model(tokenizer, "causal_lm")
    trained = ERPRMTrainer(model, args=args, train_dataset=Dataset.from_list([row]), processing_class=tokenizer)
    assert trained.train_dataset[0]["input_ids"] == input_ids
    assert trained.train_dataset[0]["labels"] == pytest.approx(labels)
    scorer = LMHeadScorer(trained.model, tokenizer, step_tag="ки")
    assert scorer.layout("Q:", ["x = 7", "so 7"]) == (input_ids, positions)


def test_two_tags_on_one_token_and_multi_token_candidates_are_errors(tokenizer):
    with pytest.raises(ValueError, match=r"good_token='\+\+\+ ok' is \d+ tokens for this tokenizer \(\[.*\]\)"):
        lm_head_candidate_ids(tokenizer, "+++ ok", "-")
    with pytest.raises(ValueError, match="bad_token='' is 0 tokens"):
        lm_head_candidate_ids(tokenizer, "+", "")
    with pytest.raises(ValueError, match="are the same token"):
        lm_head_candidate_ids(tokenizer, "+", "+")
    with pytest.raises(ValueError, match="needs a step tag"):
        tokenize_lm_head_row({"prompt": "Q", "completions": ["a"], "labels": [1.0]}, tokenizer, StepFormat("\n"))


def test_wrong_model_for_the_head_and_bad_config(causal_lm, token_cls_model, tokenizer, cpu_train_kwargs):
    rows = _soft_rows()
    with pytest.raises(ValueError, match=r"head='lm' needs a causal LM .*Qwen2ForTokenClassification"):
        ERPRMTrainer(
            model=token_cls_model, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer
        )
    with pytest.raises(ValueError, match=r"use ERPRMConfig\(head='lm'\)"):
        ERPRMTrainer(
            model=causal_lm,
            args=ERPRMConfig(**cpu_train_kwargs),
            train_dataset=rows,
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match=r"good_token='\+\+ --' is \d+ tokens"):
        ERPRMTrainer(
            model=causal_lm,
            args=_config(cpu_train_kwargs, good_token="++ --"),
            train_dataset=rows,
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="head must be one of"):
        _config(cpu_train_kwargs, head="value")
    with pytest.raises(ValueError, match="needs a step_tag"):
        _config(cpu_train_kwargs, step_tag=" ")
    with pytest.raises(ValueError, match="must differ"):
        _config(cpu_train_kwargs, good_token="+", bad_token="+")


def test_a_step_holding_the_step_tag_is_an_error(causal_lm, tokenizer, cpu_train_kwargs):
    """The PRM reads a tag as a step end: a step holding " ки" is two steps at inference but was one in training."""
    rows = Dataset.from_list(
        [
            {"prompt": "What is 2+3?", "completions": ["2+3=5.", "So 5."], "labels": [1.0, 1.0]},
            {"prompt": "What is 4*2?", "completions": ["4*2=8.", "So ки 8."], "labels": [1.0, 0.0]},
        ]
    )
    with pytest.raises(
        ValueError, match=r"train dataset row 1: field 'completions' step 1 contains the step tag ' ки'"
    ):
        ERPRMTrainer(model=causal_lm, args=_config(cpu_train_kwargs), train_dataset=rows, processing_class=tokenizer)
    # The same text with a token-classification PRM has no tag: accepted.
    validate_stepwise_dataset(rows, "\n")


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def _good_probability(scorer, rows):
    """Mean P(good) at the steps labelled good and at the steps labelled bad."""
    scores = scorer.score(rows["prompt"], rows["completions"])
    good = [s for row, got in zip(rows, scores) for s, v in zip(got, row["labels"]) if v >= 0.5]
    bad = [s for row, got in zip(rows, scores) for s, v in zip(got, row["labels"]) if v < 0.5]
    return sum(good) / len(good), sum(bad) / len(bad)


@pytest.mark.slow
def test_training_raises_p_good_at_good_steps_and_lowers_it_at_bad_ones(causal_lm, tokenizer, cpu_train_kwargs):
    held_out = _learnable_rows(12, start=100)
    before = _good_probability(LMHeadScorer(causal_lm, tokenizer), held_out)
    args = _config(cpu_train_kwargs, max_steps=30, learning_rate=3e-3, per_device_eval_batch_size=16)
    trainer = ERPRMTrainer(
        model=causal_lm,
        args=args,
        train_dataset=_learnable_rows(32),
        eval_dataset=_learnable_rows(16, start=50),
        processing_class=tokenizer,
    )
    first = trainer.evaluate()
    trainer.train()
    last = trainer.evaluate()
    after = _good_probability(LMHeadScorer(trainer.model, tokenizer), held_out)
    assert after[0] > before[0] + 0.2 and after[0] > 0.75, (before, after)
    assert after[1] < before[1] - 0.2 and after[1] < 0.25, (before, after)
    # the soft-label metrics are those of the token-classification head, read on the two candidate logits
    assert last["eval_loss"] < first["eval_loss"] - 0.1
    assert last["eval_mae"] < first["eval_mae"] and last["eval_accuracy"] == pytest.approx(1.0)
    assert {"eval_brier", "eval_f1", "eval_prob_mean"} <= set(last)


@pytest.mark.slow
def test_lora_changes_only_adapter_weights(causal_lm, tokenizer, cpu_train_kwargs):
    from peft import LoraConfig

    peft_config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = ERPRMTrainer(
        model=causal_lm,
        args=_config(cpu_train_kwargs, max_steps=4, learning_rate=1e-2),
        train_dataset=_learnable_rows(8),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)}
    trainable = {k for k, v in trainer.model.named_parameters() if v.requires_grad}
    assert changed and changed <= trainable
    assert all("lora_" in k for k in changed) and any("lora_A" in k for k in changed)
    assert not any("lm_head" in k for k in changed)  # the candidates are read through the frozen LM head


UNEVEN_ROWS = [  # 1, 5, 1 and 4 labelled steps: a per-micro-batch mean would weigh the steps of a short row more
    {"prompt": "What is 1 + 2?", "completions": ["1 + 2 = 3."], "labels": [0.9]},
    {
        "prompt": "What is 3 + 4?",
        "completions": ["3 + 4 = 7.", "So 8.", "The answer is 7.", "Done.", "Ok."],
        "labels": [0.9, 0.1, 0.8, 0.3, 0.6],
    },
    {"prompt": "What is 5 + 6?", "completions": ["5 + 6 = 11."], "labels": [0.2]},
    {
        "prompt": "What is 2 + 2?",
        "completions": ["2 + 2 = 4.", "So 5.", "Hence 4.", "Yes."],
        "labels": [0.9, 0.1, 0.9, 0.7],
    },
]


@pytest.mark.parametrize("head", ["token_classification", "lm"])
def test_gradient_accumulation_matches_one_large_batch(
    head, causal_lm_path, token_cls_path, tokenizer, cpu_train_kwargs
):
    """One SGD step on 4 rows of 1 to 5 steps: batch 4, 2 x 2 accumulated and 1 x 4 accumulated give the same weight
    update, for both heads (the loss is normalised by the labelled steps of the whole accumulation window)."""
    from transformers import AutoModelForTokenClassification

    auto, path = (
        (AutoModelForCausalLM, causal_lm_path) if head == "lm" else (AutoModelForTokenClassification, token_cls_path)
    )
    updates = []
    for batch_size, accumulation in ((4, 1), (2, 2), (1, 4)):
        args = ERPRMConfig(
            **cpu_train_kwargs,
            head=head,
            optim="sgd",
            learning_rate=1.0,
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
        )
        trainer = ERPRMTrainer(
            model=auto.from_pretrained(path), args=args, train_dataset=Dataset.from_list(UNEVEN_ROWS),
            processing_class=tokenizer,
        )  # fmt: skip
        trainer.train()
        initial = auto.from_pretrained(path)
        updates.append([(p - q).detach() for p, q in zip(trainer.model.parameters(), initial.parameters())])
    assert max(float(u.abs().max()) for u in updates[0]) > 1e-4
    for accumulated in updates[1:]:
        for a, b in zip(updates[0], accumulated):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# The saved folder: the convention recorded, the scorer loading it alone
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trained_lm_head_prm_is_scored_from_its_saved_folder_alone(causal_lm, tokenizer, cpu_train_kwargs, tmp_path):
    # a convention that differs from every default, so that only prm_config.json can give it
    convention = {
        "step_tag": " ки",
        "good_token": " +",
        "bad_token": " -",
        "prompt_separator": "\n",
        "step_separator": "\n\n",
    }
    args = _config(cpu_train_kwargs, max_steps=20, learning_rate=3e-3, **convention)
    trainer = ERPRMTrainer(model=causal_lm, args=args, train_dataset=_learnable_rows(16), processing_class=tokenizer)
    trainer.train()
    folder = tmp_path / "prm"
    trainer.save_model(str(folder))
    recorded = json.loads((folder / PRM_CONFIG_NAME).read_text())
    assert recorded == {**convention, "head": "lm", "max_length": 1024, "trainer": "ERPRMTrainer"}
    assert load_prm_config(str(folder)) == recorded

    scorer = load_scorer(str(folder))  # no flag: the Best-of-N scorer reads the convention
    assert isinstance(scorer, LMHeadScorer)
    assert (scorer.step_tag, scorer.step_separator, scorer.prompt_separator) == (" ки", "\n\n", "\n")
    assert (scorer.good_token_id, scorer.bad_token_id) == lm_head_candidate_ids(tokenizer, " +", " -")
    rows = _learnable_rows(4, start=200)
    scores = scorer.score(rows["prompt"], rows["completions"])
    # the same numbers as the trained model read by hand on the training layout
    model = trainer.model.eval()
    for row, got in zip(rows, scores):
        ids, labels, _ = tokenize_lm_head_row(
            row, tokenizer, StepFormat("\n\n", tag=" ки"), "\n", None, None, False, True
        )
        positions = [t for t, v in enumerate(labels) if v != -100]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, positions]
        good, bad = lm_head_candidate_ids(tokenizer, " +", " -")
        assert got == pytest.approx(torch.stack([logits[:, good], logits[:, bad]], -1).softmax(-1)[:, 0].tolist())
    good, bad = _good_probability(scorer, rows)
    assert good > 0.6 > 0.4 > bad  # the trained PRM tells good steps from bad ones from its folder alone

    # `trl-erprm bon --prm_model <folder>` with no other PRM flag scores with the same convention
    problems = [
        {"prompt": row["prompt"], "candidates": [row["completions"], row["completions"][:1]], "answers": ["1", "2"]}
        for row in rows
    ]
    data = tmp_path / "candidates.jsonl"
    data.write_text("".join(json.dumps({**p, "correct": [True, False]}) + "\n" for p in problems))
    argv = ["--dataset_name", str(data), "--dataset_split", "train", "--candidates_column", "candidates"]
    argv += ["--answers_column", "answers", "--correctness_column", "correct", "--prm_model", str(folder)]
    argv += ["--num_seeds", "1", "--output_dir", str(tmp_path / "bon")]
    bon_main(argv)
    records = [json.loads(line) for line in (tmp_path / "bon" / "parts" / "part-00000.jsonl").read_text().splitlines()]
    for record, got in zip(records, scores):
        assert record["step_scores"][0] == pytest.approx(got, abs=1e-5)
        assert record["step_scores"][1] == pytest.approx(got[:1], abs=1e-5)
    # explicit arguments still win over the record
    assert load_scorer(str(folder), good_token="+").good_token_id == tokenizer.encode("+", add_special_tokens=False)[0]


def test_token_classification_prm_records_its_separator(token_cls_model, tokenizer, cpu_train_kwargs, tmp_path):
    args = ERPRMConfig(**{**cpu_train_kwargs, "max_steps": 1, "step_separator": "\n\n"})
    trainer = ERPRMTrainer(model=token_cls_model, args=args, train_dataset=_soft_rows(), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "prm"))
    assert load_prm_config(str(tmp_path / "prm"))["step_separator"] == "\n\n"
    scorer = load_scorer(str(tmp_path / "prm"))
    assert isinstance(scorer, TokenClassificationScorer) and scorer.step_separator == "\n\n"
    assert load_scorer(str(tmp_path / "prm"), step_separator="\n").step_separator == "\n"
    # a PRM without the file keeps the old defaults
    (tmp_path / "prm" / PRM_CONFIG_NAME).unlink()
    assert load_scorer(str(tmp_path / "prm")).step_separator == "\n"


def test_a_bad_prm_config_is_a_clear_error(tmp_path, token_cls_path):
    import shutil

    folder = tmp_path / "prm"
    shutil.copytree(token_cls_path, folder)
    (folder / PRM_CONFIG_NAME).write_text('{"head": "value_head", "step_separator": "\\n"}')
    with pytest.raises(ValueError, match=r"prm_config.json: 'head' is 'value_head'"):
        load_scorer(str(folder))
    (folder / PRM_CONFIG_NAME).write_text('{"head": "lm", "step_separator": "\\n"}')
    with pytest.raises(ValueError, match=r"needs the string field\(s\) \['step_tag', 'good_token'"):
        load_prm_config(str(folder))
