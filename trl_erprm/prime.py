r"""PRIME (Cui et al. 2025, arXiv:2502.01456) for an unmodified [`~trl.GRPOTrainer`]: dense, token-level advantages
from an implicit PRM trained online.

An implicit PRM ([`~trl_erprm.ImplicitPRM`]) gives every completion token a process reward
`r_t = beta * log pi_phi(y_t) / pi_ref(y_t)`, is updated online on the policy's own rollouts with a cross-entropy loss
on the verifier's outcome, and the policy gets leave-one-out advantages over outcome and process rewards (Algorithm 1
of the paper). The callback reaches the rollouts through [`trl_erprm.rollout_hook`] (shared with
[`~trl_erprm.prl.PRLCallback`]); all the math is in [`trl_erprm.functional`]. Checked on trl 1.13.0 and 1.16.0.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .functional import (
    accuracy_band_mask,
    implicit_prm_ce_loss,
    implicit_token_rewards,
    prime_advantages,
    sequence_log_ratio,
)
from .rollout_hook import _global_mean, _old_logps, _policy_tokenizer, _RolloutHook


__all__ = ["PRIMECallback", "PRIMEConfig"]

logger = logging.get_logger(__name__)

#: Folder of a trainer checkpoint that holds the PRM, and the PRM optimizer's file inside it.
PRM_CHECKPOINT_FOLDER = "prm"
PRM_OPTIMIZER_NAME = "prm_optimizer.pt"

UPDATE_MODES = ("single", "double", "none")
REFERENCES = ("prm", "policy")
BASELINES = ("paper", "reference")


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PRIMEConfig:
    r"""Configuration of [`PRIMECallback`].

    Parameters:
        accuracy_lower_bound (`float`, *optional*, defaults to `0.2`):
            Lowest mean outcome of a prompt's group that is kept (online prompt filter of PRIME). Filtered groups get
            zero advantages and do not train the PRM.
        accuracy_upper_bound (`float`, *optional*, defaults to `0.8`):
            Highest mean outcome of a group that is kept.
        drop_truncated (`bool`, *optional*, defaults to `False`):
            Also drop every group holding a completion cut at `max_completion_length` (the paper does).
        update_mode (`str`, *optional*, defaults to `"single"`):
            Online PRM update. `"single"`: process rewards come from the forward pass before the update (one PRM
            forward with gradient). `"double"`: update first, then recompute the rewards with the updated PRM (one
            more forward). `"none"`: keep the PRM frozen.
        prm_learning_rate (`float`, *optional*, defaults to `1e-6`):
            Learning rate of the PRM's AdamW optimizer (constant schedule).
        prm_weight_decay (`float`, *optional*, defaults to `0.0`):
            Weight decay of the PRM's AdamW optimizer.
        prm_max_grad_norm (`float` or `None`, *optional*, defaults to `10.0`):
            Clip the PRM's gradient norm to this value; `None` disables clipping.
        prm_micro_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Sequences per PRM forward/backward pass (bounds memory). Defaults to the PRM's `batch_size`.
        reference (`str`, *optional*, defaults to `"prm"`):
            Reference of the implicit rewards. `"prm"`: the PRM's own reference (a frozen copy of the initial model, or
            the PRM with its adapter disabled; none for a reference-free PRM). `"policy"`: the policy's log-probs at
            sampling time (the paper reports both work about equally).
        reuse_ref_logps (`bool` or `None`, *optional*, defaults to `None`):
            With `reference="prm"`, use the reference log-probs GRPOTrainer already computed (`beta != 0`) instead of a
            second forward pass. `None` decides automatically: reuse when both are separate reference models that are
            the same object, or were loaded from the same path with the same dtype, and GRPO's `temperature` is 1.
            `True` forces reuse (the caller vouches the references are the same model).
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount of the process-reward return, in (0, 1].
        outcome_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the outcome term of the advantage.
        process_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the process term of the advantage.
        baseline (`str`, *optional*, defaults to `"paper"`):
            Process-reward baseline: `"paper"` (pure leave-one-out, Algorithm 1) or `"reference"` (the reference
            implementation's variant with a small self term, to reproduce its numbers).
        whiten (`bool`, *optional*, defaults to `True`):
            Whiten the advantages over all kept completion tokens of the global batch.
        log_accuracy_after (`bool`, *optional*, defaults to `True`):
            Log the PRM's accuracy after its update. Free with `update_mode="double"`; costs one extra forward pass
            without gradient with `"single"`.
    """

    accuracy_lower_bound: float = 0.2
    accuracy_upper_bound: float = 0.8
    drop_truncated: bool = False
    update_mode: str = "single"
    prm_learning_rate: float = 1e-6
    prm_weight_decay: float = 0.0
    prm_max_grad_norm: float | None = 10.0
    prm_micro_batch_size: int | None = None
    reference: str = "prm"
    reuse_ref_logps: bool | None = None
    gamma: float = 1.0
    outcome_coef: float = 1.0
    process_coef: float = 1.0
    baseline: str = "paper"
    whiten: bool = True
    log_accuracy_after: bool = True

    def __post_init__(self):
        if not 0.0 <= self.accuracy_lower_bound <= self.accuracy_upper_bound <= 1.0:
            raise ValueError(
                "PRIMEConfig: need 0 <= accuracy_lower_bound <= accuracy_upper_bound <= 1, got "
                f"[{self.accuracy_lower_bound}, {self.accuracy_upper_bound}]. Use [0, 1] to keep every group."
            )
        for name, value, choices in [
            ("update_mode", self.update_mode, UPDATE_MODES),
            ("reference", self.reference, REFERENCES),
            ("baseline", self.baseline, BASELINES),
        ]:
            if value not in choices:
                raise ValueError(f"PRIMEConfig: {name}={value!r} is not one of {list(choices)}.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"PRIMEConfig: gamma must be in (0, 1], got {self.gamma}.")
        if self.prm_learning_rate < 0:
            raise ValueError(f"PRIMEConfig: prm_learning_rate must be >= 0, got {self.prm_learning_rate}.")
        if self.prm_micro_batch_size is not None and self.prm_micro_batch_size < 1:
            raise ValueError(f"PRIMEConfig: prm_micro_batch_size must be >= 1, got {self.prm_micro_batch_size}.")
        if self.prm_max_grad_norm is not None and not self.prm_max_grad_norm > 0:
            raise ValueError(f"PRIMEConfig: prm_max_grad_norm must be > 0 or None, got {self.prm_max_grad_norm}.")


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------------


def _loss_mask(output: dict) -> torch.Tensor:
    mask = output["completion_mask"]
    return mask * output["tool_mask"] if output.get("tool_mask") is not None else mask


def _truncated(completion_ids: torch.Tensor, completion_mask: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """`(B,)` bool: the completion does not end with an EOS token (empty masks, from masked truncations, count too)."""
    lengths = completion_mask.sum(-1)
    last = completion_ids.gather(-1, (lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ends_with_eos = torch.isin(last, torch.tensor(eos_ids, device=last.device))
    return (lengths == 0) | ~ends_with_eos


def _eos_ids(trainer) -> list[int]:
    ids = getattr(trainer, "eos_token_ids", None)  # trl >= 1.14
    if ids is None:
        ids = [_policy_tokenizer(trainer).eos_token_id]
    return [int(i) for i in ids if i is not None]


def _gather_rows(accelerator, x: torch.Tensor) -> torch.Tensor:
    """Gather `(B_local, T_local)` tensors of all processes into `(B_global, T_max)`, right-padding with 0."""
    x = accelerator.pad_across_processes(x, dim=1, pad_index=0)
    return accelerator.gather(x)


def _model_name(model) -> str | None:
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _load_safetensors_into(model, folder: str) -> None:
    """Load the safetensors weights saved by `save_pretrained` in `folder` into `model`, in place."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        path = os.path.join(folder, "adapter_model.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No adapter_model.safetensors in {folder}: the PRM checkpoint is incomplete.")
        result = set_peft_model_state_dict(model, load_file(path), adapter_name=model.active_adapter)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"PRM adapter checkpoint {folder} has weights the model lacks: {result.unexpected_keys}.")
        return
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"No *.safetensors file in {folder}: the PRM checkpoint is incomplete.")
    state = {}
    for path in files:
        state.update(load_file(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"PRM checkpoint {folder} has weights the model lacks: {unexpected[:5]}.")
    # save_pretrained drops tied duplicates (e.g. lm_head tied to the embeddings): those may be missing
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"PRM checkpoint {folder} lacks weights of the model: {untied[:5]}.")


