"""Rollout backends: one contract, tested on all three engines with the tiny Qwen2 of the conftest.

The `vllm` and `vllm_server` cases need the CPU build of vLLM and run in the separate vLLM environment
(`bash .ci/vllm_env.sh`, which selects `-m vllm`); in the main environment they skip at `import vllm`.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from trl_erprm.labeling.backends import BACKENDS, Sampling, TransformersBackend, derive_seed, sample_from_uniform


PROMPTS = ["Ann has 3 apples and gets 4 more.", "Step 1: Bob buys 12 pens.\n\n", "What is 7 * 6?"]
RANDOM = Sampling(temperature=1.0, top_p=1.0, max_tokens=12)
GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=12)
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}


# ---------------------------------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_sample_from_uniform_is_an_inverse_cdf_with_hand_values():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(6, 1)  # sorted: token 1 (0.5), 2 (0.3), 0 (0.2)
    uniforms = torch.tensor([0.0, 0.49, 0.5, 0.79, 0.8, 0.999])
    assert sample_from_uniform(logits, uniforms, 1.0, 1.0).tolist() == [1, 1, 2, 2, 0, 0]
    # top_p 0.6: token 1 (mass before 0) and token 2 (mass before 0.5 < 0.6) stay, token 0 (before 0.8) goes; the
    # nucleus mass is 0.8, so u picks token 1 below 0.5 / 0.8 = 0.625 and token 2 above.
    nucleus = torch.tensor([0.0, 0.62, 0.63, 0.999])
    assert sample_from_uniform(logits[:4], nucleus, 1.0, 0.6).tolist() == [1, 1, 2, 2]
    assert sample_from_uniform(logits[:2], torch.tensor([0.0, 0.999]), 1.0, 1e-9).tolist() == [1, 1]  # top-1 only
    assert sample_from_uniform(logits[:2], torch.tensor([0.3, 0.9]), 0.0, 1.0).tolist() == [1, 1]  # greedy
    # Temperature 2: probabilities proportional to sqrt(p) = (0.447, 0.707, 0.548) / 1.702 -> token 1 up to 0.4155.
    cut = math.sqrt(0.5) / (math.sqrt(0.2) + math.sqrt(0.5) + math.sqrt(0.3))
    assert sample_from_uniform(logits[:2], torch.tensor([cut - 1e-4, cut + 1e-4]), 2.0, 1.0).tolist() == [1, 2]


def test_sample_from_uniform_frequencies_follow_the_softmax():
    probs = torch.tensor([0.1, 0.6, 0.3])
    uniforms = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    tokens = sample_from_uniform(torch.log(probs).expand(20000, 3), uniforms, 1.0, 1.0)
    freqs = torch.bincount(tokens, minlength=3).float() / 20000
    assert torch.allclose(freqs, probs, atol=0.015)


def test_sample_from_uniform_breaks_ties_by_token_id():
    logits = torch.zeros(3, 4)
    assert sample_from_uniform(logits, torch.tensor([0.1, 0.3, 0.99]), 1.0, 1.0).tolist() == [0, 1, 3]


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 5, 2) == derive_seed(0, 5, 2)
    seeds = {derive_seed(0, row, step) for row in range(100) for step in range(10)}
    assert len(seeds) == 1000
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2) != derive_seed(12)  # parts are separated


def test_sampling_validation():
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)
    with pytest.raises(ValueError, match="max_tokens"):
        Sampling(max_tokens=0)


def test_transformers_greedy_equals_model_generate(causal_lm_path, tokenizer):
    """The seeded sampler at temperature 0, on left-padded batches, reproduces plain greedy `generate` per prompt."""
    from transformers import AutoModelForCausalLM

    backend = TransformersBackend(causal_lm_path, batch_size=4)
    outputs = backend.generate(PROMPTS, 2, GREEDY, seeds=[1, 2, 3])
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    for prompt, samples in zip(PROMPTS, outputs):
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert samples == [expected, expected]


# ---------------------------------------------------------------------------------------------------------------------
# The contract, on every backend
# ---------------------------------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server_url(causal_lm_path):
    """`trl vllm-serve` on 127.0.0.1 in a subprocess; waits (bounded) for /health and always kills it."""
    pytest.importorskip("vllm")
    port = _free_port()
    trl = Path(sys.executable).parent / "trl"
    command = [str(trl), "vllm-serve", "--model", causal_lm_path, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--enforce_eager", "True", "--enable_prefix_caching", "True", "--max_model_len", "512"]
    command += ["--dtype", "float32", "--log_level", "warning"]
    env = {**os.environ, **VLLM_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    log = open(Path(causal_lm_path).parent / f"vllm_server_{port}.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"trl vllm-serve exited with {process.returncode}; log: {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"trl vllm-serve did not answer /health within 240 s; log: {log.name}")
            time.sleep(1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        log.close()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("transformers"),
        pytest.param("vllm", marks=pytest.mark.vllm),
        pytest.param("vllm_server", marks=pytest.mark.vllm),
    ],
)
def backend(request, causal_lm_path, tokenizer):
    name = request.param
    if name == "transformers":
        backend = BACKENDS[name](causal_lm_path, tokenizer=tokenizer, batch_size=8)
    elif name == "vllm":
        pytest.importorskip("vllm")
        os.environ.update(VLLM_ENV)
        backend = BACKENDS[name](causal_lm_path, dtype="float32", enforce_eager=True, max_model_len=512)
    else:
        url = request.getfixturevalue("vllm_server_url")
        backend = BACKENDS[name](url, tokenizer=tokenizer, connection_timeout=30)
    yield backend
    backend.close()


def _ids(tokenizer, prompt):
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_contract_shapes_text_and_token_prompts(backend, tokenizer):
    prompts = [PROMPTS[0], _ids(tokenizer, PROMPTS[1]), PROMPTS[2]]
    outputs = backend.generate(prompts, 3, RANDOM, seeds=[10, 11, 12])
    assert len(outputs) == 3 and all(len(samples) == 3 for samples in outputs)
    assert all(isinstance(text, str) for samples in outputs for text in samples)
    # A text prompt and its token ids are the same prompt (this tokenizer adds no special tokens).
    assert backend.generate([PROMPTS[1]], 3, RANDOM, seeds=[11]) == [outputs[1]]


def test_contract_seeded_and_independent_of_the_batch(backend):
    first = backend.generate(PROMPTS, 4, RANDOM, seeds=[1, 2, 3])
    assert backend.generate(PROMPTS, 4, RANDOM, seeds=[1, 2, 3]) == first
    # Alone, or with other neighbours in another order, a prompt gets the same samples for the same seed.
    assert backend.generate([PROMPTS[1]], 4, RANDOM, seeds=[2]) == [first[1]]
    assert backend.generate([PROMPTS[2], PROMPTS[0]], 4, RANDOM, seeds=[3, 1]) == [first[2], first[0]]
    # The n samples of a prompt differ, and another seed gives other samples.
    assert all(len(set(samples)) > 1 for samples in first)
    assert backend.generate([PROMPTS[0]], 4, RANDOM, seeds=[99]) != [first[0]]


def test_contract_greedy_and_top_p(backend):
    greedy = backend.generate(PROMPTS, 3, GREEDY, seeds=[1, 2, 3])
    assert all(len(set(samples)) == 1 for samples in greedy)
    # A nucleus that holds only the most likely token is greedy decoding, whatever the seed.
    top1 = backend.generate(PROMPTS, 3, Sampling(temperature=1.0, top_p=1e-6, max_tokens=12), seeds=[7, 8, 9])
    assert top1 == greedy


def test_contract_max_tokens(backend, tokenizer):
    one_token = backend.generate(PROMPTS, 4, Sampling(temperature=1.0, top_p=1.0, max_tokens=1), seeds=[4, 5, 6])
    vocabulary = {tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))}
    assert all(text in vocabulary for samples in one_token for text in samples)


def test_contract_stop_strings_and_token_ids(backend, tokenizer):
    """`Sampling.stop` ends a sample at the first separator: the same tokens as without it, up to the one that
    completes the separator; the text is cut just before it; `token_ids` are what was generated."""
    from collections import Counter

    free = Sampling(temperature=1.0, top_p=1.0, max_tokens=40)
    full = backend.generate_completions(PROMPTS, 16, free, seeds=[1, 2, 3])
    stopped = backend.generate_completions(PROMPTS, 16, Sampling(1.0, 1.0, 40, stop=("\n\n",)), seeds=[1, 2, 3])
    assert backend.generate(PROMPTS, 16, free, seeds=[1, 2, 3]) == [[c.text for c in row] for row in full]
    pairs = [(f, s) for row_f, row_s in zip(full, stopped) for f, s in zip(row_f, row_s)]
    reasons = Counter(s.finish_reason for _, s in pairs)
    assert reasons["stop"] >= 3 and reasons["length"] >= 3, reasons  # fixed seeds: both kinds occur
    eos_ids = {tokenizer.eos_token_id}
    for f, s in pairs:
        assert f.num_tokens == len(f.token_ids) and 1 <= f.num_tokens <= 40
        assert (f.finish_reason == "length") == (f.num_tokens == 40 and f.token_ids[-1] not in eos_ids)
        if f.finish_reason == "eos":
            assert f.token_ids[-1] in eos_ids
        if s.finish_reason == "stop":
            assert s.token_ids == f.token_ids[: s.num_tokens]
            assert "\n\n" not in s.text and f.text.startswith(s.text + "\n\n")
            assert "\n\n" in tokenizer.decode(list(s.token_ids), skip_special_tokens=True)
            assert "\n\n" not in tokenizer.decode(list(s.token_ids[:-1]), skip_special_tokens=True)
        else:  # no separator before the sample ended: exactly the sample without stop strings
            assert s == f and "\n\n" not in f.text


def test_sampling_stop_validation():
    assert Sampling(stop=["\n\n", "Step"]).stop == ("\n\n", "Step")
    with pytest.raises(ValueError, match="stop must be a sequence of non-empty strings"):
        Sampling(stop="\n\n")
    with pytest.raises(ValueError, match="stop must be a sequence of non-empty strings"):
        Sampling(stop=("",))


def test_contract_bad_requests(backend):
    with pytest.raises(ValueError, match="one seed per prompt"):
        backend.generate(PROMPTS, 2, RANDOM, seeds=[1])
    with pytest.raises(ValueError, match="Prompt 1 is empty"):
        backend.generate(["a", ""], 2, RANDOM, seeds=[1, 2])
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        backend.generate(["a"], 0, RANDOM, seeds=[1])


def test_contract_a_call_larger_than_one_engine_step(backend, tokenizer):
    """Prompts whose prefills exceed one engine step's token budget (vLLM: 4096 by default): every sample comes back,
    and a prompt's samples are those it gets alone. (vLLM's CPU build crashed here with per-request seeds while it cut
    prefills across steps: `VLLMBackend` turns chunked prefill off there. A `trl vllm-serve` server has no switch for
    it, so the CPU server is left out: see docs/labeling.md.)"""
    if backend.name == "vllm_server":
        pytest.skip(
            "vLLM's CPU server cuts prefills with per-request seeds and dies; trl vllm-serve cannot turn it off"
        )
    long = " ".join(["Ann has 3 apples and gets 4 more. How many apples does Ann have now?"] * 12)
    prompts = [f"Problem {i}: {long}" for i in range(24)]
    assert sum(len(tokenizer(p)["input_ids"]) for p in prompts) > 4096
    sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=6)
    outputs = backend.generate(prompts, 4, sampling, seeds=list(range(24)))
    assert len(outputs) == 24 and all(len(samples) == 4 for samples in outputs)
    assert backend.generate(prompts[5:6], 4, sampling, seeds=[5]) == [outputs[5]]


def test_labeler_end_to_end_on_every_backend(backend, tokenizer, sample_data, tmp_path):
    """The labeler on real GSM8K rows with this backend: labels are er_label of the stored outcomes."""
    from trl_erprm.data import gsm8k_to_stepwise
    from trl_erprm.functional import er_label
    from trl_erprm.labeling.labeler import ERPRMLabeler

    lines = (sample_data / "gsm8k_test.jsonl").read_text().splitlines()[:2]
    rows = [gsm8k_to_stepwise(json.loads(line), i) for i, line in enumerate(lines)]
    labeler = ERPRMLabeler(
        model_name_or_path="tiny",
        tokenizer=tokenizer,
        backend=backend,
        output_dir=str(tmp_path / "job"),
        num_rollouts=2,
        max_new_tokens=8,
        eta=2.0,
    )
    try:
        dataset = labeler.label(rows)
    finally:
        labeler.close()
    assert dataset["status"] == ["ok", "ok"]
    for row, source in zip(dataset, rows):
        assert len(row["step_outcomes"]) == len(source["completions"])
        assert row["step_outcomes"][-1] == [1.0]
        assert row["labels"] == [pytest.approx(float(er_label(o, 2.0))) for o in row["step_outcomes"]]
    assert json.loads(dataset.info.description)["erprm_labeling"]["backend"] == backend.name


# ---------------------------------------------------------------------------------------------------------------------
# Prefix sharing in the transformers backend
# ---------------------------------------------------------------------------------------------------------------------

# Prompts of different lengths, one repeated (its prefill is shared too), long enough that some samples end at EOS.
SHARED = [
    "Ann has 3 apples and gets 4 more. How many apples does Ann have now?",
    "What is 7 * 6?",
    "Q",
    "What is 7 * 6?",
]


@pytest.fixture(scope="module")
def float64_lm(causal_lm_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(causal_lm_path, dtype=torch.float64).eval()


@pytest.mark.parametrize("stop", [(), ("\n\n",)])
def test_prefix_shared_equals_per_rollout_token_for_token_in_float64(float64_lm, tokenizer, stop):
    """The prefix-shared path (each distinct prompt prefilled once, its KV cache copied to its samples) samples
    exactly what the per-rollout path (one prefill per sample) samples for the same seeds: in float64 the two differ
    only by rounding far below any gap between a uniform and a cumulative probability. Small chunks (a unit's samples
    split across chunks), finished rows dropped from the batch, stop strings: all invisible."""
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=48, stop=stop)
    shared = TransformersBackend(float64_lm, tokenizer=tokenizer, batch_size=4, share_prefix=True)
    alone = TransformersBackend(float64_lm, tokenizer=tokenizer, batch_size=4, share_prefix=False)
    seeds = [11, 12, 13, 12]
    got, expected = (b.generate_completions(SHARED, 6, sampling, seeds) for b in (shared, alone))
    assert shared._decoder.shares_attention()  # the prompt's keys and values were kept once, not copied
    assert got == expected
    assert got[1] == got[3]  # the same prompt and seed: the same samples
    reasons = {c.finish_reason for row in got for c in row}
    assert "eos" in reasons and "length" in reasons and (not stop or "stop" in reasons), reasons
    # The distinct prompts were prefilled once per chunk, instead of once per sample.
    lengths = [len(tokenizer(p)["input_ids"]) for p in SHARED]
    assert alone.stats["prefill_tokens"] == 6 * sum(lengths)
    assert shared.stats["prefill_tokens"] < 6 * sum(lengths) / 2
    assert shared.stats["sequences"] == alone.stats["sequences"] == 24
    assert (
        shared.stats["generated_tokens"]
        == alone.stats["generated_tokens"]
        == sum(c.num_tokens for row in got for c in row)
    )


def test_prefix_shared_logits_equal_per_rollout_logits_in_float32(causal_lm_path, tokenizer):
    """In float32 the two paths compute the same next-token distributions up to float32 rounding (here 1e-5 on the
    logits). A sampled token can therefore differ only where a uniform falls within that rounding of a cumulative
    probability, which is why the exact equality test runs in float64."""
    from trl_erprm.labeling._decode import ChunkDecoder

    backend = TransformersBackend(causal_lm_path, tokenizer=tokenizer)
    decoder = ChunkDecoder(backend.model, tokenizer, backend.eos_token_ids, backend.pad_token_id)
    ids = [tokenizer(p)["input_ids"] for p in SHARED[:3]]
    width = max(map(len, ids))

    def prefill(prompts):
        input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        cache = decoder.new_cache()
        with torch.inference_mode():
            logits = decoder.forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        return logits, cache, mask

    shared, cache, mask = prefill(ids)
    owners = torch.tensor([0, 0, 1, 1, 1, 2])
    cache.batch_select_indices(owners)
    per_rollout, cache_alone, mask_alone = prefill([ids[i] for i in owners.tolist()])
    assert torch.allclose(shared[owners], per_rollout, atol=1e-5, rtol=0)
    # One decoding step on the expanded cache against the cache prefilled per sample.
    step = torch.tensor([[5], [6], [7], [8], [9], [10]])
    mask = torch.cat([mask[owners], torch.ones(6, 1, dtype=torch.long)], dim=1)
    position = mask.sum(-1, keepdim=True) - 1
    with torch.inference_mode():
        after_shared = decoder.forward(step, mask, position, cache)
        after_alone = decoder.forward(step, mask, position, cache_alone)
    assert torch.allclose(after_shared, after_alone, atol=1e-5, rtol=0)


def test_every_way_of_sharing_a_prompt_gives_the_same_samples(float64_lm, tokenizer):
    """Shared-prefix attention (the prompt's keys and values once, two softmaxes merged), the prompt's cache copied to
    its samples in preallocated layers, and in `transformers`' own `DynamicLayer` (which concatenates at every step):
    the same samples, token for token (float64), with rows dropped from the batch on the way."""
    from transformers.cache_utils import DynamicLayer

    from trl_erprm._compat import attention_implementation
    from trl_erprm.labeling._decode import ChunkDecoder, _PreallocatedLayer

    backend = TransformersBackend(float64_lm, tokenizer=tokenizer, batch_size=64)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=40)
    shared = backend.generate_completions(SHARED, 5, sampling, seeds=[1, 2, 3, 4])
    assert backend._decoder.shares_attention() and attention_implementation(float64_lm) == "sdpa"  # restored
    assert any(c.finish_reason == "eos" for row in shared for c in row)  # rows were dropped on the way
    for preallocate, layer_class in ((True, _PreallocatedLayer), (False, DynamicLayer)):
        decoder = ChunkDecoder(float64_lm, tokenizer, backend.eos_token_ids, backend.pad_token_id, preallocate, False)
        assert not decoder.shares_attention()
        assert {type(layer) for layer in decoder.new_cache().layers} == {layer_class}
        backend._decoder = decoder
        assert backend.generate_completions(SHARED, 5, sampling, seeds=[1, 2, 3, 4]) == shared


def test_shared_prefix_attention_is_used_only_where_it_gives_the_same_logits(tokenizer, causal_lm_path):
    """A model with sliding-window layers keeps the copied prefix (its cache layers are not plain full attention); a
    model running `eager` attention shares the prefix and gets `eager` back after every call."""
    from transformers import AutoModelForCausalLM

    from trl_erprm._compat import attention_implementation
    from trl_erprm.tiny import build_tiny_model

    sliding = build_tiny_model(tokenizer, "causal_lm")
    sliding.config.use_sliding_window, sliding.config.sliding_window, sliding.config.max_window_layers = True, 4, 1
    sliding.config.layer_types = ["full_attention", "sliding_attention"]
    sliding = AutoModelForCausalLM.from_config(sliding.config).eval()
    backend = TransformersBackend(sliding, tokenizer=tokenizer, batch_size=8)
    alone = TransformersBackend(sliding, tokenizer=tokenizer, batch_size=8, share_prefix=False)
    assert not backend._decoder.shares_attention()
    assert backend.generate(SHARED, 3, RANDOM, [1, 2, 3, 4]) == alone.generate(SHARED, 3, RANDOM, [1, 2, 3, 4])

    eager = AutoModelForCausalLM.from_pretrained(causal_lm_path, attn_implementation="eager").eval()
    backend = TransformersBackend(eager, tokenizer=tokenizer, batch_size=8)
    backend.generate(SHARED, 3, RANDOM, [1, 2, 3, 4])
    assert backend._decoder.shares_attention() and attention_implementation(eager) == "eager"


def test_transformers_backend_serialises_calls_from_threads(causal_lm_path, tokenizer):
    from concurrent.futures import ThreadPoolExecutor

    backend = TransformersBackend(causal_lm_path, tokenizer=tokenizer, batch_size=8)
    requests = [([p], [s]) for p, s in zip(PROMPTS * 2, range(6))]
    alone = [backend.generate(prompts, 3, RANDOM, seeds) for prompts, seeds in requests]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda r: backend.generate(r[0], 3, RANDOM, r[1]), requests))
    assert together == alone
    assert backend.stats["calls"] == 12 and backend.stats["sequences"] == 36


def test_samples_equal_a_naive_reference_sampler_in_float64(float64_lm, tokenizer):
    """Against the definition: sample `j` of a prompt takes, at step `t`, `sample_from_uniform(logits_t, u_t)` where
    `logits_t` come from one uncached forward pass over the prompt and the tokens so far, and `u` is the stream
    seeded with `derive_seed(seed, j)`; it ends at EOS or after `max_tokens`."""
    from trl_erprm.labeling._decode import uniforms

    sampling = Sampling(temperature=0.8, top_p=0.9, max_tokens=24)
    backend = TransformersBackend(float64_lm, tokenizer=tokenizer, batch_size=4)
    got = backend.generate_completions(SHARED[:3], 3, sampling, seeds=[5, 6, 7])
    eos = tokenizer.eos_token_id
    for prompt, seed, samples in zip(SHARED[:3], [5, 6, 7], got):
        for j, completion in enumerate(samples):
            draws = uniforms([derive_seed(seed, j)], sampling.max_tokens)[0]
            ids = tokenizer(prompt)["input_ids"]
            tokens = []
            with torch.no_grad():
                while len(tokens) < sampling.max_tokens and (not tokens or tokens[-1] != eos):
                    logits = float64_lm(torch.tensor([ids + tokens])).logits[:, -1].float()
                    tokens += sample_from_uniform(logits, draws[len(tokens) : len(tokens) + 1], 0.8, 0.9).tolist()
            assert list(completion.token_ids) == tokens
