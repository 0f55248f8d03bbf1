"""PRM scorers: TRL's token-classification layout, LM-head step tags, the implicit PRM path, batching."""

import json
import logging
import warnings

import pytest
import torch

from trl_erprm import TRL_HAS_PRM, PRMTrainer
from trl_erprm.evaluation.scorers import (
    ImplicitPRMScorer,
    LMHeadScorer,
    TokenClassificationScorer,
    load_scorer,
)
from trl_erprm.functional import two_token_step_scores


PROMPTS = ["Ann has 3 apples and gets 4 more. How many apples?", "Bob buys 12 pens.", "Q?"]
STEPS = [
    ["Step 1: Ann starts with 3 apples.", "Step 2: 3 + 4 = 7.", "The answer is \\boxed{7}."],
    ["Then 5 more.", "So 12 + 5 = 17."],
    ["One step only"],
]


@pytest.mark.parametrize("tokenizer_name", ["tokenizer", "bos_tokenizer"])
@pytest.mark.parametrize("separator", ["\n", "\n\n"])
def test_token_classification_layout_matches_prm_trainer(request, tokenizer_name, separator, token_cls_model):
    """Same input ids and label positions as `PRMTrainer.tokenize_row` (TRL's own on trl 1.13, the drop-in after)."""
    tokenize_row = PRMTrainer.tokenize_row
    if TRL_HAS_PRM:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from trl.experimental.prm import PRMTrainer as TRLPRMTrainer

        tokenize_row = TRLPRMTrainer.tokenize_row
    tokenizer = request.getfixturevalue(tokenizer_name)
    scorer = TokenClassificationScorer(token_cls_model, tokenizer, step_separator=separator, max_length=40)
    for prompt, steps in zip(PROMPTS, STEPS):
        features = {"prompt": prompt, "completions": steps, "labels": [1] * len(steps)}
        row = tokenize_row(features, tokenizer, separator, 40, None, False, False)
        input_ids, positions = scorer.layout(prompt, steps)
        assert input_ids == row["input_ids"]
        assert positions == [t for t, label in enumerate(row["labels"]) if label != -100]
    # The first row is cut at 40 tokens: its last step loses its score.
    assert len(scorer.layout(PROMPTS[0], STEPS[0])[1]) < len(STEPS[0])


def test_token_classification_scores_match_an_unbatched_forward(token_cls_model, tokenizer):
    scorer = TokenClassificationScorer(token_cls_model, tokenizer, step_separator="\n", batch_size=2)
    scores = scorer.score(PROMPTS + [PROMPTS[0]], STEPS + [[]])
    assert [len(s) for s in scores] == [3, 2, 1, 0]
    for prompt, steps, got in zip(PROMPTS, STEPS, scores):
        input_ids, positions = scorer.layout(prompt, steps)
        with torch.no_grad():
            logits = token_cls_model(torch.tensor([input_ids])).logits[0]
        assert got == pytest.approx(logits.softmax(-1)[positions, 1].tolist(), abs=1e-5)
        assert all(0.0 < s < 1.0 for s in got)


def test_lm_head_layout_and_scores(causal_lm, tokenizer):
    scorer = LMHeadScorer(causal_lm, tokenizer, step_tag=" ки", batch_size=2)
    tag_id = tokenizer.encode(" ки", add_special_tokens=False)
    assert len(tag_id) == 1  # " ки" is one token of the tiny tokenizer, "ки" is two
    input_ids, positions = scorer.layout(PROMPTS[0], STEPS[0])
    assert len(positions) == 3 and all(input_ids[p] == tag_id[0] for p in positions)
    text = tokenizer.decode(input_ids)
    assert text == PROMPTS[0] + " " + "\n".join(s + " ки" for s in STEPS[0])
    scores = scorer.score(PROMPTS, STEPS)
    plus, minus = tokenizer.convert_tokens_to_ids("+"), tokenizer.convert_tokens_to_ids("-")
    for prompt, steps, got in zip(PROMPTS, STEPS, scores):
        input_ids, positions = scorer.layout(prompt, steps)
        with torch.no_grad():
            logits = causal_lm(torch.tensor([input_ids])).logits[0, positions]
        expected = torch.softmax(torch.stack([logits[:, plus], logits[:, minus]], -1), -1)[:, 0]
        assert got == pytest.approx(expected.tolist(), abs=1e-5)
        assert got == pytest.approx(two_token_step_scores(logits, plus, minus).tolist(), abs=1e-6)
    assert scorer.tag_mismatches == 0


def test_lm_head_tag_pitfalls(causal_lm, tokenizer, caplog):
    # "ки" without the space is two tokens: the tag is still located (its last token), with no mismatch.
    scorer = LMHeadScorer(causal_lm, tokenizer, step_tag="ки")
    ids, positions = scorer.layout("Q?", ["a.", "b."])
    assert [ids[p] for p in positions] == [tokenizer.encode("ки", add_special_tokens=False)[-1]] * 2
    # A tag that merges with the separator (".\n\n" is one token) is found through offsets, and flagged.
    scorer = LMHeadScorer(causal_lm, tokenizer, step_tag=".", step_separator="\n\n")
    with caplog.at_level(logging.WARNING, logger="trl_erprm.evaluation.scorers"):
        ids, positions = scorer.layout("Q?", ["Ann buys 3 apples", "Then 4 more"])
    assert len(positions) == 2 and scorer.tag_mismatches == 1 and "merged" in caplog.text
    assert tokenizer.decode([ids[positions[0]]]) == ".\n\n"
    with pytest.raises(ValueError, match="good_token='ки' is 2 tokens"):
        LMHeadScorer(causal_lm, tokenizer, good_token="ки")


