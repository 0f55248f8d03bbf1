"""Rollout backends of the ER-PRM labeler: one small interface, three engines.

Every backend turns a list of prompts into `n` sampled continuations per prompt:

```python
backend.generate(prompts, n, sampling, seeds) -> list[list[str]]  # len(prompts) lists of n texts
backend.generate_completions(prompts, n, sampling, seeds) -> list[list[Completion]]  # texts, token ids, finish
```

`Sampling.stop` ends a sample at the first occurrence of a stop string (the string itself is not returned), which is
how step-level search generates one step at a time; [`Completion`] carries the generated token ids (so every
generated token can be counted) and why the sample ended.

- [`TransformersBackend`]: a `transformers` model; each distinct prompt is prefilled once and its KV cache shared by
  its samples (CPU, tests, small jobs).
- [`VLLMBackend`]: vLLM's offline engine with prefix caching (the GPU path).
- [`VLLMServerBackend`]: a shared `trl vllm-serve` / `vllm serve` server through TRL's `VLLMClient` (many labeling
  processes or nodes, one server).

Every prompt comes with its own seed, so a prompt's samples depend only on `(prompt, seed)`, never on which other
prompts share its batch: a labeling job that is interrupted, resumed or split across processes samples exactly what
an uninterrupted one-process job samples.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:  # torch loads with the first rollout, not with this module
    import torch


Prompt = str | list[int]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters shared by all backends.

    Args:
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature; `0.0` is greedy decoding.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`. `1.0` keeps all.
        max_tokens (`int`, *optional*, defaults to `1024`):
            Maximum number of generated tokens per sample.
        stop (`tuple[str, ...]`, *optional*, defaults to `()`):
            Stop strings: a sample ends at the first occurrence of any of them in its text, which is cut just before
            it (vLLM's `SamplingParams(stop=...)` semantics). Empty: samples end at EOS or `max_tokens` only.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {self.stop!r}.")
        object.__setattr__(self, "stop", tuple(self.stop))
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}.")


#: Why a sample ended: at a stop string, at an EOS token, or at `max_tokens`.
FINISH_REASONS = ("stop", "eos", "length")


@dataclass(frozen=True)
class Completion:
    """One sampled continuation with what it cost.

    Args:
        text (`str`):
            The decoded continuation (special tokens removed), cut before the stop string when it ended at one.
        token_ids (`tuple[int, ...]`):
            Every generated token, including the EOS token or the token(s) that completed the stop string.
        finish_reason (`str`):
            One of [`FINISH_REASONS`]: `"stop"` (a stop string of `Sampling.stop`), `"eos"` or `"length"`.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str

    @property
    def num_tokens(self) -> int:
        """`int`: The number of generated tokens (what the sample cost)."""
        return len(self.token_ids)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut a text just before the first occurrence of any stop string.

    Args:
        text (`str`):
            A decoded continuation.
        stop (`Sequence[str]`):
            Stop strings.

    Returns:
        `tuple[str, bool]`: The text up to the earliest stop string, and whether one was found.
    """
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def derive_seed(*parts: int | str) -> int:
    """Derive a 63-bit seed from a tuple of integers or strings, independent of any global RNG state.

    Args:
        *parts (`int` or `str`):
            The values to hash, e.g. `(seed, row_index, step_index)`.

    Returns:
        `int`: A seed in `[0, 2**63)`; the same parts always give the same seed.
    """
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_from_uniform(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """Draw one token per row from `softmax(logits / temperature)` restricted to the top-p nucleus, by inverse CDF.

    The randomness is given, not drawn: row `b` picks the first token (in order of decreasing probability, ties broken
    by token id) whose cumulative nucleus probability exceeds `uniforms[b]` times the nucleus mass. Feeding each row a
    uniform from its own seeded stream makes a sample independent of the other rows of the batch.

    Args:
        logits (`torch.Tensor`):
            Next-token logits of shape `(batch, vocab)`.
        uniforms (`torch.Tensor`):
            Uniform draws in `[0, 1)` of shape `(batch,)`.
        temperature (`float`):
            Softmax temperature; `0.0` returns the argmax.
        top_p (`float`):
            Nucleus mass in `(0, 1]`.

    Returns:
        `torch.Tensor`: Token ids of shape `(batch,)` (int64).
    """
    import torch

    logits = logits.float()
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    cumulative = sorted_probs.cumsum(-1)
    # Keep a token while the mass before it is below top_p (the most likely token is always kept).
    sorted_probs = sorted_probs.masked_fill(cumulative - sorted_probs >= top_p, 0.0)
    cdf = sorted_probs.cumsum(-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    position = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, position).squeeze(-1)


def _check_request(prompts: Sequence[Prompt], n: int, seeds: Sequence[int] | None) -> list[int]:
    if n < 1:
        raise ValueError(f"n (rollouts per prompt) must be >= 1, got {n}.")
    if seeds is None:
        seeds = [derive_seed("prompt", i) for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"Got {len(seeds)} seeds for {len(prompts)} prompts: pass one seed per prompt.")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"Prompt {i} is empty: every rollout needs a non-empty prompt (text or token ids).")
    return list(seeds)


class TransformersBackend:
    """Rollouts with a `transformers` causal LM: every distinct prompt is prefilled once and its KV cache is shared by
    its `n` samples.

    A call sorts its prompts by length and cuts them into chunks of at most `batch_size` sequences (prompts times
    samples), so that the prompts of a chunk need little padding. In a chunk, the distinct prompts go through the model
    once (left-padded), their KV cache (a `transformers.DynamicCache`) is expanded to one row per sample
    (`batch_select_indices`), and all samples decode one token per step; a sample that ends (EOS, stop string) stops
    costing compute, as finished rows are dropped from the batch and its cache once they are an eighth of it.

    Sampling is exact (temperature, top-p) and driven by one seeded stream of uniforms per sample
    ([`sample_from_uniform`]): the samples of a prompt depend only on `(prompt, seed)`, not on the other prompts of
    the call, the chunking or `share_prefix`, up to the float rounding of differently shaped matmuls (token-identical
    in float64; in float32 a sample may rarely take another token where two candidates' cumulative probabilities are
    within rounding of its uniform, and differ from there on).

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            A causal LM or the folder / Hub id to load it from (safetensors only).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Its tokenizer; loaded from `model` when `None`.
        batch_size (`int`, *optional*, defaults to `64`):
            Maximum number of sequences (samples being decoded together) per chunk.
        device (`str` or `torch.device`, *optional*):
            Where to run; defaults to the model's device, or CUDA when available for a model loaded here.
        dtype (`str`, *optional*, defaults to `"auto"`):
            `dtype` used to load `model` from a path (`"auto"`, `"float32"`, `"bfloat16"`, `"float16"`; see
            [`~trl_erprm.models.load_model`]).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the Hub when loading `model`.
        share_prefix (`bool`, *optional*, defaults to `True`):
            Prefill each distinct prompt once per chunk and copy its KV cache to its samples. `False` prefills one
            copy of the prompt per sample (the per-rollout baseline: the same samples for more compute).

    Attributes:
        stats (`dict[str, int]`):
            Totals since creation: `calls`, `prompts`, `sequences` (samples decoded), `prefill_tokens` (prompt tokens
            run through the model, padding excluded) and `generated_tokens`.

    One backend may be shared by several threads: calls are serialised.
    """

    name = "transformers"

    def __init__(
        self,
        model,
        tokenizer=None,
        batch_size: int = 64,
        device=None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        share_prefix: bool = True,
    ):
        import torch

        from ..models import load_model, load_tokenizer
        from ._decode import ChunkDecoder

        if isinstance(model, str | os.PathLike):
            path = str(model)
            model = load_model(path, "causal_lm", dtype=dtype, trust_remote_code=trust_remote_code)
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if tokenizer is None:
                tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        if tokenizer is None:
            tokenizer = load_tokenizer(model.name_or_path, trust_remote_code=trust_remote_code)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.to(device) if device is not None else model
        self.model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prefix = bool(share_prefix)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_token_ids))
        )
        self._decoder = ChunkDecoder(self.model, tokenizer, self.eos_token_ids, self.pad_token_id)
        self.stats = dict.fromkeys(("calls", "prompts", "sequences", "prefill_tokens", "generated_tokens"), 0)
        self._lock = threading.Lock()

    def _encode(self, prompt: Prompt) -> list[int]:
        return list(prompt) if not isinstance(prompt, str) else self.tokenizer(prompt)["input_ids"]

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        """Sample `n` continuations of every prompt.

        Args:
            prompts (`list[str]` or `list[list[int]]`):
                Prompts as text (tokenized with the tokenizer's special tokens) or token ids.
            n (`int`):
                Number of samples per prompt.
            sampling ([`Sampling`]):
                Temperature, top-p, maximum new tokens and stop strings.
            seeds (`list[int]`, *optional*):
                One seed per prompt; sample `j` of prompt `i` uses the stream `derive_seed(seeds[i], j)`.

        Returns:
            `list[list[str]]`: For every prompt, its `n` decoded continuations (without the prompt).
        """
        return _texts(self.generate_completions(prompts, n, sampling, seeds))

    def generate_completions(
        self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """Sample `n` continuations of every prompt, with their token ids and finish reasons.

        Args:
            prompts (`list[str]` or `list[list[int]]`):
                Prompts as text (tokenized with the tokenizer's special tokens) or token ids.
            n (`int`):
                Number of samples per prompt.
            sampling ([`Sampling`]):
                Temperature, top-p, maximum new tokens and stop strings.
            seeds (`list[int]`, *optional*):
                One seed per prompt; sample `j` of prompt `i` uses the stream `derive_seed(seeds[i], j)`.

        Returns:
            `list[list[Completion]]`: For every prompt, its `n` [`Completion`]s; the texts are those of
            [`generate`].
        """
        seeds = _check_request(prompts, n, seeds)
        if sampling.temperature == 0.0 and self.share_prefix and n > 1:  # greedy: the n samples are one
            return [row * n for row in self.generate_completions(prompts, 1, sampling, seeds)]
        encoded = [self._encode(p) for p in prompts]
        completions: list[Completion | None] = [None] * (len(prompts) * n)
        with self._lock:
            for chunk in self._chunks(encoded, seeds, n):
                results, prefilled = self._decoder.run(chunk, sampling)
                for index, completion in results:
                    completions[index] = completion
                self.stats["sequences"] += len(results)
                self.stats["prefill_tokens"] += prefilled
                self.stats["generated_tokens"] += sum(c.num_tokens for _, c in results)
            self.stats["calls"] += 1
            self.stats["prompts"] += len(prompts)
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _chunks(self, encoded: list[list[int]], seeds: list[int], n: int) -> list[list[tuple[list[int], list]]]:
        """Chunks of units `(prompt ids, [(output index, sample seed), ...])` of at most `batch_size` samples in
        all, in order of prompt length. A unit is one prefill: a distinct prompt with its samples (`share_prefix`),
        or one sample."""
        units: dict = {}
        for i, (ids, seed) in enumerate(zip(encoded, seeds)):
            samples = [(i * n + j, derive_seed(seed, j)) for j in range(n)]
            if self.share_prefix:
                units.setdefault(tuple(ids), (ids, []))[1].extend(samples)
            else:
                units.update({sample[0]: (ids, [sample]) for sample in samples})
        chunks, current, size = [], [], 0
        for ids, samples in sorted(units.values(), key=lambda unit: len(unit[0])):
            for start in range(0, len(samples), self.batch_size):
                part = samples[start : start + self.batch_size]
                if current and size + len(part) > self.batch_size:
                    chunks.append(current)
                    current, size = [], 0
                current.append((ids, part))
                size += len(part)
        return [*chunks, current] if current else chunks

    def close(self) -> None:
        """Release nothing: the model is freed with the backend."""


def _texts(completions: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in samples] for samples in completions]


def _token_prompt(prompt: Prompt) -> dict:
    return {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}


class VLLMBackend:
    """Rollouts with vLLM's offline engine (`vllm.LLM`) and automatic prefix caching.

    All prompts of a call are submitted together, each with its own `SamplingParams(n=n, seed=...)`, so vLLM shares
    the KV cache of the common prefix (problem and earlier steps) across the prefixes of a solution. Under
    `accelerate launch` with several processes, each process runs its own engine on its own GPU (vLLM's
    `external_launcher` executor, as TRL's colocate mode does).

    Args:
        model (`str`):
            Folder or Hub id of the generator.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype.
        gpu_memory_utilization (`float`, *optional*, defaults to `0.9`):
            Share of GPU memory vLLM may take.
        max_model_len (`int`, *optional*):
            Context length; defaults to the model's.
        enforce_eager (`bool`, *optional*, defaults to `False`):
            Skip graph capture / compilation (faster start, slower decoding).
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            GPUs per engine (one process only).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the Hub.
        llm_kwargs (`dict`, *optional*):
            Extra keyword arguments of `vllm.LLM`.

    On vLLM's CPU build, chunked prefill is off unless `llm_kwargs` sets `enable_chunked_prefill`: with per-request
    seeds, a prefill cut across engine steps makes the CPU engine rewind its CPU random generator, which it cannot
    ("CPU Generator does not use offset", vLLM 0.32), and the engine dies as soon as a call's prompts exceed one step's
    token budget.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        trust_remote_code: bool = False,
        llm_kwargs: dict | None = None,
    ):
        from accelerate import PartialState
        from vllm import LLM
        from vllm.platforms import current_platform

        kwargs = {
            "model": str(model),
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "tensor_parallel_size": tensor_parallel_size,
            "trust_remote_code": trust_remote_code,
            "enable_prefix_caching": True,
        }
        state = PartialState()
        if state.num_processes > 1:
            if tensor_parallel_size != 1:
                raise ValueError(
                    "With several accelerate processes, each runs its own engine: use tensor_parallel_size=1."
                )
            os.environ.update(
                RANK=str(state.process_index),
                LOCAL_RANK=str(state.local_process_index),
                WORLD_SIZE=str(state.num_processes),
            )
            kwargs["distributed_executor_backend"] = "external_launcher"
        if current_platform.is_cpu():
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(llm_kwargs or {})
        self.llm = LLM(**kwargs)

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        """Sample `n` continuations of every prompt (same contract as [`TransformersBackend.generate`])."""
        return _texts(self.generate_completions(prompts, n, sampling, seeds))

    def generate_completions(
        self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """Samples with token ids and finish reasons (same contract as
        [`TransformersBackend.generate_completions`]); stop strings go to `SamplingParams(stop=...)`."""
        from vllm import SamplingParams

        seeds = _check_request(prompts, n, seeds)
        # vLLM refuses n > 1 with greedy decoding: ask for one sample and repeat it.
        width = 1 if sampling.temperature == 0.0 else n
        params = [
            SamplingParams(
                n=width,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed,
                stop=list(sampling.stop) or None,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([_token_prompt(p) for p in prompts], params, use_tqdm=False)
        completions = [[_vllm_completion(c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]
        return [samples * (n // width) for samples in completions]

    def close(self) -> None:
        """Drop the engine (its memory is released when garbage collected)."""
        self.llm = None


def _vllm_completion(output) -> Completion:
    """A vLLM `CompletionOutput` as a [`Completion`]: `stop_reason` is the stop string, or `None` / a token id at EOS."""
    if output.finish_reason == "length":
        reason = "length"
    else:
        reason = "stop" if isinstance(output.stop_reason, str) else "eos"
    return Completion(output.text, tuple(output.token_ids), reason)


def _vllm_client_class():
    """TRL's `VLLMClient`: `trl.generation.vllm_client` (TRL >= 1.0), `trl.extras.vllm_client` before."""
    try:
        from trl.generation.vllm_client import VLLMClient
    except ImportError:
        from trl.extras.vllm_client import VLLMClient
    return VLLMClient


class VLLMServerBackend:
    """Rollouts from a running `trl vllm-serve` (or `VLLM_SERVER_DEV_MODE=1 vllm serve`) server via TRL's `VLLMClient`.

    One server can feed many labeling processes and nodes. Every prompt is one request with its own seed, sent
    concurrently so that the server batches them (and reuses cached prefixes when started with
    `--enable_prefix_caching`).

    Args:
        base_url (`str`, *optional*, defaults to `"http://127.0.0.1:8000"`):
            URL of the server.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer of the served model, to decode the returned token ids; loaded from the served model's name
            when `None`.
        connection_timeout (`float`, *optional*, defaults to `240.0`):
            Seconds to wait for the server's `/health` to answer.
        max_concurrent_requests (`int`, *optional*, defaults to `32`):
            Requests in flight at once.
    """

    name = "vllm_server"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        tokenizer=None,
        connection_timeout: float = 240.0,
        max_concurrent_requests: int = 32,
    ):
        self.client = _vllm_client_class()(base_url=base_url, connection_timeout=connection_timeout)
        if tokenizer is None:
            from ..models import load_tokenizer

            tokenizer = load_tokenizer(self.client.model)
        self.tokenizer = tokenizer
        self.max_concurrent_requests = max_concurrent_requests

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        """Sample `n` continuations of every prompt (same contract as [`TransformersBackend.generate`])."""
        return _texts(self.generate_completions(prompts, n, sampling, seeds))

    def _completion(self, token_ids: list[int], sampling: Sampling) -> Completion:
        """Finish reason from the returned tokens (the client does not pass the server's on)."""
        text, stopped = cut_at_stop(self.tokenizer.decode(token_ids, skip_special_tokens=True), sampling.stop)
        if stopped:
            reason = "stop"
        elif (token_ids and token_ids[-1] == self.tokenizer.eos_token_id) or len(token_ids) < sampling.max_tokens:
            reason = "eos"
        else:
            reason = "length"
        return Completion(text, tuple(token_ids), reason)

    def generate_completions(
        self, prompts: Sequence[Prompt], n: int, sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """Samples with token ids and finish reasons (same contract as
        [`TransformersBackend.generate_completions`]); stop strings are sent as the request's `stop`."""
        seeds = _check_request(prompts, n, seeds)

        width = 1 if sampling.temperature == 0.0 else n  # the server refuses n > 1 with greedy decoding
        extra = {"stop": list(sampling.stop)} if sampling.stop else {}

        def send(i: int) -> list[Completion]:
            result = self.client.generate(
                [prompts[i]],
                n=width,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                logprobs=None,
                generation_kwargs={"seed": seeds[i], **extra},
            )
            return [self._completion(ids, sampling) for ids in result["completion_ids"]] * (n // width)

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrent_requests, len(prompts)))) as pool:
            return list(pool.map(send, range(len(prompts))))

    def close(self) -> None:
        """Close the HTTP session."""
        self.client.session.close()


#: Backends by name, as chosen with `ERPRMLabelerConfig.backend`.
BACKENDS: dict[str, Callable] = {
    "transformers": TransformersBackend,
    "vllm": VLLMBackend,
    "vllm_server": VLLMServerBackend,
}