# ---------------------------------------------------------------------------------------------------------------------
# PRIME
# ---------------------------------------------------------------------------------------------------------------------


class PRIMECallback(_RolloutHook):
    r"""PRIME for a stock [`~trl.GRPOTrainer`]: online implicit-PRM updates and dense token-level advantages.

    Per training generation batch (after GRPOTrainer has generated, scored and computed its own advantages):

    1. the outcome `o_i` of each completion is the weighted sum of the trainer's reward functions (the verifiers),
       taken from the rewards GRPOTrainer computed and gathered (no second verifier call); it must lie in [0, 1];
    2. groups whose mean outcome lies outside `[accuracy_lower_bound, accuracy_upper_bound]`, groups holding an
       unscorable completion (every reward function returned `None` for it) and, with `drop_truncated`, groups
       holding a truncated completion are filtered: zero advantages, no PRM update;
    3. the PRM gives per-token rewards `r_t = beta * (log pi_phi(y_t) - log pi_ref(y_t))` and is updated with
       `BCE(sigmoid(beta * sum_t log ratio), o_i)` on the kept completions, with its own AdamW optimizer; its gradients
       are averaged over processes so every replica stays identical;
    4. advantages `A_i^t = [o_i - mean_{j!=i} o_j] + sum_{s>=t} gamma^(s-t) [r_s - mean_{j!=i} r(y_j)/|y_j|]` on the
       global batch, whitened over its kept tokens ([`~trl_erprm.functional.prime_advantages`]), sliced back to the
       local rows; they replace GRPO's `(B,)` advantages, so GRPO's `scale_rewards` and
       `multi_objective_aggregation` no longer shape the policy update (GRPO still logs its reward metrics).

    Evaluation batches are left untouched. The callback registers itself on the trainer; do not add it again with
    `trainer.add_callback`. The PRM (and its optimizer state) is saved in a `prm/` folder of every checkpoint and
    restored by `trainer.train(resume_from_checkpoint=...)`.

    Args:
        trainer ([`~trl.GRPOTrainer`]):
            The trainer, already constructed; its reward functions are the outcome verifiers.
        prm ([`~trl_erprm.ImplicitPRM`]):
            The implicit PRM, a separate model sharing the policy's tokenizer (PRIME initialises it from the SFT
            policy). Load it in float32: with `bf16=True` its forward passes run under the trainer's autocast.
        args ([`PRIMEConfig`], *optional*):
            Options; defaults to `PRIMEConfig()`.

    Example:
        ```python
        trainer = GRPOTrainer(model="sft-model", reward_funcs=[accuracy_reward], args=grpo_config, train_dataset=ds)
        prm = ImplicitPRM("sft-model", ref_model="sft-model", tokenizer=trainer.processing_class)
        PRIMECallback(trainer, prm, PRIMEConfig(update_mode="single"))
        trainer.train()
        ```

    Attributes:
        prm: The [`~trl_erprm.ImplicitPRM`].
        args ([`PRIMEConfig`]): The options.
        optimizer (`torch.optim.AdamW` or `None`): The PRM's optimizer (`None` for a PRM with no trainable weight).
        reuse_ref_logps (`bool`): Whether GRPO's reference log-probs stand in for the PRM reference's.
        enabled (`bool`): Set to `False` to pass GRPO's own advantages through (no PRM work).
        last_batch (`dict[str, torch.Tensor]`): Tensors of the last processed batch, local rows: `advantages`
            `(B, T)`, `token_rewards` `(B, T)`, `outcome` `(B,)`, `keep` `(B,)`, `rows` (kept row indices), `ref_logps`
            `(n_kept, T)` or `None`, `input_ids`, `attention_mask`, `completion_mask`.

    Logged metrics (train): `prime/prm_loss`, `prime/prm_accuracy_before`, `prime/prm_accuracy_after`,
    `prime/prm_grad_norm`, `prime/process_reward/mean`, `prime/process_reward/std`, `prime/kept_fraction`,
    `prime/unscorable_fraction`.
    """

    metric_prefix = "prime"

    def __init__(self, trainer, prm, args: PRIMEConfig | None = None):
        super().__init__(trainer)
        self.args = args if args is not None else PRIMEConfig()
        for name in ("model", "compute_logps", "beta", "has_reference", "tokenizer"):
            if not hasattr(prm, name):
                raise TypeError(f"prm must be an ImplicitPRM (it has no `{name}`), got {type(prm).__name__}.")
        self.prm = prm
        if trainer.num_generations < 2:
            raise ValueError(
                f"PRIME needs num_generations >= 2 (leave-one-out baselines), got {trainer.num_generations}: no "
                "leave-one-out possible with one completion per prompt. Set GRPOConfig(num_generations=4)."
            )
        unwrapped_policy = trainer.accelerator.unwrap_model(trainer.model)
        if prm.model is trainer.model or prm.model is unwrapped_policy:
            raise ValueError(
                "The PRM must be a separate model from the policy: PRIME trains it with its own optimizer."
            )
        if getattr(trainer, "ref_model", None) is not None and prm.model is trainer.ref_model:
            raise ValueError(
                "The PRM must not be GRPO's reference model: PRIME trains the PRM, which would move GRPO's reference. "
                "Pass the reference as the PRM's `ref_model` instead (it is only read)."
            )
        policy_vocab = _policy_tokenizer(trainer).get_vocab()
        if prm.tokenizer.get_vocab() != policy_vocab:
            raise ValueError(
                f"The PRM's tokenizer (vocabulary of {len(prm.tokenizer.get_vocab())}) differs from the policy's "
                f"({len(policy_vocab)}): PRIME scores the policy's token ids directly, so both must share one "
                "vocabulary. Initialise the PRM from the policy (as PRIME does) or from a model with the same tokenizer."
            )
        if self.args.reference == "prm" and not prm.has_reference:
            logger.info("PRIME: the PRM has no reference, so process rewards are beta * log pi_phi (reference-free).")
        self.reuse_ref_logps = self._decide_reuse()

        device = trainer.accelerator.device
        for model in (prm.model, getattr(prm, "ref_model", None)):
            if model is not None and _model_device(model) != device:
                model.to(device)
        prm.model.eval()  # no dropout: the same forward gives the rewards and the loss
        self._params = [p for p in prm.model.parameters() if p.requires_grad]
        if self.args.update_mode != "none" and not self._params:
            raise ValueError(
                "The PRM has no trainable parameter; use PRIMEConfig(update_mode='none') for a frozen PRM."
            )
        self.optimizer = (
            torch.optim.AdamW(self._params, lr=self.args.prm_learning_rate, weight_decay=self.args.prm_weight_decay)
            if self._params
            else None
        )
        self._originals["_load_optimizer_and_scheduler"] = trainer._load_optimizer_and_scheduler
        self._attach()
        load_optimizer_and_scheduler = self._originals["_load_optimizer_and_scheduler"]

        def _load_optimizer_and_scheduler(checkpoint):
            load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                self._restore(checkpoint)

        trainer._load_optimizer_and_scheduler = _load_optimizer_and_scheduler

    # -- setup --------------------------------------------------------------------------------------------------------

    def _decide_reuse(self) -> bool:
        trainer, prm, wanted = self.trainer, self.prm, self.args.reuse_ref_logps
        if self.args.reference != "prm" or not prm.has_reference or wanted is False:
            return False
        if trainer.beta == 0.0:
            if wanted:
                raise ValueError(
                    "reuse_ref_logps=True but GRPOTrainer computes no reference log-probs when beta == 0. Set "
                    "GRPOConfig(beta>0) or leave reuse_ref_logps=None."
                )
            return False
        if trainer.temperature != 1.0:
            if wanted:
                raise ValueError(
                    f"reuse_ref_logps=True but GRPO's reference log-probs are taken at temperature "
                    f"{trainer.temperature}, while the PRM's are at temperature 1. Leave reuse_ref_logps=None."
                )
            return False
        if wanted:
            return True
        grpo_ref, prm_ref = getattr(trainer, "ref_model", None), getattr(prm, "ref_model", None)
        if grpo_ref is None or prm_ref is None:
            return False
        if prm_ref is grpo_ref or prm_ref is trainer.accelerator.unwrap_model(grpo_ref):
            return True
        name = _model_name(prm_ref)
        return name is not None and name == _model_name(grpo_ref) and _model_dtype(prm_ref) == _model_dtype(grpo_ref)

    # -- per generation batch -----------------------------------------------------------------------------------------

    def _process(self, output: dict, rewards_per_func: torch.Tensor) -> dict:
        trainer, args, prm = self.trainer, self.args, self.prm
        accelerator = trainer.accelerator
        K = trainer.num_generations
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        input_ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], completion_mask], dim=1)
        B, T = completion_ids.shape
        mask = _loss_mask(output)
        local = slice(accelerator.process_index * B, (accelerator.process_index + 1) * B)  # as GRPOTrainer slices

        # 1. outcomes of the global batch, from the rewards GRPOTrainer gathered
        rewards_per_func = rewards_per_func.float()
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        weights = trainer.reward_weights.to(rewards_per_func.device)
        outcome = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        self._check_outcomes(outcome, unscorable)
        outcome = torch.where(unscorable, 0.0, outcome)

        # 2. online prompt filter
        truncated = accelerator.gather(_truncated(completion_ids, completion_mask, _eos_ids(trainer)).long()).bool()
        keep = accuracy_band_mask(
            outcome,
            K,
            args.accuracy_lower_bound,
            args.accuracy_upper_bound,
            truncated=truncated if args.drop_truncated else None,
        )
        keep &= ~unscorable.view(-1, K).any(1).repeat_interleave(K)
        num_kept = int(keep.sum())
        keep_local = keep[local]
        rows = keep_local.nonzero().squeeze(-1)

        # 3. implicit process rewards of the kept local rows, and the online PRM update
        ids, am, m, labels = input_ids[rows], attention_mask[rows], mask[rows], outcome[local][rows]
        ref = self._reference_logps(output, input_ids, attention_mask, T, rows)
        logps, stats = self._prm_step(ids, am, T, m, labels, ref, num_kept)
        token_rewards = torch.zeros(B, T, device=completion_ids.device)
        token_rewards[rows] = implicit_token_rewards(logps, ref, prm.beta, m).to(token_rewards.device)

        # 4. advantages on the global batch, sliced back to the local rows
        kept_mask = mask * keep_local.unsqueeze(-1).to(mask.dtype)
        global_rewards = _gather_rows(accelerator, token_rewards)
        global_mask = _gather_rows(accelerator, kept_mask)
        advantages = prime_advantages(
            outcome.to(global_rewards.device),
            global_rewards,
            global_mask,
            K,
            gamma=args.gamma,
            process_coef=args.process_coef,
            outcome_coef=args.outcome_coef,
            baseline=args.baseline,
            whiten=args.whiten,
        )
        output["advantages"] = advantages[local, :T].contiguous()

        # logs
        valid = global_mask.bool()
        values = global_rewards[valid]
        self._log("kept_fraction", keep.float().mean().item())
        self._log("unscorable_fraction", unscorable.float().mean().item())
        self._log("process_reward/mean", values.mean().item() if values.numel() else 0.0)
        self._log("process_reward/std", values.std().item() if values.numel() > 1 else 0.0)
        for name, value in stats.items():
            self._log(name, value)
        self.last_batch = {
            "advantages": output["advantages"],
            "token_rewards": token_rewards,
            "outcome": outcome[local],
            "keep": keep_local,
            "ref_logps": ref,
            "rows": rows,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": mask,
        }
        return output

    def _check_outcomes(self, outcome: torch.Tensor, unscorable: torch.Tensor) -> None:
        bad = (~unscorable) & (~torch.isfinite(outcome) | (outcome < 0) | (outcome > 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"PRIME trains the PRM with a cross-entropy on the outcome, which must lie in [0, 1]: the weighted sum "
                f"of the reward functions {list(self.trainer.reward_func_names)} is {outcome[i].item()} for completion "
                f"{i} of the global batch. Use 0/1 verifiers as reward functions, with reward_weights summing to 1."
            )

    def _reference_logps(self, output, input_ids, attention_mask, T, rows) -> torch.Tensor | None:
        """`(n_kept_local, T)` reference log-probs of the kept rows, or `None` for a reference-free PRM."""
        if self.args.reference == "policy":
            return _old_logps(self.trainer, output, rows)
        if not self.prm.has_reference:
            return None
        if self.reuse_ref_logps:
            return output["ref_per_token_logps"][rows].float()
        if len(rows) == 0:
            return torch.zeros(0, T, device=input_ids.device)
        with self.trainer.accelerator.autocast():
            return self.prm.compute_logps(input_ids[rows], attention_mask[rows], T, reference=True)

    def _prm_passes(self, ids, am, T, mask, labels, ref, denominator: int, backward: bool) -> torch.Tensor:
        """PRM log-probs `(n, T)` of the given rows, in micro-batches; with `backward`, also accumulate the gradient of
        the CE loss summed over the rows and divided by `denominator` (the number of kept rows of the global batch)."""
        size = self.args.prm_micro_batch_size or getattr(self.prm, "batch_size", None) or len(ids) or 1
        chunks = []
        for start in range(0, len(ids), size):
            end = start + size
            with self.trainer.accelerator.autocast():
                logps = self.prm.compute_logps(ids[start:end], am[start:end], T, grad=backward)
            if backward:
                ref_chunk = None if ref is None else ref[start:end].to(logps.device)
                mask_chunk = mask[start:end].to(logps.device)
                log_ratio = sequence_log_ratio(logps, ref_chunk, mask_chunk)
                loss = implicit_prm_ce_loss(log_ratio, labels[start:end].to(logps.device), self.prm.beta)
                (loss.sum() / denominator).backward()
            chunks.append(logps.detach())
        return torch.cat(chunks) if chunks else torch.zeros(0, T, device=ids.device)

    def _prm_stats(self, logps, ref, mask, labels) -> tuple[float, float]:
        """Global CE loss and accuracy over the kept rows."""
        accelerator = self.trainer.accelerator
        log_ratio = sequence_log_ratio(logps, None if ref is None else ref.to(logps.device), mask.to(logps.device))
        labels = labels.to(logps.device)
        loss = implicit_prm_ce_loss(log_ratio, labels, self.prm.beta).sum().item()
        # a sample is classified correctly when the sign of its implicit outcome reward matches its label; a tie (the
        # PRM equals its reference, as at the start of training) counts one half: chance level
        hit = ((log_ratio > 0) == (labels > 0.5)).float()
        correct = torch.where(log_ratio == 0, 0.5, hit).sum().item()
        return _global_mean(accelerator, loss, len(labels)), _global_mean(accelerator, correct, len(labels))

    def _optimizer_step(self) -> float:
        accelerator = self.trainer.accelerator
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if accelerator.num_processes > 1:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)  # the loss is already divided by the global count
        if self.args.prm_max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.args.prm_max_grad_norm).item()
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self._params])).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _prm_step(self, ids, am, T, mask, labels, ref, num_kept: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Run the PRM on the kept local rows and update it; return the log-probs that give the process rewards."""
        args = self.args
        stats: dict[str, float] = {}
        if num_kept == 0:  # every group filtered out: nothing to score or learn from (and no metric to log)
            return torch.zeros(0, T, device=ids.device), stats
        update = args.update_mode != "none"
        logps = self._prm_passes(ids, am, T, mask, labels, ref, num_kept, backward=update)
        stats["prm_loss"], stats["prm_accuracy_before"] = self._prm_stats(logps, ref, mask, labels)
        if not update:
            return logps, stats
        stats["prm_grad_norm"] = self._optimizer_step()
        if args.update_mode == "double" or args.log_accuracy_after:
            updated = self._prm_passes(ids, am, T, mask, labels, ref, num_kept, backward=False)
            _, stats["prm_accuracy_after"] = self._prm_stats(updated, ref, mask, labels)
            if args.update_mode == "double":
                logps = updated
        return logps, stats

    # -- checkpoints --------------------------------------------------------------------------------------------------

    def save_prm(self, output_dir: str, save_optimizer: bool = True) -> None:
        """Save the PRM (safetensors), its tokenizer and, optionally, its optimizer state to `output_dir`.

        Args:
            output_dir (`str`):
                Folder to write (created if needed).
            save_optimizer (`bool`, *optional*, defaults to `True`):
                Also write the AdamW state to `prm_optimizer.pt`.
        """
        os.makedirs(output_dir, exist_ok=True)
        self.prm.model.save_pretrained(output_dir, safe_serialization=True)
        self.prm.tokenizer.save_pretrained(output_dir)
        if save_optimizer and self.optimizer is not None:
            torch.save(self.optimizer.state_dict(), os.path.join(output_dir, PRM_OPTIMIZER_NAME))

    def load_prm(self, folder: str) -> None:
        """Load PRM weights (and the optimizer state, when present) saved by [`~PRIMECallback.save_prm`], in place.

        Args:
            folder (`str`):
                Folder written by `save_prm` (the `prm/` folder of a trainer checkpoint).
        """
        _load_safetensors_into(self.prm.model, folder)
        path = os.path.join(folder, PRM_OPTIMIZER_NAME)
        if self.optimizer is not None and os.path.isfile(path):
            state = torch.load(path, map_location=self.trainer.accelerator.device, weights_only=True)
            self.optimizer.load_state_dict(state)

    def push_prm_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Push the PRM (weights and tokenizer) to the Hugging Face Hub.

        Args:
            repo_id (`str`):
                Repository to push to, e.g. `"username/my-implicit-prm"`.
            **kwargs:
                Passed to `push_to_hub` of the model and of the tokenizer (e.g. `private=True`, `commit_message`).

        Returns:
            The commit information of the model push.
        """
        info = self.prm.model.push_to_hub(repo_id, **kwargs)
        self.prm.tokenizer.push_to_hub(repo_id, **kwargs)
        return info

    def on_save(self, args, state, control, **kwargs):
        """Save the PRM into the `prm/` folder of the checkpoint the trainer just wrote."""
        if not args.should_save:
            return
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        self.save_prm(os.path.join(checkpoint, PRM_CHECKPOINT_FOLDER), save_optimizer=not args.save_only_model)

    def _restore(self, checkpoint: str) -> None:
        folder = os.path.join(checkpoint, PRM_CHECKPOINT_FOLDER)
        if not os.path.isdir(folder):
            logger.warning(
                f"PRIME: checkpoint {checkpoint} has no `{PRM_CHECKPOINT_FOLDER}/` folder (saved without PRIME?): the "
                "PRM keeps its current weights."
            )
            return
        self.load_prm(folder)
        logger.info(f"PRIME: PRM restored from {folder}.")
