"""The decoding loop of [`~trl_erprm.labeling.backends.TransformersBackend`]: prefill once, share, sample exactly.

A chunk is a list of units `(prompt ids, [(output index, sample seed), ...])`. Its prompts go through the model once
(left-padded) and every sample then decodes one token per step from its own seeded stream of uniforms
([`~trl_erprm.labeling.backends.sample_from_uniform`]). Rows that end (EOS, stop string) are dropped from the batch
and from the cache once they are an eighth of it, so short samples stop costing compute.

How the samples of a prompt share it:

- **Shared-prefix attention** (the default where it applies): the prompt's keys and values are kept once per prompt
  ([`_SharedPrefixLayer`]) and each sample stores only its own tokens. A decoding step computes the attention over the
  prompt for all the samples of a prompt in one matrix product (the prompt's keys and values are read once, not once
  per sample), the attention over each sample's own tokens separately, and merges the two softmaxes exactly (by their
  log-sum-exp). It runs as a `transformers.AttentionInterface` function, switched on for the decoding steps only. It
  applies to models whose layers all use full attention and whose attention goes through `AttentionInterface` (Llama,
  Qwen2, Mistral without sliding window, ...); a self-check on a two-token example decides, once per model.
- **Copied prefix** (the fallback, and `share_prefix=False`): the cache is expanded to one row per sample
  (`Cache.batch_select_indices`: the prompt's keys and values are copied, not recomputed). Its full-attention layers are
  [`_PreallocatedLayer`]s, which write each step's keys and values into room reserved after the prompt where
  `DynamicLayer` concatenates the whole cache into a new tensor at every step (on a CPU that copy was 40% of decoding
  time).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Sequence
from contextvars import ContextVar

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .._compat import attention_implementation
from .backends import FINISH_REASONS, Completion, Sampling, cut_at_stop, sample_from_uniform


logger = logging.getLogger(__name__)


#: Codes of the finish reasons while decoding (indices into `FINISH_REASONS`).
_STOP, _EOS, _LENGTH = range(3)
#: Finished rows are dropped from the batch (and its KV cache) once they are this share of it.
COMPACT_SHARE = 1 / 8


def uniforms(seeds: Sequence[int], length: int) -> torch.Tensor:
    """`(len(seeds), length)` uniforms in `[0, 1)`, row `k` from its own stream seeded with `seeds[k]` (float64).

    Args:
        seeds (`list[int]`):
            One seed per sample.
        length (`int`):
            Uniforms per sample (one per generated token).

    Returns:
        `torch.Tensor`: The uniforms, shape `(len(seeds), length)`.
    """
    return torch.stack(
        [torch.rand(length, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    )


class _PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in a buffer with `room` free positions after them: appending a
    token writes in place. `keys` / `values` are views of the buffer, so everything that reads a `DynamicLayer` reads
    this one the same way; a layer whose tensors were replaced (`batch_select_indices` of the parent class) moves them
    to a new buffer on its next update."""

    def __init__(self):
        super().__init__()
        self.room = 0
        self._key_buffer = self._value_buffer = None

    def _in_buffer(self) -> bool:
        buffer = self._key_buffer
        return buffer is not None and self.keys.data_ptr() == buffer.data_ptr() and self.keys.shape[0] == len(buffer)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:  # the prompt: kept as computed
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        length = self.keys.shape[-2]
        end = length + key_states.shape[-2]
        if not self._in_buffer() or end > self._key_buffer.shape[-2]:
            size = max(end, length + self.room)
            self._key_buffer = self.keys.new_empty((*self.keys.shape[:2], size, self.keys.shape[-1]))
            self._value_buffer = self.values.new_empty((*self.values.shape[:2], size, self.values.shape[-1]))
            self._key_buffer[..., :length, :] = self.keys
            self._value_buffer[..., :length, :] = self.values
        self._key_buffer[..., length:end, :] = key_states
        self._value_buffer[..., length:end, :] = value_states
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self._in_buffer():
            return super().batch_select_indices(indices)
        length = self.keys.shape[-2]
        self._key_buffer, self._value_buffer = self._key_buffer[indices], self._value_buffer[indices]
        self.keys, self.values = self._key_buffer[..., :length, :], self._value_buffer[..., :length, :]


