"""The decoding loop of [`~trl_erprm.labeling.backends.TransformersBackend`]: prefill once, share, sample exactly.

A chunk is a list of units `(prompt ids, [(output index, sample seed), ...])`. Its prompts go through the model once
(left-padded), the KV cache is expanded to one row per sample (`Cache.batch_select_indices`: the prompt's keys and
values are copied, not recomputed), and every row then decodes one token per step, each from its own seeded stream of
uniforms ([`~trl_erprm.labeling.backends.sample_from_uniform`]). Rows that end (EOS, stop string) are dropped from the
batch and from the cache once they are an eighth of it, so short samples stop costing compute.

The cache is a `transformers.DynamicCache` whose full-attention layers are [`_PreallocatedLayer`]s: a decoding step
writes its token's keys and values into room reserved after the prompt, where `DynamicLayer` concatenates the whole
cache into a new tensor at every step (on a CPU that copy was 40% of decoding time). Other layer kinds (sliding
window, linear attention) are kept as the model's config makes them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .backends import FINISH_REASONS, Completion, Sampling, cut_at_stop, sample_from_uniform


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
    """

    def __init__(self, model, tokenizer, eos_token_ids: set[int], pad_token_id: int, preallocate: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids, self.pad_token_id, self.preallocate = eos_token_ids, pad_token_id, preallocate
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        parameters = inspect.signature(base.forward).parameters
        # The KV cache argument is `cache` in recent transformers, `past_key_values` before.
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.logits_to_keep = "logits_to_keep" in parameters

    def new_cache(self) -> DynamicCache:
        """An empty cache for the model: its config's layer kinds, full-attention layers preallocated."""
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
                    layers[i] = _PreallocatedLayer()
        return cache

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
        with torch.inference_mode():
            cache = self.new_cache()
            logits = self.forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
            if len(samples) > len(chunk):  # one row per sample: the prompt's keys and values are copied
                owners = torch.tensor([r for r, (_, unit) in enumerate(chunk) for _ in unit], device=device)
                cache.batch_select_indices(owners)
                logits, mask = logits[owners], mask[owners]
            tokens, lengths, reasons = self._sample(samples, logits, mask, cache, sampling)
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

    def _sample(self, samples, logits, mask, cache, sampling: Sampling):
        """Decode every row of the expanded cache until EOS, a stop string or `max_tokens`: per sample, its tokens
        (padded to `max_tokens`), its length and its finish code."""
        device, steps, total = logits.device, sampling.max_tokens, len(samples)
        # Cast on the CPU (float64 is not on every device); float32 is what `sample_from_uniform` compares in.
        draws = uniforms([seed for _, seed in samples], steps).to(torch.float32).to(device)
        tokens = torch.full((total, steps), self.pad_token_id, dtype=torch.long, device=device)
        lengths = torch.full((total,), steps, dtype=torch.long, device=device)
        reasons = torch.full((total,), _LENGTH, dtype=torch.long, device=device)
        eos = torch.tensor(sorted(self.eos_token_ids), dtype=torch.long, device=device)
        rows = torch.arange(total, device=device)  # the sample decoded in each row of the batch
        alive = torch.ones(total, dtype=torch.bool, device=device)
        position = mask.sum(-1)  # position id of each row's next token
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
