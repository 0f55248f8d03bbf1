"""The tiny policy of the quickstart: training from scratch, the cache, seeded sampling and its measured accuracy."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trl_erprm.quickstart import (
    PolicyConfig,
    TaskConfig,
    check_solution,
    format_prompt,
    generate_problems,
    load_policy,
    policy_accuracy,
    policy_path,
    sample_solutions,
    train_policy,
)
from trl_erprm.tiny import build_tiny_model


# A few seconds of training: enough to learn the format of the solutions, not the arithmetic.
FAST = PolicyConfig(max_steps=100, batch_size=16, warmup_steps=10, learning_rate=5e-3)


@pytest.fixture(scope="module")
def fast_policy(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    return root, train_policy(root, FAST, show_progress=False)


def test_policy_folder_holds_weights_tokenizer_and_settings(fast_policy):
    root, path = fast_policy
    assert Path(path) == policy_path(root, FAST)
    assert Path(path).name == f"policy-{FAST.cache_key()}"
    assert (Path(path) / "model.safetensors").is_file()
    record = json.loads((Path(path) / "policy_config.json").read_text())
    assert PolicyConfig(**record["policy_config"]) == FAST
    assert record["final_loss"] > 0 and record["num_parameters"] > 0
    model, tokenizer = load_policy(path)
    assert model.config.hidden_size == 64 and model.config.num_attention_heads == 2
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == model.config.eos_token_id
    # Only the assistant header ends the prompt; the role names were merged by BPE.
    prompt = format_prompt(tokenizer, "Ann has 2 pens. She buys 1 more. How many pens does Ann have now?")
    assert prompt == (
        "<|im_start|>user\nAnn has 2 pens. She buys 1 more. How many pens does Ann have now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "user" in tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])


def test_cache_is_reused_and_keyed_by_the_settings(fast_policy):
    root, path = fast_policy
    weights = Path(path) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert train_policy(root, FAST, show_progress=False) == path
    assert weights.stat().st_mtime_ns == before
    other = PolicyConfig(
        max_steps=100, batch_size=16, warmup_steps=10, learning_rate=5e-3, task=TaskConfig(max_steps=5)
    )
    assert other.cache_key() != FAST.cache_key()
    assert PolicyConfig(misconception=0.0).cache_key() != PolicyConfig().cache_key()
    assert not policy_path(root, other).exists()
    assert (
        PolicyConfig(max_steps=100, batch_size=16, warmup_steps=10, learning_rate=5e-3).cache_key() == FAST.cache_key()
    )
    assert PolicyConfig(seed=1).cache_key() != PolicyConfig().cache_key()


def test_overwrite_retrains_deterministically(tmp_path):
    config = PolicyConfig(max_steps=3, batch_size=4, warmup_steps=1)
    threads = torch.get_num_threads()
    path = train_policy(tmp_path, config, show_progress=False, num_threads=1)
    assert torch.get_num_threads() == threads
    first = load_file(os.path.join(path, "model.safetensors"))
    mtime = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    # Trained again with the caller's thread count, the weights are the same.
    assert train_policy(tmp_path, config, overwrite=True, show_progress=False, num_threads=None) == path
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns != mtime
    second = load_file(os.path.join(path, "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # No temporary folder is left behind.
    assert [p.name for p in tmp_path.iterdir()] == [Path(path).name]


def _parsable_fraction(problems, solutions):
    """Fraction of written steps that hold an equation or an answer (any verdict but `no_equation`)."""
    errors = [e for p, group in zip(problems, solutions) for s in group for e in check_solution(p, s).step_errors]
    return sum(e != "no_equation" for e in errors) / len(errors)


def test_trained_policy_writes_steps_unlike_an_untrained_one(fast_policy, tmp_path):
    _, path = fast_policy
    problems = generate_problems(16, FAST.task, seed=77)
    trained = sample_solutions(path, problems, n=2, seed=0, max_new_tokens=100)
    _, tokenizer = load_policy(path)
    untrained = build_tiny_model(tokenizer, hidden_size=64, num_attention_heads=2, intermediate_size=256, seed=0)
    random_text = sample_solutions(untrained, problems, n=2, seed=0, max_new_tokens=60, tokenizer=tokenizer)
    assert _parsable_fraction(problems, trained) >= 0.75
    assert _parsable_fraction(problems, random_text) <= 0.2
    assert sum("\\boxed{" in s for group in trained for s in group) >= 0.75 * 32


def test_sample_solutions_is_seeded(fast_policy):
    _, path = fast_policy
    problems = generate_problems(5, FAST.task, seed=5)
    first = sample_solutions(path, problems, n=3, seed=1, batch_size=6, max_new_tokens=100)
    assert [len(group) for group in first] == [3] * 5
    assert all(isinstance(s, str) and "<|im_end|>" not in s and "<|endoftext|>" not in s for g in first for s in g)
    again = sample_solutions(path, [p.text for p in problems], n=3, seed=1, batch_size=6, max_new_tokens=100)
    assert again == first
    assert sample_solutions(path, problems, n=3, seed=2, batch_size=6, max_new_tokens=100) != first
    greedy = sample_solutions(path, problems, n=2, temperature=0.0, max_new_tokens=100)
    assert all(group[0] == group[1] for group in greedy)


def test_sample_solutions_rejects_bad_arguments(fast_policy):
    _, path = fast_policy
    model, _ = load_policy(path)
    with pytest.raises(ValueError, match="tokenizer"):
        sample_solutions(model, ["x"], n=1)
    with pytest.raises(ValueError, match="n >= 1"):
        sample_solutions(path, ["x"], n=0)


def test_policy_accuracy_matches_the_checker(fast_policy):
    _, path = fast_policy
    problems = generate_problems(8, FAST.task, seed=9)
    report = policy_accuracy(path, problems, n=2, seed=3, max_new_tokens=100)
    checks = [check_solution(p, s) for p, group in zip(problems, report["solutions"]) for s in group]
    assert report["num_samples"] == 16
    assert report["accuracy"] == sum(c.answer_correct for c in checks) / 16
    assert report["error_free"] == sum(c.first_error == -1 for c in checks) / 16
    assert sum(report["first_error_index"].values()) == 16
    assert sum(report["first_error_kind"].values()) == 16 - report["first_error_index"].get(-1, 0)
    steps = [ok for c in checks for ok in c.step_correct]
    assert report["step_accuracy"] == sum(steps) / len(steps)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": 64, "num_attention_heads": 4}, "head dimension"),
        ({"hidden_size": 100, "num_attention_heads": 3}, "head dimension"),
        ({"max_steps": 0}, "max_steps"),
        ({"misconception": -0.1}, "misconception"),
    ],
)
def test_policy_config_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolicyConfig(**kwargs)


def test_policy_config_round_trips_through_a_dict():
    config = PolicyConfig(task={"max_steps": 4, "operations": ["add", "sub"]}, seed=3)
    assert config.task == TaskConfig(max_steps=4, operations=("add", "sub"))
    assert PolicyConfig(**config.to_dict()) == config


def test_tokenizer_has_the_prm_tokens_as_single_tokens(fast_policy):
    from trl_erprm.quickstart.labels import BAD_TOKEN, GOOD_TOKEN
    from trl_erprm.quickstart.policy import STEP_TAG

    _, tokenizer = load_policy(fast_policy[1])
    for text in (STEP_TAG, GOOD_TOKEN, BAD_TOKEN):
        assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, text


@pytest.mark.slow
def test_default_policy_makes_the_designed_mistakes(tmp_path):
    path = train_policy(tmp_path, PolicyConfig(), show_progress=False)
    report = policy_accuracy(path, generate_problems(100, seed=12345), n=4, seed=0)
    assert 0.4 <= report["accuracy"] <= 0.8
    # Mistakes at several steps, nearly all of them the designed one (a multiplicative step solved additively).
    assert report["first_error_index"].get(1, 0) > 0
    kinds = report["first_error_kind"]
    assert kinds.get("wrong_operation", 0) >= 0.9 * sum(kinds.values())
