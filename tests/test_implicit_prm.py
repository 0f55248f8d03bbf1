"""ImplicitPRM: step boundaries, rewards against hand computations from raw model log-probs, references, bad input."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_erprm.data import truncate_to_max_length
from trl_erprm.implicit_prm import ImplicitPRM
from trl_erprm.tiny import build_tiny_model


BETA = 0.5
PROMPTS = ["Ann has 3 apples and gets 4 more. How many apples does Ann have?", "Bob buys 12 pens.", "Eve has 5 eggs."]
COMPLETIONS = [
    "Step 1: Ann starts with 3 apples.\n\nStep 2: 3 + 4 = 7.\n\nThe answer is \\boxed{7}.",
    "Then 4 more.\n\nSo 12 + 4 = 16.",
    "\\boxed{5}",  # no separator: one step
]


@pytest.fixture(scope="module")
def ref_path(tokenizer, tiny_dir):
    """A second tiny causal LM (other seed) used as the reference."""
    path = tiny_dir / "implicit_ref_seed1"
    if not path.exists():
        build_tiny_model(tokenizer, "causal_lm", save_dir=path, seed=1)
    return str(path)


@pytest.fixture(scope="module")
def bos_lm_path(bos_tokenizer, tiny_dir):
    """A tiny causal LM for the tokenizer that prepends a BOS token."""
    path = tiny_dir / "implicit_bos_lm"
    if not path.exists():
        build_tiny_model(bos_tokenizer, "causal_lm", save_dir=path, seed=2)
    return str(path)


def raw_completion_logps(model, prompt_ids, completion_ids):
    """log p(completion token | prefix) from one unpadded forward pass, by hand."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    n = len(prompt_ids)
    return torch.stack([logp[n + t - 1, tok] for t, tok in enumerate(completion_ids)])