def test_scorer_input_errors(token_cls_model, tokenizer):
    scorer = TokenClassificationScorer(token_cls_model, tokenizer)
    with pytest.raises(ValueError, match="2 prompts but 1 step lists"):
        scorer.score(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="Solution 0: steps must be a list of strings"):
        scorer.score(["a"], ["not a list"])


def test_load_scorer_auto(token_cls_path, causal_lm_path):
    assert isinstance(load_scorer(token_cls_path), TokenClassificationScorer)
    assert isinstance(load_scorer(causal_lm_path), LMHeadScorer)
    with pytest.raises(ValueError, match="prm_type"):
        load_scorer(causal_lm_path, prm_type="value_head")


def test_implicit_prm_scorer(causal_lm_path, tokenizer):
    from trl_erprm.implicit_prm import ImplicitPRM

    prm = ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer, beta=0.05, step_separator="\n\n")
    joined = ["\n\n".join(s) for s in STEPS]
    expected = prm.score_steps(PROMPTS, joined)
    q = ImplicitPRMScorer(prm).score(PROMPTS + ["Q"], STEPS + [[]])
    rewards = ImplicitPRMScorer(prm, value="step_reward").score(PROMPTS, STEPS)
    assert q[:3] == [pytest.approx(e["q_at_step_ends"]) for e in expected] and q[3] == []
    assert rewards == [pytest.approx(e["step_rewards"]) for e in expected]
    assert [len(s) for s in q[:3]] == [3, 2, 1]
    scorer = load_scorer(causal_lm_path, prm_type="implicit", step_separator="\n\n", beta=0.05)
    assert scorer.score(PROMPTS, STEPS) == [pytest.approx(v) for v in q[:3]]
    with pytest.raises(ValueError, match="value"):
        ImplicitPRMScorer(prm, value="p")


def test_one_step_format_for_the_implicit_prm_in_bon_stepeval_and_directly(tmp_path, causal_lm_path):
    """`bon` and `stepeval` with `--prm_type implicit` under default settings (steps cut at blank lines, PRM separator
    "\\n") score the given steps, the same values as `ImplicitPRM` on the same steps; a step holding the PRM's separator
    stays one step instead of being split again."""
    from trl_erprm.evaluation.bon import BestOfNArguments, score_problems
    from trl_erprm.evaluation.stepeval import StepEvalArguments, score_items
    from trl_erprm.implicit_prm import ImplicitPRM

    steps = [
        ["Ann has 3 apples.\nShe gets 4 more.", "3 + 4 = 7.", "The answer is \\boxed{7}."],  # a "\n" inside step 1
        ["Bob buys 12 pens.", "So 12 pens.\nThe answer is \\boxed{12}."],
    ]
    prompts = ["Ann has 3 apples and gets 4 more. How many?", "Bob buys 12 pens. How many?"]
    bon_rows = [{"prompt": p, "completions": ["\n\n".join(s)], "correct": [1]} for p, s in zip(prompts, steps)]
    bon_data = tmp_path / "bon.jsonl"
    bon_data.write_text("".join(json.dumps(r) + "\n" for r in bon_rows))
    bon = score_problems(
        BestOfNArguments(
            dataset_name=str(bon_data),
            dataset_split="train",
            correctness_column="correct",
            prm_model=causal_lm_path,
            prm_type="implicit",
            output_dir=str(tmp_path / "bon"),
        )
    )
    step_data = tmp_path / "steps.jsonl"
    step_data.write_text(
        "".join(json.dumps({"problem": p, "steps": s, "label": -1}) + "\n" for p, s in zip(prompts, steps))
    )
    _, items = score_items(
        StepEvalArguments(
            dataset_name=str(step_data),
            dataset_split="train",
            prm_model=causal_lm_path,
            prm_type="implicit",
            threshold=0.0,
            output_dir=str(tmp_path / "stepeval"),
        )
    )
    prm = ImplicitPRM(causal_lm_path, ref_model=None, step_separator="\n", beta=0.05)
    direct = [r["q_at_step_ends"] for r in prm.score_steps(prompts, steps)]
    assert [len(d) for d in direct] == [3, 2]
    assert [r["step_scores"][0] for r in bon] == [pytest.approx(d, abs=1e-6) for d in direct]
    assert [r["scores"] for r in items] == [pytest.approx(d, abs=1e-6) for d in direct]
    # Where no step holds the separator, the given steps and the joined text are the same steps.
    plain = [["3 + 4 = 7.", "The answer is 7."]]
    as_steps = prm.score_steps(prompts[:1], plain)[0]["q_at_step_ends"]
    assert as_steps == pytest.approx(prm.score_steps(prompts[:1], ["\n".join(plain[0])])[0]["q_at_step_ends"])
