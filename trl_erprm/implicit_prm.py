"""Implicit process reward model (Yuan et al., "Free Process Rewards without Process Labels", arXiv:2412.01981).

A causal LM `pi_theta` trained against a reference `pi_ref` on outcome labels only gives a process reward for free:
every completion token `y_t` gets `r_t = beta * (log pi_theta(y_t|y<t) - log pi_ref(y_t|y<t))`, the running sum
`q_t = sum_{i<=t} r_i` is a Q value, and step `k` is rewarded `q(end of step k) - q(end of step k-1)`.

[`ImplicitPRM`] wraps such a model as a plain callable that [`~trl.GRPOTrainer`] accepts as a reward function, and
exposes the per-token and per-step values for PRIME and Best-of-N evaluation. All the math lives in
[`trl_erprm.functional`]; this module only tokenizes, batches and runs the models.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.outcome import completion_text, encode_prompt, truncate_to_max_length
from .functional import (
    STEP_AGGREGATIONS,
    aggregate_steps,
    gather_step_values,
    implicit_q_values,
    implicit_step_rewards,
    implicit_token_rewards,
    selective_log_softmax,
)
from .models import UNKNOWN_REFERENCE, load_model, load_tokenizer
from .steps import StepFormat, step_end_token_indices


__all__ = ["ImplicitPRM", "completion_logps"]

#: Warning of an implicit PRM that scores exactly like its reference: every reward is 0 (issue 16: nothing in silence).
IDENTICAL_REFERENCE_WARNING = (
    "ImplicitPRM: the PRM and {reference} give identical log-probabilities (the same weights: an untrained PRM or "
    "adapter, or the reference itself), so every reward is exactly 0. Train the PRM first (ImplicitPRMTrainer) and "
    "load the trained folder, or pass ref_model=None for a reference-free PRM (beta * log pi_prm)."
)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _name_or_path(model: torch.nn.Module) -> str | None:
    if _is_peft_model(model):
        model = model.get_base_model()
    config = getattr(model, "config", None)
    return getattr(config, "name_or_path", None) or None


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Put `model` in eval mode (no dropout, no gradient checkpointing) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def completion_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int
) -> torch.Tensor:
    """Log-probabilities of the last `logits_to_keep` tokens of `input_ids` under `model` (one forward pass).

    Position ids are derived from the attention mask, so left-padded prompts score exactly like unpadded ones.

    Args:
        model (`torch.nn.Module`):
            A causal LM (possibly a `PeftModel` or a distributed wrapper) accepting `logits_to_keep`.
        input_ids (`torch.Tensor`):
            Token ids of shape `(B, L)`: left-padded prompt then right-padded completion.
        attention_mask (`torch.Tensor`):
            Shape `(B, L)`, 1 on real tokens.
        logits_to_keep (`int`):
            Number `T` of trailing positions to score (the padded completion length), `1 <= T < L`.

    Returns:
        `torch.Tensor`: Log-probabilities of shape `(B, T)`, float32; the graph is kept if gradients are enabled.
    """
    if not 1 <= logits_to_keep < input_ids.shape[1]:
        raise ValueError(
            f"logits_to_keep must be in [1, {input_ids.shape[1] - 1}] for sequences of length {input_ids.shape[1]}, "
            f"got {logits_to_keep}."
        )
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=logits_to_keep + 1,
        use_cache=False,
    )
    logits = outputs.logits[:, -(logits_to_keep + 1) : -1, :]  # position t predicts token t + 1
    return selective_log_softmax(logits, input_ids[:, -logits_to_keep:])


@dataclass
class _Encoded:
    prompt_ids: list[int]
    completion_ids: list[int]
    step_ends: list[int]  # token index (within the completion) of the last token of each step


# ---------------------------------------------------------------------------------------------------------------------
# ImplicitPRM
# ---------------------------------------------------------------------------------------------------------------------


class ImplicitPRM:
    r"""An implicit PRM as a reward function for [`~trl.GRPOTrainer`], and a step scorer.

    Per completion token `r_t = beta * (log pi_theta(y_t|y<t) - log pi_ref(y_t|y<t))` (or `beta * log pi_theta` with
    no reference), `q_t = sum_{i<=t} r_i`; step `k` ends at the token holding the last character of its separator and
    is rewarded `q(end_k) - q(end_{k-1})`; a completion is scored by aggregating `q` at the step ends (`"min"`, as the
    reference implementation does for Best-of-N; `"last"` is the outcome reward `beta * log pi_theta(y)/pi_ref(y)`).

    This is a plain callable object, not an `nn.Module`: GRPOTrainer would treat a module as a sequence classifier.

    Steps are those of [`~trl_erprm.steps.StepFormat`]`(step_separator)`: a completion text is cut at the separator
    ([`~trl_erprm.steps.StepFormat.char_ends`]); [`score_steps`] also takes completions already split into steps.

    Defined behaviour on unusual input:
        - A completion without separator is one step.
        - An empty completion has no step and scores `0.0` (the empty sum of token rewards), never NaN.
        - A prompt + completion longer than `max_length` is truncated with a warning: the prompt is cut from the left
          first, then the completion at its end (steps beyond the cut are dropped).
        - Completions are re-tokenized from their text with the PRM's tokenizer (so the PRM may use another tokenizer
          than the policy); `completion_ids` from GRPOTrainer are ignored and no EOS token is appended.

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or `peft.PeftModel`):
            The PRM causal LM `pi_theta`, or its path / id (a folder with `adapter_config.json` loads as a PEFT model).
        ref_model (`str`, [`~transformers.PreTrainedModel`] or `None`, *optional*, defaults to `"adapter"`):
            The reference `pi_ref`: `"adapter"` uses `model` with its PEFT adapter disabled (one model in memory;
            `model` must be a `PeftModel`, e.g. the folder of a PRM trained with a `peft_config`), a path / id or a
            model gives a separate reference, `None` the reference-free variant.
            [`~trl_erprm.models.UNKNOWN_REFERENCE`] (recorded for a reference built in memory) raises a `ValueError`.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            A fast tokenizer of the PRM (needs offset mappings). Loaded from the model's path when `None`.
        beta (`float`, *optional*, defaults to `0.05`):
            Scale of the implicit reward (the value the PRM was trained with).
        step_separator (`str` or `None`, *optional*, defaults to `"\\n\\n"`):
            Text that ends a step; `None` makes each completion one step.
        aggregation (`str`, *optional*, defaults to `"min"`):
            How `q` at the step ends becomes one score, one of [`~trl_erprm.functional.STEP_AGGREGATIONS`] (`"min"`,
            `"max"`, `"sum"`, `"mean"`, `"prod"`, `"last"`).
        batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward pass (bounds memory).
        max_length (`int`, *optional*):
            Maximum prompt + completion tokens. Defaults to the model's `max_position_embeddings` (or the tokenizer's
            `model_max_length` when smaller).
        model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `from_pretrained` when `model` or `ref_model` is a path (e.g. `{"dtype":
            "bfloat16"}`); `trust_remote_code` is off unless set here.
        device (`str`, `torch.device` or `None`, *optional*, defaults to `None`):
            Where the PRM and its reference run (`"cpu"`, `"cuda"`, `"cuda:1"`...). A model given as a path is loaded
            straight onto it (`device_map={"": device}`, no copy through the CPU), a model object is moved there.
            `None`: a path loads on the CPU (or as `model_init_kwargs["device_map"]` says) and a model object stays
            where it is; a separate reference follows the PRM's device.

    Attributes:
        model: The PRM causal LM (possibly a `PeftModel`).
        ref_model: The separate reference model, or `None` (adapter-disabled or reference-free).
        tokenizer: The tokenizer.
        beta, step_separator, aggregation: As above.
        step_format ([`~trl_erprm.steps.StepFormat`] or `None`): The step format of `step_separator`.
        has_reference (`bool`): Whether rewards are log-ratios against a reference (separate or adapter-disabled).
        reference_is_adapter (`bool`): Whether the reference is `model` with its adapter disabled.

    Example:
        ```python
        prm = ImplicitPRM("path/to/prm", ref_model="path/to/sft", beta=0.05)
        trainer = GRPOTrainer(model=..., reward_funcs=[prm, accuracy_reward], ...)
        prm.score_steps(["1 + 1?"], ["1 + 1 = 2.\\n\\n\\\\boxed{2}"])
        ```
    """

    __name__ = "implicit_prm"

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: str | PreTrainedModel | None = "adapter",
        tokenizer: PreTrainedTokenizerBase | None = None,
        beta: float = 0.05,
        step_separator: str | None = "\n\n",
        aggregation: str = "min",
        batch_size: int = 8,
        max_length: int | None = None,
        model_init_kwargs: dict | None = None,
        device: str | torch.device | None = None,
    ):
        if aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"Unknown aggregation {aggregation!r}; choose one of {sorted(STEP_AGGREGATIONS)}.")
        if step_separator is not None and not step_separator:
            raise ValueError("step_separator must be a non-empty string, or None for one step per completion.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}.")

        model_init_kwargs = dict(model_init_kwargs or {})
        if device is not None:
            if model_init_kwargs.get("device_map") is not None:
                raise ValueError(
                    f"Pass either device={device!r} or model_init_kwargs['device_map'], not both: device loads the "
                    "PRM and its reference on one device, device_map spreads them as it says."
                )
            model_init_kwargs["device_map"] = {"": torch.device(device)}
        model_path = None
        if isinstance(model, (str, os.PathLike)):
            model_path = str(model)
            model = load_model(model_path, "causal_lm", **model_init_kwargs)
            model.eval()
        elif device is not None:
            model.to(device)
        self.model = model

        if isinstance(ref_model, str) and ref_model == UNKNOWN_REFERENCE:
            raise ValueError(
                f"ref_model is {UNKNOWN_REFERENCE!r}: the PRM's prm_config.json says it was trained against a reference "
                "model built in memory, with no Hub id or folder to load it from. Pass ref_model=<the reference's "
                "folder or Hub id> (load_scorer(..., ref_model=...), --ref_model on the command line)."
            )
        self.reference_is_adapter = isinstance(ref_model, str) and ref_model == "adapter"
        if self.reference_is_adapter:
            if not _is_peft_model(model):
                raise ValueError(
                    "ref_model='adapter' needs `model` to be a peft.PeftModel (the reference is the same model with its "
                    "adapter disabled). Pass the reference model or its path as `ref_model`, or `ref_model=None` for "
                    "the reference-free variant."
                )
            self.ref_model = None
        elif isinstance(ref_model, (str, os.PathLike)):
            if device is None and not model_init_kwargs.get("device_map"):
                model_init_kwargs["device_map"] = {"": _model_device(model)}  # straight onto the PRM's device
            self.ref_model = load_model(ref_model, "causal_lm", **model_init_kwargs)
            self.ref_model.eval().requires_grad_(False)
        else:
            self.ref_model = ref_model
            if ref_model is not None and device is not None:
                ref_model.to(device)
        self.has_reference = self.reference_is_adapter or self.ref_model is not None

        if tokenizer is None:
            source = model_path
            if source is None or (
                os.path.isdir(source) and not os.path.isfile(os.path.join(source, "tokenizer_config.json"))
            ):
                source = _name_or_path(model)  # e.g. an adapter folder saved without its tokenizer: the base's
            if source is None:
                raise ValueError("Pass `tokenizer`: it cannot be found from the model (no `config.name_or_path`).")
            tokenizer = load_tokenizer(source, trust_remote_code=model_init_kwargs.get("trust_remote_code", False))
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "ImplicitPRM needs a fast tokenizer (it maps step separators to tokens with offset mappings). Load it "
                "with `AutoTokenizer.from_pretrained(..., use_fast=True)`."
            )
        self.tokenizer = tokenizer
        self.beta = float(beta)
        self.step_separator = step_separator
        self.step_format = StepFormat(step_separator) if step_separator is not None else None
        self.aggregation = aggregation
        self.batch_size = int(batch_size)
        self.max_length = max_length if max_length is not None else self._default_max_length()
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}.")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = 0 if pad is None else int(pad)
        self._reference_checked = False  # see token_rewards_from_ids: a reference identical to the PRM warns once

    def _reference_name(self) -> str:
        return "the PRM with its adapter disabled" if self.reference_is_adapter else "the reference model"

    def __repr__(self) -> str:
        reference = "adapter-disabled" if self.reference_is_adapter else ("separate" if self.ref_model else "none")
        return (
            f"ImplicitPRM(model={_name_or_path(self.model)!r}, reference={reference}, beta={self.beta}, "
            f"step_separator={self.step_separator!r}, aggregation={self.aggregation!r}, batch_size={self.batch_size}, "
            f"max_length={self.max_length})"
        )

    def _default_max_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        limits = [getattr(config, "max_position_embeddings", None), getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
        return min(limits) if limits else None

    # ----------------------------------------------------------------------------------------------------------------
    # Tensor API (GRPO layout: left-padded prompt, right-padded completion)
    # ----------------------------------------------------------------------------------------------------------------

    def compute_logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        reference: bool = False,
        grad: bool = False,
    ) -> torch.Tensor | None:
        """Log-probabilities of the last `logits_to_keep` tokens under the PRM or its reference.

        Runs in chunks of `batch_size` rows. With `grad=False` it runs under `torch.no_grad()` with the model in eval
        mode (restored afterwards); with `grad=True` the graph is kept and the model's mode is left alone (PRIME's
        online PRM update).

        Args:
            input_ids (`torch.Tensor`):
                Shape `(B, L)`: left-padded prompts followed by right-padded completions.
            attention_mask (`torch.Tensor`):
                Shape `(B, L)`.
            logits_to_keep (`int`):
                Completion length `T` (the trailing positions to score).
            reference (`bool`, *optional*, defaults to `False`):
                Score under the reference (the separate reference model, or the PRM with its adapter disabled).
            grad (`bool`, *optional*, defaults to `False`):
                Keep the autograd graph (only meaningful for `reference=False`).

        Returns:
            `torch.Tensor` or `None`: Log-probabilities of shape `(B, T)`, float32, on `input_ids.device`; `None` when
            `reference=True` and there is no reference.
        """
        if reference and not self.has_reference:
            return None
        model = self.ref_model if (reference and not self.reference_is_adapter) else self.model
        device = _model_device(model)
        adapter_off = (
            model.disable_adapter() if (reference and self.reference_is_adapter) else contextlib.nullcontext()
        )
        grad_context = contextlib.nullcontext() if (grad and not reference) else torch.no_grad()
        mode_context = contextlib.nullcontext() if (grad and not reference) else _eval_mode(model)
        chunks = []
        with grad_context, mode_context, adapter_off:
            for start in range(0, input_ids.shape[0], self.batch_size):
                ids = input_ids[start : start + self.batch_size].to(device)
                mask = attention_mask[start : start + self.batch_size].to(device)
                chunks.append(completion_logps(model, ids, mask, logits_to_keep))
        return torch.cat(chunks).to(input_ids.device)

    def token_rewards_from_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        completion_mask: torch.Tensor,
        ref_logps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token implicit rewards `beta * (log pi_theta - log pi_ref)` of the completion tokens, without gradient.

        Args:
            input_ids (`torch.Tensor`):
                Shape `(B, L)`: left-padded prompts followed by right-padded completions.
            attention_mask (`torch.Tensor`):
                Shape `(B, L)`.
            logits_to_keep (`int`):
                Completion length `T`.
            completion_mask (`torch.Tensor`):
                Shape `(B, T)`; rewards are 0 where it is 0.
            ref_logps (`torch.Tensor`, *optional*):
                Reference log-probabilities of shape `(B, T)` computed elsewhere (e.g. GRPO's `ref_per_token_logps` or
                the old policy's log-probs). When `None`, the PRM's own reference is used (or none).

        Returns:
            `torch.Tensor`: Rewards of shape `(B, T)`, float32, on `input_ids.device`.
        """
        logps = self.compute_logps(input_ids, attention_mask, logits_to_keep)
        own_reference = ref_logps is None
        if own_reference:
            ref_logps = self.compute_logps(input_ids, attention_mask, logits_to_keep, reference=True)
        else:
            ref_logps = ref_logps.detach().to(device=logps.device, dtype=logps.dtype)
        rewards = implicit_token_rewards(logps, ref_logps, self.beta, completion_mask.to(logps.device))
        if own_reference and self.has_reference and not self._reference_checked and completion_mask.any():
            self._reference_checked = True  # the first scored tokens decide: warn once, check once
            scored = completion_mask.bool().to(logps.device)
            if torch.equal(logps[scored], ref_logps[scored]):
                warnings.warn(IDENTICAL_REFERENCE_WARNING.format(reference=self._reference_name()), stacklevel=2)
        return rewards

    # ----------------------------------------------------------------------------------------------------------------
    # Text API
    # ----------------------------------------------------------------------------------------------------------------

    def _completion_steps(self, completion, index: int) -> tuple[str, list[int]]:
        """The text of a completion and the last character of each of its steps."""
        if isinstance(completion, (list, tuple)) and completion and all(isinstance(s, str) for s in completion):
            if self.step_format is None:
                raise ValueError(
                    f"Row {index}: the completion is a list of steps, which ImplicitPRM joins with step_separator; "
                    "step_separator is None. Pass the completion as one string, or set step_separator."
                )
            return self.step_format.join_with_ends(completion)
        text = completion_text(completion, index)
        if self.step_format is None:
            return text, [len(text) - 1] if text else []
        return text, self.step_format.char_ends(text)

    def _encode(self, prompts: Sequence, completions: Sequence) -> list[_Encoded]:
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions; pass one prompt each.")
        encoded, truncated = [], 0
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            prompt_ids = encode_prompt(self.tokenizer, prompt, i)
            text, char_ends = self._completion_steps(completion, i)
            tokens = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            completion_ids = list(tokens["input_ids"])
            step_ends = step_end_token_indices(tokens["offset_mapping"], char_ends)
            prompt_ids, kept_ids, cut = truncate_to_max_length(prompt_ids, completion_ids, self.max_length)
            if len(kept_ids) < len(completion_ids):
                step_ends = [e for e in step_ends if e < len(kept_ids) - 1] + [len(kept_ids) - 1]
            truncated += cut
            encoded.append(_Encoded(prompt_ids, kept_ids, step_ends))
        if truncated:
            warnings.warn(
                f"ImplicitPRM: {truncated} of {len(encoded)} prompt + completion pairs exceed max_length="
                f"{self.max_length} tokens and were truncated (prompt cut from the left first, then the completion at "
                "its end). Raise `max_length` if the model supports longer inputs.",
                stacklevel=3,
            )
        return encoded

    def _score_encoded(self, encoded: list[_Encoded], progress: bool = False) -> list[dict[str, torch.Tensor]]:
        """Token rewards, q at step ends, step rewards and score of each encoded pair, in input order."""
        results: list[dict[str, torch.Tensor] | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt_ids) + len(encoded[i].completion_ids))
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="ImplicitPRM scoring", disable=not progress):
            rows = [encoded[i] for i in order[start : start + self.batch_size]]
            for i, result in zip(order[start : start + self.batch_size], self._score_batch(rows)):
                results[i] = result
        return results

    def _score_batch(self, rows: list[_Encoded]) -> list[dict[str, torch.Tensor]]:
        prompt_len = max(len(r.prompt_ids) for r in rows)
        completion_len = max(len(r.completion_ids) for r in rows)
        num_steps = max(len(r.step_ends) for r in rows)
        B = len(rows)
        input_ids = torch.full((B, prompt_len + completion_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        completion_mask = torch.zeros(B, completion_len, dtype=torch.long)
        step_ends = torch.zeros(B, max(num_steps, 1), dtype=torch.long)
        step_mask = torch.zeros(B, max(num_steps, 1), dtype=torch.bool)
        for b, r in enumerate(rows):
            lp, lc = len(r.prompt_ids), len(r.completion_ids)
            input_ids[b, prompt_len - lp : prompt_len] = torch.tensor(r.prompt_ids)
            input_ids[b, prompt_len : prompt_len + lc] = torch.tensor(r.completion_ids, dtype=torch.long)
            attention_mask[b, prompt_len - lp : prompt_len + lc] = 1
            completion_mask[b, :lc] = 1
            step_ends[b, : len(r.step_ends)] = torch.tensor(r.step_ends, dtype=torch.long)
            step_mask[b, : len(r.step_ends)] = True
        if completion_len == 0:  # only empty completions: no forward pass, no step
            token_rewards = torch.zeros(B, 0)
            q_at_ends = torch.zeros(B, step_mask.shape[1])
        else:
            token_rewards = self.token_rewards_from_ids(input_ids, attention_mask, completion_len, completion_mask)
            token_rewards = token_rewards.cpu()
            q = implicit_q_values(token_rewards, completion_mask)
            q_at_ends = gather_step_values(q, step_ends, step_mask)
        step_rewards = implicit_step_rewards(q_at_ends, step_mask)
        scores = aggregate_steps(q_at_ends, step_mask, self.aggregation)
        scores = torch.where(step_mask.any(-1), scores, 0.0)  # empty completion: the empty sum, 0
        if not torch.isfinite(scores).all():
            raise FloatingPointError(
                f"ImplicitPRM produced {int((~torch.isfinite(scores)).sum())} non-finite score(s) in a batch: the model "
                "returned NaN/inf log-probabilities (check its dtype, e.g. load it in float32 or bfloat16, not float16)."
            )
        out = []
        for b, r in enumerate(rows):
            n, lc = len(r.step_ends), len(r.completion_ids)
            out.append(
                {
                    "token_rewards": token_rewards[b, :lc],
                    "q_at_step_ends": q_at_ends[b, :n],
                    "step_rewards": step_rewards[b, :n],
                    "score": scores[b],
                    "step_end_tokens": torch.tensor(r.step_ends, dtype=torch.long),
                }
            )
        return out

    def __call__(self, prompts: Sequence, completions: Sequence, completion_ids=None, **kwargs) -> list[float]:
        """Score completions as a [`~trl.GRPOTrainer`] reward function.

        Args:
            prompts (`list[str]` or `list[list[dict]]`):
                Standard prompts or conversational ones (lists of messages), one per completion.
            completions (`list[str]` or `list[list[dict]]`):
                Standard completions or conversational ones (a list holding one assistant message).
            completion_ids (`list[list[int]]`, *optional*):
                Ignored: completions are re-tokenized from their text with the PRM's tokenizer.
            **kwargs:
                Dataset columns and trainer extras passed by GRPOTrainer; ignored.

        Returns:
            `list[float]`: One score per completion: `q` at the step ends aggregated by `aggregation`; `0.0` for an
            empty completion.
        """
        results = self._score_encoded(self._encode(prompts, completions))
        return [float(r["score"]) for r in results]

    def score_steps(self, prompts: Sequence, completions: Sequence) -> list[dict]:
        """Per-step values of each completion, for Best-of-N and step-level evaluation.

        Args:
            prompts (`list[str]` or `list[list[dict]]`):
                One prompt per completion.
            completions (`list[str]`, `list[list[dict]]` or `list[list[str]]`):
                The completions: texts (split into steps at `step_separator`), conversational completions, or lists
                of steps (joined with `step_separator`; each given step stays one step even if it contains the
                separator, see [`~trl_erprm.steps.StepFormat.join_with_ends`]).

        Returns:
            `list[dict]`: Per completion, `{"step_rewards": list[float], "q_at_step_ends": list[float], "score":
            float}`; the lists have one entry per step (none for an empty completion, whose score is `0.0`). Steps
            whose ends fall on the same token are merged, and steps past `max_length` are dropped.
        """
        results = self._score_encoded(self._encode(prompts, completions), progress=len(prompts) > 4 * self.batch_size)
        return [
            {
                "step_rewards": r["step_rewards"].tolist(),
                "q_at_step_ends": r["q_at_step_ends"].tolist(),
                "score": float(r["score"]),
            }
            for r in results
        ]

    def token_rewards(self, prompts: Sequence, completions: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token implicit rewards of text completions.

        Args:
            prompts (`list[str]` or `list[list[dict]]`):
                One prompt per completion.
            completions (`list[str]` or `list[list[dict]]`):
                The completions.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: Rewards of shape `(B, T)` (right-padded with 0, `T` the longest
            completion in PRM tokens) and the completion mask of shape `(B, T)`.
        """
        results = self._score_encoded(self._encode(prompts, completions))
        T = max([len(r["token_rewards"]) for r in results] + [0])
        rewards = torch.zeros(len(results), T)
        mask = torch.zeros(len(results), T, dtype=torch.long)
        for b, r in enumerate(results):
            rewards[b, : len(r["token_rewards"])] = r["token_rewards"]
            mask[b, : len(r["token_rewards"])] = 1
        return rewards, mask