class _SharedPrefixLayer(_PreallocatedLayer):
    """A full-attention layer whose prompt keys and values are stored once per prompt: after the prefill, [`share`]
    maps the samples (rows) to their prompts and `keys` / `values` hold each row's own tokens only, which is what the
    model's mask and position bookkeeping then see. [`attend`] computes the attention of a decoding step."""

    def __init__(self):
        super().__init__()
        self.prefix_keys = self.prefix_values = self.prefix_valid = None
        self.owner = None  # (rows,) the prompt of each row, non-decreasing

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.owner is None:  # the prefill: these are the prompts
            self.prefix_keys, self.prefix_values = key_states, value_states
        return super().update(key_states, value_states, *args, **kwargs)

    def share(self, owner: torch.Tensor, prefix_valid: torch.Tensor) -> None:
        """Start decoding: row `r` continues prompt `owner[r]`; `prefix_valid` `(prompts, prompt_len)` marks the
        prompts' non-padding positions."""
        self.owner, self.prefix_valid = owner, prefix_valid.bool()
        rows, heads, dim = len(owner), self.prefix_keys.shape[1], self.prefix_keys.shape[-1]
        self.keys = self.prefix_keys.new_empty((rows, heads, 0, dim))
        self.values = self.prefix_values.new_empty((rows, heads, 0, self.prefix_values.shape[-1]))
        self._key_buffer = self._value_buffer = None
        self._group()

    def _group(self) -> None:
        """`(prompts, most rows of a prompt)` row indices of each prompt's rows, and which slots hold one."""
        counts = torch.bincount(self.owner, minlength=len(self.prefix_keys))
        slots = torch.arange(int(counts.max()), device=counts.device)
        starts = counts.cumsum(0) - counts
        self._slots_valid = slots[None, :] < counts[:, None]
        self._slots = (starts[:, None] + slots[None, :]).clamp(max=len(self.owner) - 1)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.owner is not None:
            prompts, owner = torch.unique_consecutive(self.owner[indices], return_inverse=True)
            if len(prompts) < len(self.prefix_keys):  # every sample of a prompt ended: drop the prompt too
                self.prefix_keys, self.prefix_values = self.prefix_keys[prompts], self.prefix_values[prompts]
                self.prefix_valid = self.prefix_valid[prompts]
            self.owner = owner
        super().batch_select_indices(indices)
        if self.owner is not None:
            self._group()

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention output `(rows, 1, query_heads, head_dim)` of one decoding step: softmax over the prompt (read
        once per prompt) and the row's own tokens (`keys` / `values`, `(rows, kv_heads, own, head_dim)`), merged by
        their log-sum-exp. Scores and softmax in float32 at least, as `eager` attention computes them."""
        rows, query_heads, length, dim = query.shape
        if length != 1:
            raise RuntimeError("shared-prefix attention decodes one token per step")
        kv_heads = keys.shape[1]
        group = query_heads // kv_heads  # query heads per key/value head (grouped-query attention)
        dtype = torch.promote_types(query.dtype, torch.float32)
        q = query.reshape(rows, kv_heads, group, dim)
        prompts, width = self._slots.shape
        # The prompt part: the queries of a prompt's rows stacked, one product with the prompt's keys.
        stacked = q[self._slots.reshape(-1)].reshape(prompts, width, kv_heads, group, dim)
        stacked = stacked.permute(0, 2, 1, 3, 4).reshape(prompts, kv_heads, width * group, dim)
        scores = torch.matmul(stacked, self.prefix_keys.transpose(-1, -2)).to(dtype) * scaling
        scores = scores.masked_fill(~self.prefix_valid[:, None, None, :], float("-inf"))
        prefix_max = scores.amax(-1, keepdim=True)
        weights = torch.exp(scores - prefix_max)
        prefix_sum = weights.sum(-1, keepdim=True)
        prefix_out = torch.matmul(weights.to(self.prefix_values.dtype), self.prefix_values).to(dtype)

        def per_row(
            x: torch.Tensor,
        ) -> torch.Tensor:  # (prompts, kv_heads, width * group, d) -> (rows, kv_heads, group, d)
            x = x.reshape(prompts, kv_heads, width, group, x.shape[-1]).permute(0, 2, 1, 3, 4)
            return x[self._slots_valid]

        prefix_max, prefix_sum, prefix_out = per_row(prefix_max), per_row(prefix_sum), per_row(prefix_out)
        # The row's own tokens.
        scores = torch.matmul(q, keys.transpose(-1, -2)).to(dtype) * scaling
        own_max = scores.amax(-1, keepdim=True)
        weights = torch.exp(scores - own_max)
        own_sum = weights.sum(-1, keepdim=True)
        own_out = torch.matmul(weights.to(values.dtype), values).to(dtype)
        top = torch.maximum(prefix_max, own_max)
        a, b = torch.exp(prefix_max - top), torch.exp(own_max - top)
        out = (a * prefix_out + b * own_out) / (a * prefix_sum + b * own_sum)
        return out.reshape(rows, 1, query_heads, -1).to(query.dtype)


#: Name of the shared-prefix attention in `transformers.AttentionInterface`, and the cache it reads.
SHARED_ATTENTION = "trl_erprm_shared_prefix"
_ACTIVE_CACHE: ContextVar = ContextVar("trl_erprm_shared_prefix_cache", default=None)


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """`AttentionInterface` function of the decoding steps: the layer's [`_SharedPrefixLayer.attend`]."""
    cache = _ACTIVE_CACHE.get()
    layer = cache.layers[module.layer_idx] if cache is not None else None
    if not isinstance(layer, _SharedPrefixLayer) or layer.owner is None:
        raise RuntimeError("shared-prefix attention runs only inside the labeler's decoding steps")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    return layer.attend(query, key, value, scaling), None