def hand_steps(tokenizer, model, ref, prompt, completion, beta, bos=False):
    """Step rewards, q at step ends, computed by hand: step ends are the tokens whose text contains the separator."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert (prompt_ids[0] == tokenizer.bos_token_id) == bos
    lp = raw_completion_logps(model, prompt_ids, completion_ids)
    ratio = lp if ref is None else lp - raw_completion_logps(ref, prompt_ids, completion_ids)
    q = torch.cumsum(beta * ratio, 0)
    ends = [t for t, tok in enumerate(completion_ids) if "\n\n" in tokenizer.decode([tok])]
    ends = [e for e in ends if e != len(completion_ids) - 1] + [len(completion_ids) - 1]
    q_ends = [float(q[e]) for e in ends]
    steps = [q_ends[0]] + [b - a for a, b in zip(q_ends, q_ends[1:])]
    return steps, q_ends


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_truncate_to_max_length():
    assert truncate_to_max_length([1, 2, 3], [4, 5], 10) == ([1, 2, 3], [4, 5], False)
    assert truncate_to_max_length([1, 2, 3], [4, 5], 4) == ([2, 3], [4, 5], True)
    assert truncate_to_max_length([1, 2, 3], [4, 5, 6, 7], 3) == ([3], [4, 5], True)
    with pytest.raises(ValueError, match="at least 2"):
        truncate_to_max_length([1, 2], [3], 1)


# ---------------------------------------------------------------------------------------------------------------------
# Step ends with real tokenizers
# ---------------------------------------------------------------------------------------------------------------------


STEPS_0 = ["Step 1: Ann starts with 3 apples.\n\n", "Step 2: 3 + 4 = 7.\n\n", "The answer is \\boxed{7}."]


def decoded_steps(tokenizer, encoded):
    """The text of each step, decoded from the tokens between consecutive step ends."""
    starts = [0] + [e + 1 for e in encoded.step_ends[:-1]]
    return [tokenizer.decode(encoded.completion_ids[s : e + 1]) for s, e in zip(starts, encoded.step_ends)]


def test_step_ends_under_merging_tokenizer(tokenizer, causal_lm_path):
    prm = ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer)
    assert "".join(STEPS_0) == COMPLETIONS[0]
    encoded = prm._encode(["q"], [COMPLETIONS[0]])[0]
    tokens = [tokenizer.decode([t]) for t in encoded.completion_ids]
    assert ".\n\n" in tokens, "the tokenizer must merge '.\\n\\n' for this test to mean something"
    assert decoded_steps(tokenizer, encoded) == STEPS_0
    assert encoded.step_ends[-1] == len(encoded.completion_ids) - 1


def test_step_ends_under_bos_tokenizer(bos_tokenizer, bos_lm_path):
    prm = ImplicitPRM(bos_lm_path, ref_model=None, tokenizer=bos_tokenizer)
    encoded = prm._encode(["Eve has 5 eggs."], [COMPLETIONS[0]])[0]
    assert encoded.prompt_ids[0] == bos_tokenizer.bos_token_id  # BOS in the prompt, as GRPOTrainer tokenizes it
    assert bos_tokenizer.bos_token_id not in encoded.completion_ids
    assert ".\n\n" in [bos_tokenizer.decode([t]) for t in encoded.completion_ids]
    assert decoded_steps(bos_tokenizer, encoded) == STEPS_0


# ---------------------------------------------------------------------------------------------------------------------
# Rewards against hand computations
# ---------------------------------------------------------------------------------------------------------------------


def test_rewards_equal_hand_computation(tokenizer, causal_lm_path, ref_path):
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    ref = AutoModelForCausalLM.from_pretrained(ref_path)
    # batch_size 2 over 3 completions of different lengths: chunking and left/right padding are exercised
    prm = ImplicitPRM(model, ref_model=ref, tokenizer=tokenizer, beta=BETA, batch_size=2)
    scored = prm.score_steps(PROMPTS, COMPLETIONS)
    rewards = prm(
        prompts=PROMPTS, completions=COMPLETIONS, completion_ids=None, trainer_state=None, solution=["7"] * 3
    )
    for prompt, completion, got, reward in zip(PROMPTS, COMPLETIONS, scored, rewards):
        steps, q_ends = hand_steps(tokenizer, model, ref, prompt, completion, BETA)
        assert len(got["step_rewards"]) == len(steps)
        torch.testing.assert_close(torch.tensor(got["step_rewards"]), torch.tensor(steps), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(got["q_at_step_ends"]), torch.tensor(q_ends), atol=1e-5, rtol=0)
        assert reward == pytest.approx(min(q_ends), abs=1e-5) == got["score"]
        assert abs(reward) > 1e-3  # different models: the reward is not trivially zero
    assert len(scored[2]["step_rewards"]) == 1  # no separator: one step


@pytest.mark.parametrize("how", ["last", "sum", "mean", "max"])
def test_aggregations_by_hand(tokenizer, causal_lm_path, ref_path, how):
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    ref = AutoModelForCausalLM.from_pretrained(ref_path)
    prm = ImplicitPRM(model, ref_model=ref, tokenizer=tokenizer, beta=BETA, aggregation=how)
    _, q_ends = hand_steps(tokenizer, model, ref, PROMPTS[0], COMPLETIONS[0], BETA)
    expected = {"last": q_ends[-1], "sum": sum(q_ends), "mean": sum(q_ends) / len(q_ends), "max": max(q_ends)}[how]
    assert prm(PROMPTS[:1], COMPLETIONS[:1])[0] == pytest.approx(expected, abs=1e-5)


def test_bos_tokenizer_rewards_equal_hand_computation(bos_tokenizer, bos_lm_path):
    model = AutoModelForCausalLM.from_pretrained(bos_lm_path)
    prm = ImplicitPRM(model, ref_model=None, tokenizer=bos_tokenizer, beta=BETA)
    got = prm.score_steps(PROMPTS[:2], COMPLETIONS[:2])
    for prompt, completion, g in zip(PROMPTS, COMPLETIONS, got):
        steps, q_ends = hand_steps(bos_tokenizer, model, None, prompt, completion, BETA, bos=True)
        torch.testing.assert_close(torch.tensor(g["step_rewards"]), torch.tensor(steps), atol=1e-5, rtol=0)
        assert g["score"] == pytest.approx(min(q_ends), abs=1e-5)


def test_identical_prm_and_reference_give_exactly_zero(tokenizer, causal_lm_path):
    prm = ImplicitPRM(causal_lm_path, ref_model=causal_lm_path, tokenizer=tokenizer, batch_size=2)
    with pytest.warns(UserWarning, match="identical log-probabilities") as caught:
        assert prm(PROMPTS, COMPLETIONS) == [0.0, 0.0, 0.0]
    assert len([w for w in caught if "identical" in str(w.message)]) == 1  # once, though two batches were scored
    for result in prm.score_steps(PROMPTS, COMPLETIONS):
        assert all(v == 0.0 for v in result["step_rewards"] + result["q_at_step_ends"])
    rewards, mask = prm.token_rewards(PROMPTS, COMPLETIONS)
    assert mask.sum() > 0 and torch.equal(rewards, torch.zeros_like(rewards))


def _identical_reference_warnings(call) -> list[str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "identical log-probabilities" in str(w.message)]


def test_a_reference_identical_to_the_prm_warns_once_with_the_fix(tokenizer, causal_lm_path, ref_path):
    """Issue 16: an implicit PRM whose reference has its weights returns 0 for everything; it says so, once."""
    from peft import LoraConfig, get_peft_model

    same = ImplicitPRM(causal_lm_path, ref_model=causal_lm_path, tokenizer=tokenizer)
    [message] = _identical_reference_warnings(lambda: same.score_steps(PROMPTS, COMPLETIONS))
    assert "every reward is exactly 0" in message and "the reference model" in message
    assert "ImplicitPRMTrainer" in message and "ref_model=None" in message
    assert _identical_reference_warnings(lambda: same(PROMPTS, COMPLETIONS)) == []  # once per PRM
    # a fresh LoRA adapter (B = 0) scored against its own base: the same model
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(causal_lm_path), LoraConfig(r=4))
    untrained = ImplicitPRM(fresh, ref_model="adapter", tokenizer=tokenizer)
    [message] = _identical_reference_warnings(lambda: untrained.token_rewards(PROMPTS, COMPLETIONS))
    assert "the PRM with its adapter disabled" in message
    # a real reference, the reference-free variant and empty completions: no warning
    assert (
        _identical_reference_warnings(lambda: ImplicitPRM(causal_lm_path, ref_path, tokenizer)(PROMPTS, COMPLETIONS))
        == []
    )
    assert (
        _identical_reference_warnings(lambda: ImplicitPRM(causal_lm_path, None, tokenizer)(PROMPTS, COMPLETIONS)) == []
    )
    empty_first = ImplicitPRM(causal_lm_path, ref_model=causal_lm_path, tokenizer=tokenizer)
    assert _identical_reference_warnings(lambda: empty_first(["a"], [""])) == []  # nothing scored: nothing decided
    assert len(_identical_reference_warnings(lambda: empty_first(PROMPTS, COMPLETIONS))) == 1


def test_reference_free_variant(tokenizer, causal_lm_path):
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    prm = ImplicitPRM(model, ref_model=None, tokenizer=tokenizer, beta=BETA, aggregation="last")
    assert (
        not prm.has_reference
        and prm.compute_logps(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3), 1, True) is None
    )
    prompt_ids = tokenizer(PROMPTS[1])["input_ids"]
    completion_ids = tokenizer(COMPLETIONS[1], add_special_tokens=False)["input_ids"]
    expected = BETA * raw_completion_logps(model, prompt_ids, completion_ids).sum()
    assert prm(PROMPTS[1:2], COMPLETIONS[1:2])[0] == pytest.approx(float(expected), abs=1e-5)
    assert expected < 0  # log-probs alone are negative


def test_conversational_input_uses_chat_template(tokenizer, causal_lm_path, ref_path):
    prm = ImplicitPRM(causal_lm_path, ref_model=ref_path, tokenizer=tokenizer, beta=BETA)
    messages = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    rendered = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    assert rendered[0].endswith("<|im_start|>assistant\n")
    assert prm(messages, completions) == pytest.approx(prm(rendered, COMPLETIONS), abs=1e-6)


def test_empty_completion_and_separator_only(tokenizer, causal_lm_path, ref_path):
    prm = ImplicitPRM(causal_lm_path, ref_model=ref_path, tokenizer=tokenizer, beta=BETA)
    rewards = prm(["a", "b", "c"], ["", COMPLETIONS[1], "\n\n"])
    assert rewards[0] == 0.0 and all(math.isfinite(r) for r in rewards)
    scored = prm.score_steps(["a", "c"], ["", "\n\n"])
    assert scored[0] == {"step_rewards": [], "q_at_step_ends": [], "score": 0.0}
    assert len(scored[1]["step_rewards"]) == 1
    assert prm(["a"], [""]) == [0.0]  # a batch of empty completions only: no forward pass, defined value


def test_truncation_warns_and_stays_finite(tokenizer, causal_lm_path, ref_path):
    full = ImplicitPRM(causal_lm_path, ref_model=ref_path, tokenizer=tokenizer, beta=BETA)
    n_completion = len(tokenizer(COMPLETIONS[0], add_special_tokens=False)["input_ids"])
    short = ImplicitPRM(causal_lm_path, ref_model=ref_path, tokenizer=tokenizer, beta=BETA, max_length=12)
    assert full.max_length == 2048  # defaults to the model's max_position_embeddings
    with pytest.warns(UserWarning, match="truncated"):
        scored = short.score_steps(PROMPTS[:1], COMPLETIONS[:1])
    assert n_completion > 11 and math.isfinite(scored[0]["score"])
    assert len(scored[0]["step_rewards"]) == 1  # the cut keeps 11 completion tokens: only part of step 1
    # the completion fits but the prompt is cut from the left: equals a hand computation on the prompt's last 2 tokens
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    ref = AutoModelForCausalLM.from_pretrained(ref_path)
    prompt_ids = tokenizer(PROMPTS[2])["input_ids"]
    completion_ids = tokenizer("\\boxed{5}", add_special_tokens=False)["input_ids"]
    keep = ImplicitPRM(
        model, ref_model=ref, tokenizer=tokenizer, beta=BETA, aggregation="last", max_length=len(completion_ids) + 2
    )
    with pytest.warns(UserWarning, match="1 of 1 prompt"):
        cut = keep(PROMPTS[2:3], ["\\boxed{5}"])
    ratio = raw_completion_logps(model, prompt_ids[-2:], completion_ids) - raw_completion_logps(
        ref, prompt_ids[-2:], completion_ids
    )
    assert len(prompt_ids) > 2 and cut[0] == pytest.approx(float(BETA * ratio.sum()), abs=1e-5)


def test_adapter_reference_equals_separate_reference_copy(tokenizer, causal_lm_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(causal_lm_path), config)
    shared = ImplicitPRM(peft_model, ref_model="adapter", tokenizer=tokenizer, beta=BETA, batch_size=2)
    separate = ImplicitPRM(peft_model, ref_model=causal_lm_path, tokenizer=tokenizer, beta=BETA, batch_size=2)
    assert shared.has_reference and shared.reference_is_adapter and shared.ref_model is None
    a, b = shared(PROMPTS, COMPLETIONS), separate(PROMPTS, COMPLETIONS)
    assert min(abs(x) for x in a) > 1e-3  # the nonzero adapter really changes the model
    assert a == pytest.approx(b, abs=1e-6)
    assert shared(PROMPTS, COMPLETIONS) == a  # the adapter is enabled again after the reference pass
    assert peft_model.training  # the model's mode is restored


def test_peft_adapter_folder_loads(tokenizer, causal_lm_path, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(causal_lm_path), config)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter" / "tokenizer_config.json").exists()  # the tokenizer comes from the base path
    loaded = ImplicitPRM(str(tmp_path / "adapter"), ref_model="adapter", beta=BETA)
    in_memory = ImplicitPRM(peft_model, ref_model="adapter", tokenizer=tokenizer, beta=BETA)
    assert loaded(PROMPTS, COMPLETIONS) == pytest.approx(in_memory(PROMPTS, COMPLETIONS), abs=1e-6)


def test_tensor_api(tokenizer, causal_lm_path, ref_path):
    prm = ImplicitPRM(causal_lm_path, ref_model=ref_path, tokenizer=tokenizer, beta=BETA)
    prompt_ids = tokenizer(PROMPTS[1])["input_ids"]
    completion_ids = tokenizer(COMPLETIONS[1], add_special_tokens=False)["input_ids"]
    P, C = len(prompt_ids), len(completion_ids)
    # row 0: prompt left-padded by 2, completion right-padded by 1; row 1: a longer prompt, a shorter completion
    input_ids = torch.tensor(
        [[0, 0] + prompt_ids + completion_ids + [0], prompt_ids[:2] + prompt_ids + completion_ids[:-1] + [0, 0]]
    )
    attention_mask = torch.tensor([[0, 0] + [1] * (P + C) + [0], [1] * (P + 2 + C - 1) + [0, 0]])
    T = len(completion_ids) + 1
    completion_mask = attention_mask[:, -T:]
    logps = prm.compute_logps(input_ids, attention_mask, T)
    assert logps.shape == (2, T) and not logps.requires_grad
    expected = raw_completion_logps(prm.model, prompt_ids, completion_ids)
    torch.testing.assert_close(logps[0, :-1].double(), expected, atol=1e-5, rtol=0)
    rewards = prm.token_rewards_from_ids(input_ids, attention_mask, T, completion_mask)
    ref = prm.compute_logps(input_ids, attention_mask, T, reference=True)
    torch.testing.assert_close(rewards, BETA * (logps - ref) * completion_mask)
    given = prm.token_rewards_from_ids(input_ids, attention_mask, T, completion_mask, ref_logps=torch.zeros(2, T))
    torch.testing.assert_close(given, BETA * logps * completion_mask)
    assert prm.compute_logps(input_ids, attention_mask, T, grad=True).requires_grad
    text_rewards, text_mask = prm.token_rewards(PROMPTS[1:2], COMPLETIONS[1:2])
    torch.testing.assert_close(text_rewards[0], rewards[0, :-1], atol=1e-6, rtol=0)
    assert text_mask.sum() == len(completion_ids)


def test_is_a_plain_callable_named_for_grpo(tokenizer, causal_lm_path):
    prm = ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer)
    assert not isinstance(prm, torch.nn.Module) and prm.__name__ == "implicit_prm"
    assert "reference=none" in repr(prm)


def test_bad_input_raises_clear_errors(tokenizer, causal_lm_path):
    with pytest.raises(ValueError, match="PeftModel"):
        ImplicitPRM(causal_lm_path, tokenizer=tokenizer)  # ref_model="adapter" on a plain model
    with pytest.raises(ValueError, match="Unknown aggregation"):
        ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer, aggregation="median")
    with pytest.raises(ValueError, match="step_separator"):
        ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer, step_separator="")
    prm = ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="Row 1: field 'completion' must hold exactly one assistant message"):
        prm(["a", "b"], [[{"role": "assistant", "content": "x"}], [{"role": "user", "content": "y"}]])
    with pytest.raises(ValueError, match="Row 0: field 'prompt' tokenizes to no token"):
        prm([""], ["x"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        prm(["a", "b"], ["x"])


def test_nan_log_probs_raise_instead_of_nan_rewards(tokenizer, causal_lm_path):
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))  # broken weights: every log-prob is NaN
    prm = ImplicitPRM(model, ref_model=None, tokenizer=tokenizer)
    with pytest.raises(FloatingPointError, match="non-finite"):
        prm(PROMPTS, COMPLETIONS)
