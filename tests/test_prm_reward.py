"""PRMReward: one reward per completion from any PRM's step scores, as a GRPO reward function (real GRPO runs with a
token-classification PRM and with an LM-head PRM read at a step tag)."""

import math

import pytest
import torch
from datasets import Dataset
from grpo_helpers import CPU_GRPO, changed, logged, math_rows, state, user
from transformers import AutoModelForSequenceClassification
from trl import GRPOConfig, GRPOTrainer

from trl_erprm import PRMReward, StepFormat
from trl_erprm.evaluation.scorers import LMHeadScorer, load_scorer
from trl_erprm.functional import aggregate_steps
from trl_erprm.tiny import build_tiny_model


SOLUTIONS = {"What is 2 + 2?": "$4$", "Ann has 12 apples and gets 5 more. How many now?": "$17$"}


@pytest.fixture(scope="module")
def token_reward(token_cls_path):
    return PRMReward(token_cls_path, aggregation="min")


@pytest.fixture(scope="module")
def lm_head_prm(causal_lm_path, tokenizer):
    """A tiny causal LM read as an LM-head PRM: "+" / "-" at the step tag " ки" (one token of the tiny tokenizer)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    return LMHeadScorer(model, tokenizer, step_tag=" ки", good_token=" +", bad_token=" -", step_separator="\n")


def test_reward_is_the_aggregate_of_the_scorer_step_scores(token_reward, token_cls_path):
    scorer = load_scorer(token_cls_path)
    completions = ["2 + 2 = 4.\nSo \\boxed{4}.", "2 + 2 = 5.\n\nStep 2: 5 - 1 = 4.\nThe answer is 4."]
    steps = [StepFormat("\n").split(c) for c in completions]
    assert [len(s) for s in steps] == [2, 3]
    step_scores = scorer.score(["What is 2 + 2?"] * 2, steps)
    rewards = token_reward(prompts=["What is 2 + 2?"] * 2, completions=completions)
    for how in ("min", "last", "prod", "mean"):
        expected = [
            aggregate_steps(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool), how).item()
            for s in step_scores
        ]
        got = PRMReward(scorer, aggregation=how)(prompts=["What is 2 + 2?"] * 2, completions=completions)
        assert got == pytest.approx(expected, abs=1e-6), how
    assert rewards == pytest.approx([min(s) for s in step_scores], abs=1e-6)
    assert all(0.0 < r < 1.0 for r in rewards)


def test_conversational_prompts_and_completions_and_prompt_column(token_reward):
    plain = token_reward(prompts=["What is 2 + 2?"], completions=["2 + 2 = 4.\n\\boxed{4}"])
    chat = token_reward(
        prompts=[[{"role": "system", "content": "Be brief."}, *user("What is 2 + 2?")]],
        completions=[[{"role": "assistant", "content": "2 + 2 = 4.\n\\boxed{4}"}]],
    )
    assert chat == pytest.approx(plain, abs=1e-6)  # the PRM reads the last user message
    column = PRMReward(token_reward.scorer, prompt_column="problem")
    assert column(
        prompts=[user("Please solve: What is 2 + 2?")],
        completions=["2 + 2 = 4.\n\\boxed{4}"],
        problem=["What is 2 + 2?"],
    ) == pytest.approx(plain, abs=1e-6)
    with pytest.raises(ValueError, match="prompt_column='problem' is not a column"):
        column(prompts=["x"], completions=["y"], solution=["4"])


def test_a_completion_without_step_gets_the_documented_value_and_metrics_are_logged(token_reward):
    logs = {}
    rewards = token_reward(
        prompts=["What is 2 + 2?"] * 3,
        completions=["", "  \n\n ", "2 + 2 = 4.\nSo 4."],
        log_metric=lambda name, value: logs.setdefault(name, value),
    )
    assert rewards[:2] == [0.0, 0.0] and 0.0 < rewards[2] < 1.0
    assert logs["prm_reward/steps_per_completion"] == pytest.approx(2 / 3)
    assert logs["prm_reward/no_step_fraction"] == pytest.approx(2 / 3)
    assert 0.0 < logs["prm_reward/step_score/mean"] < 1.0
    none_reward = PRMReward(token_reward.scorer, empty_value=None)
    assert none_reward(prompts=["q"], completions=[""]) == [None]


def test_steps_and_their_ends(token_reward, lm_head_prm):
    text = "a = 1.\n\nb = 2.\nThe answer is 3."
    steps, ends = token_reward.split_with_ends(text)
    assert steps == ["a = 1.", "b = 2.", "The answer is 3."]
    assert [text[e] for e in ends] == ["\n", "\n", "."] and ends[0] == text.index("b") - 1
    tagged = PRMReward(lm_head_prm)
    assert tagged.step_format == StepFormat("\n", tag=" ки")
    assert tagged.split("a = 1. ки\nb = 2. ки") == ["a = 1.", "b = 2."]  # the policy writes the PRM's tags
    assert tagged.split("a = 1.\nb = 2.") == ["a = 1.", "b = 2."]  # or not: cut at the separator
    assert PRMReward(lm_head_prm, split_method="double_newline").split("a\nb\n\nc") == ["a\nb", "c"]


def test_lm_head_reward_reads_the_good_token_probability_at_each_tag(lm_head_prm):
    reward = PRMReward(lm_head_prm, aggregation="last")
    step_scores = lm_head_prm.score(["What is 2 + 2?"], [["2 + 2 = 4.", "So 4."]])[0]
    assert len(step_scores) == 2
    assert reward(prompts=["What is 2 + 2?"], completions=["2 + 2 = 4.\nSo 4."]) == pytest.approx([step_scores[1]])


def test_the_prm_is_frozen_in_eval_mode_on_the_process_device(token_cls_path):
    reward = PRMReward(token_cls_path)
    reward(prompts=["q"], completions=["a.\nb."])
    model = reward.scorer.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert reward.device == torch.device("cpu") and next(model.parameters()).device == reward.device
    assert not isinstance(reward, torch.nn.Module) and callable(reward)  # GRPO would take a module for a classifier


def test_bad_prm_paths_and_tags_are_refused(tokenizer, tmp_path, causal_lm_path, token_cls_path):
    classifier = tmp_path / "seq_cls"
    config = build_tiny_model(tokenizer).config
    config.num_labels = 1
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(classifier)
    tokenizer.save_pretrained(classifier)
    with pytest.raises(ValueError, match="ForSequenceClassification: PRMReward reads a token-classification PRM"):
        PRMReward(str(classifier))
    with pytest.raises(ValueError, match=r"step_tag='ки' is 2 tokens"):
        PRMReward(causal_lm_path, step_tag="ки")
    with pytest.raises(ValueError, match="good_token"):
        PRMReward(causal_lm_path, good_token="++-")
    with pytest.raises(ValueError, match="Unknown aggregation"):
        PRMReward(token_cls_path, aggregation="median")
    with pytest.raises(ValueError, match="configure the loading of a PRM path"):
        PRMReward(load_scorer(token_cls_path), step_tag=" ки")
    with pytest.raises(TypeError, match="score"):
        PRMReward(object())


def _grpo(causal_lm_path, tmp_path, reward):
    args = GRPOConfig(**{**CPU_GRPO, "output_dir": str(tmp_path / "grpo"), "max_steps": 2})
    trainer = GRPOTrainer(
        model=causal_lm_path, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(math_rows(SOLUTIONS))
    )
    before = state(trainer.model)
    trainer.train()
    return trainer, before


@pytest.mark.slow
def test_grpo_with_a_token_classification_prm_changes_the_policy(causal_lm_path, token_cls_path, tmp_path):
    trainer, before = _grpo(causal_lm_path, tmp_path, PRMReward(token_cls_path, aggregation="min"))
    assert changed(before, trainer.model)
    rewards = logged(trainer, "rewards/prm_reward/mean")
    assert rewards and all(0.0 <= r <= 1.0 for r in rewards)
    assert logged(trainer, "prm_reward/steps_per_completion") and logged(trainer, "prm_reward/step_score/mean")


@pytest.mark.slow
def test_grpo_with_an_lm_head_prm_changes_the_policy(causal_lm_path, lm_head_prm, tmp_path):
    reward = PRMReward(lm_head_prm, aggregation="prod", name="lm_head_prm")
    trainer, before = _grpo(causal_lm_path, tmp_path, reward)
    assert changed(before, trainer.model)
    assert not math.isnan(logged(trainer, "rewards/lm_head_prm/mean")[-1])
    assert logged(trainer, "rewards/lm_head_prm/std")[-1] > 0  # the PRM tells the completions apart


def test_implicit_prm_by_path_and_by_object(causal_lm_path):
    from trl_erprm import ImplicitPRM
    from trl_erprm.evaluation.scorers import ImplicitPRMScorer

    completions = ["2 + 2 = 4.\nSo \\boxed{4}.", "5."]
    by_path = PRMReward(causal_lm_path, prm_type="implicit", step_separator="\n", aggregation="last", ref_model=None)
    assert isinstance(by_path.scorer, ImplicitPRMScorer) and by_path.step_format == StepFormat("\n")
    prm = ImplicitPRM(causal_lm_path, ref_model=None, step_separator="\n")
    expected = [r["q_at_step_ends"][-1] for r in prm.score_steps(["q"] * 2, [c.split("\n") for c in completions])]
    assert by_path(prompts=["q"] * 2, completions=completions) == pytest.approx(expected, abs=1e-5)
    assert PRMReward(prm, aggregation="last")(prompts=["q"] * 2, completions=completions) == pytest.approx(
        expected, abs=1e-5
    )