def _register_shared_attention() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return False
    AttentionInterface.register(SHARED_ATTENTION, _shared_prefix_attention)
    # The mask is not read (a row's own tokens are all valid; the prompt padding is the layer's), any valid one does.
    AttentionMaskInterface.register(SHARED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return True


_SHARED_ATTENTION_REGISTERED = _register_shared_attention()


class ChunkDecoder:
    """Runs chunks of units on one causal LM (see the module docstring).

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The causal LM, in eval mode.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer (decodes the samples).
        eos_token_ids (`set[int]`):
            Tokens that end a sample.
        pad_token_id (`int`):
            Left padding of the prompts.
        preallocate (`bool`, *optional*, defaults to `True`):
            Use [`_PreallocatedLayer`]s for full-attention layers (`False`: the plain `DynamicCache`).
        shared_attention (`bool`, *optional*, defaults to `True`):
            Decode the samples of a prompt with shared-prefix attention where the model allows it (see the module
            docstring); `False` always copies the prompt's cache to its samples.
    """

    def __init__(
        self,
        model,
        tokenizer,
        eos_token_ids: set[int],
        pad_token_id: int,
        preallocate: bool = True,
        shared_attention: bool = True,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids, self.pad_token_id, self.preallocate = eos_token_ids, pad_token_id, preallocate
        self._shared: bool | None = None if shared_attention and preallocate else False  # None: not checked yet
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        parameters = inspect.signature(base.forward).parameters
        # The KV cache argument is `cache` in recent transformers, `past_key_values` before.
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.logits_to_keep = "logits_to_keep" in parameters

    def new_cache(self, shared: bool = False) -> DynamicCache:
        """An empty cache for the model: its config's layer kinds, full-attention layers preallocated (or
        [`_SharedPrefixLayer`]s with `shared=True`)."""
        config = self.model.config
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        try:
            cache = DynamicCache(config=config)
        except TypeError:  # a transformers without layered caches: layers are made on first use
            return DynamicCache()
        layers = getattr(cache, "layers", None)
        if self.preallocate and isinstance(layers, list):
            for i, layer in enumerate(layers):
                if type(layer) is DynamicLayer:
                    layers[i] = _SharedPrefixLayer() if shared else _PreallocatedLayer()
        return cache

    def shares_attention(self) -> bool:
        """Whether decoding uses shared-prefix attention for this model: checked once, on a two-prompt example whose
        first decoding step must give the logits of the copied-prefix path (a model whose attention does not go
        through `AttentionInterface`, or that has other kinds of layers, fails it and keeps the copied prefix)."""
        if self._shared is None:
            self._shared = False
            if _SHARED_ATTENTION_REGISTERED and hasattr(self.model, "set_attn_implementation"):
                try:
                    self._shared = self._check_shared_attention()
                except Exception as error:  # any failure means: not for this model
                    logger.debug(f"Shared-prefix attention is off for this model ({error!r}).")
            if not self._shared:
                logger.info("Decoding copies each prompt's KV cache to its samples (no shared-prefix attention here).")
        return self._shared

    def _check_shared_attention(self) -> bool:
        vocab = self.model.get_input_embeddings().num_embeddings
        prompts = [[1 % vocab, 2 % vocab, 3 % vocab], [4 % vocab, 5 % vocab]]
        device = self.model.device
        input_ids = torch.tensor([prompts[0], [self.pad_token_id, *prompts[1]]], device=device)
        mask = torch.tensor([[1, 1, 1], [0, 1, 1]], device=device)
        owner = torch.tensor([0, 0, 1, 1], device=device)
        step = torch.tensor([[6 % vocab], [7 % vocab], [8 % vocab], [9 % vocab]], device=device)
        position = mask.sum(-1)[owner][:, None]
        with torch.inference_mode():
            shared = self.new_cache(shared=True)
            copied = self.new_cache()
            if not all(isinstance(layer, _SharedPrefixLayer) for layer in shared.layers):
                return False  # sliding-window or linear-attention layers: not handled here
            for cache in (shared, copied):
                self.forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
            copied.batch_select_indices(owner)
            for layer in shared.layers:
                layer.share(owner, mask)
            expected = self.forward(step, torch.cat([mask[owner], mask.new_ones((4, 1))], 1), position, copied)
            with self._shared_attention(shared):
                got = self.forward(step, mask.new_ones((4, 1)), position, shared)
        # Rounding of another summation order: ~1e-6 of the logits' norm in float32, ~1e-2 in half precision.
        tolerance = 5e-2 if self.model.dtype in (torch.float16, torch.bfloat16) else 1e-3
        return bool((got - expected).norm() <= tolerance * expected.norm())

    @contextlib.contextmanager
    def _shared_attention(self, cache):
        """Decode with shared-prefix attention: the model's attention implementation is switched for the duration."""
        original = attention_implementation(self.model)
        token = _ACTIVE_CACHE.set(cache)
        self.model.set_attn_implementation(SHARED_ATTENTION)
        try:
            yield
        finally:
            self.model.set_attn_implementation(original)
            _ACTIVE_CACHE.reset(token)

    def _reserve(self, cache, room: int) -> None:
        for layer in getattr(cache, "layers", None) or []:
            if isinstance(layer, _PreallocatedLayer):
                layer.room = room

    def forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """Next-token logits `(batch, vocab)` in float32, as `generate` hands them to logits processors."""
        kwargs = {self.cache_argument: cache}
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **kwargs
        )
        return out.logits[:, -1].to(dtype=torch.float32, copy=True)

    def run(self, chunk: list, sampling: Sampling) -> tuple[list[tuple[int, Completion]], int]:
        """Decode one chunk.

        Args:
            chunk (`list[tuple[list[int], list[tuple[int, int]]]]`):
                Units `(prompt ids, [(output index, sample seed), ...])`; each prompt is prefilled once.
            sampling ([`~trl_erprm.labeling.backends.Sampling`]):
                Temperature, top-p, maximum new tokens and stop strings.

        Returns:
            `tuple[list[tuple[int, Completion]], int]`: `(output index, completion)` per sample, and the number of
            prompt tokens prefilled (padding excluded).
        """
        device, pad = self.model.device, self.pad_token_id
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (ids, _) in enumerate(chunk):
            input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[r, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        samples = [sample for _, unit in chunk for sample in unit]
        owners = torch.tensor([r for r, (_, unit) in enumerate(chunk) for _ in unit], device=device)
        shared = len(samples) > len(chunk) and self.shares_attention()
        with torch.inference_mode():
            cache = self.new_cache(shared=shared)
            logits = self.forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
            position = mask.sum(-1)[owners]  # position id of each sample's next token
            if shared:  # the prompt's keys and values stay one copy; the mask covers the samples' own tokens
                for layer in cache.layers:
                    layer.share(owners, mask)
                logits, mask = logits[owners], mask.new_zeros((len(samples), 0))
            elif len(samples) > len(chunk):  # one row per sample: the prompt's keys and values are copied
                cache.batch_select_indices(owners)
                logits, mask = logits[owners], mask[owners]
            with self._shared_attention(cache) if shared else contextlib.nullcontext():
                tokens, lengths, reasons = self._sample(samples, logits, mask, position, cache, sampling)
        out = []
        for (index, _), row, length, reason in zip(samples, tokens, lengths, reasons):
            ids = row[:length]
            if reason == _EOS:
                text = self.tokenizer.decode(ids[:-1], skip_special_tokens=True)
            else:
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                text = cut_at_stop(text, sampling.stop)[0] if reason == _STOP else text
            out.append((index, Completion(text, tuple(ids), FINISH_REASONS[reason])))
        return out, sum(len(ids) for ids, _ in chunk)

    def _sample(self, samples, logits, mask, position, cache, sampling: Sampling):
        """Decode every row until EOS, a stop string or `max_tokens` (`mask`: the attention mask of the cached tokens,
        `position`: the position id of each row's next token): per sample, its tokens (padded to `max_tokens`), its
        length and its finish code."""
        device, steps, total = logits.device, sampling.max_tokens, len(samples)
        # Cast on the CPU (float64 is not on every device); float32 is what `sample_from_uniform` compares in.
        draws = uniforms([seed for _, seed in samples], steps).to(torch.float32).to(device)
        tokens = torch.full((total, steps), self.pad_token_id, dtype=torch.long, device=device)
        lengths = torch.full((total,), steps, dtype=torch.long, device=device)
        reasons = torch.full((total,), _LENGTH, dtype=torch.long, device=device)
        eos = torch.tensor(sorted(self.eos_token_ids), dtype=torch.long, device=device)
        rows = torch.arange(total, device=device)  # the sample decoded in each row of the batch
        alive = torch.ones(total, dtype=torch.bool, device=device)
        window = max((len(s.encode()) for s in sampling.stop), default=0) + 1
        self._reserve(cache, steps)
        for t in range(steps):
            step = sample_from_uniform(logits, draws[rows, t], sampling.temperature, sampling.top_p)
            step = torch.where(alive, step, self.pad_token_id)
            tokens[rows, t] = step
            ended = alive & torch.isin(step, eos)
            lengths[rows[ended]] = t + 1
            reasons[rows[ended]] = _EOS
            if sampling.stop:
                stopped = self._stopped(tokens, rows, alive & ~ended, t + 1 - window, t + 1, sampling.stop)
                lengths[rows[stopped]] = t + 1
                reasons[rows[stopped]] = _STOP
                ended |= stopped
            alive &= ~ended
            remaining = int(alive.sum())
            if remaining == 0 or t == steps - 1:
                break
            if len(rows) - remaining >= COMPACT_SHARE * len(rows):
                keep = alive.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, mask, position, step, alive = rows[keep], mask[keep], position[keep], step[keep], alive[keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            logits = self.forward(step[:, None], mask, position[:, None], cache)
            position = position + 1
        return tokens.tolist(), lengths.tolist(), reasons.tolist()

    def _stopped(self, tokens, rows, check, start: int, end: int, stop: Sequence[str]) -> torch.Tensor:
        """The rows (a boolean mask over the batch) whose last tokens now hold a stop string. Only a window long
        enough for any stop string is decoded, so the check costs the same at every position."""
        found = torch.zeros_like(check)
        candidates = check.nonzero().squeeze(1)
        if len(candidates):
            tails = tokens[rows[candidates], max(0, start) : end].tolist()
            hits = [any(s in self.tokenizer.decode(tail, skip_special_tokens=True) for s in stop) for tail in tails]
            found[candidates] = torch.tensor(hits, dtype=torch.bool, device=check.device)
        return found
