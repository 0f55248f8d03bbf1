from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging
from trl import GRPOTrainer

from .._compat import eos_token_ids, policy_tokenizer
from ..functional import (
    accuracy_band_mask,
    implicit_prm_ce_loss,
    implicit_token_rewards,
    log_ratio_tolerance,
    sequence_log_ratio,
    sign_accuracy,
    weighted_outcome,
)
from ..implicit_prm import _eval_mode, completion_logps
from .mixin import ProcessAdvantageMixin
from .prime_config import PRIMEConfig
from .prm_checkpoint import (
    PRIME_CITATION,
    PRM_CHECKPOINT_FOLDER,
    check_prime_checkpoint,
    load_prm_folder,
    prm_model_card,
    save_prm_folder,
)


logger = logging.get_logger(__name__)

DEFAULT_PRM_BETA = 0.05


def _model_name(model) -> str | None:
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(getattr(model, "config", None), "name_or_path", None) or None


def _first_param(model) -> torch.Tensor:
    return next(model.parameters())


def _truncated(completion_ids: torch.Tensor, completion_mask: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """`(B,)` bool: the completion does not end with an EOS token (empty masks, from masked truncations, count too)."""
    lengths = completion_mask.sum(-1)
    last = completion_ids.gather(-1, (lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ends_with_eos = torch.isin(last, torch.tensor(eos_ids, device=last.device))
    return (lengths == 0) | ~ends_with_eos


class PRIMETrainer(ProcessAdvantageMixin, GRPOTrainer):
    r"""Trainer for PRIME ([Process Reinforcement through Implicit Rewards](https://huggingface.co/papers/2502.01456)):
    GRPO with dense token-level advantages from an implicit PRM trained online on the policy's own rollouts.

    The only change w.r.t. [`~trl.GRPOTrainer`] is what happens to a training generation batch once GRPO has
    generated and scored it (see [`~trl_erprm.grpo.mixin.ProcessAdvantageMixin`]):

    1. the outcome `o_i` of each completion is the weighted sum of the reward functions (the verifiers), taken from the
       rewards GRPO computed and gathered (no second verifier call); it must lie in [0, 1];
    2. groups whose mean outcome lies outside `[accuracy_lower_bound, accuracy_upper_bound]`, groups holding an
       unscorable completion (every reward function returned `None`) and, with `drop_truncated`, groups holding a
       truncated completion are filtered: zero advantages, no PRM update (a warning says so, once, when a whole batch
       is filtered);
    3. the PRM gives per-token rewards `r_t = beta * (log pi_phi(y_t) - log pi_ref(y_t))` and is updated with
       `BCE(sigmoid(beta * sum_t log ratio), o_i)` on the kept completions, with its own AdamW optimizer; its gradients
       are summed over processes, so every replica stays identical;
    4. the `"prime"` estimator computes leave-one-out advantages over outcome and process rewards on the global batch
       ([`~trl_erprm.functional.prime_advantages`]); each process keeps its rows.

    The PRM and its optimizer state are saved in `prm/` inside every checkpoint (before the trainer's own files) and
    by `save_model` (in `<output_dir>/prm`); `train(resume_from_checkpoint=...)` restores both and refuses a checkpoint
    that lacks either (see [`~trl_erprm.grpo.prm_checkpoint.check_prime_checkpoint`]).

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            The policy, as for [`~trl.GRPOTrainer`].
        reward_funcs (reward function or `list`):
            The outcome verifiers (values in [0, 1]; `reward_weights` combine several), as for GRPOTrainer.
        args ([`~trl_erprm.grpo.PRIMEConfig`], *optional*):
            Configuration; defaults to `PRIMEConfig("<model name>-PRIME")`.
        prm ([`~trl_erprm.ImplicitPRM`], *optional*):
            The implicit PRM, a separate model sharing the policy's tokenizer; load it in float32 (with `bf16=True` its
            forward passes run under the trainer's autocast). `None`: built from `args.prm_model_name_or_path` (default:
            the policy's initial weights, as in PRIME), `args.prm_ref_model_name_or_path` and `args.prm_beta`, in
            float32.
        **kwargs:
            Every other argument of [`~trl.GRPOTrainer`] (`train_dataset`, `eval_dataset`, `processing_class`,
            `peft_config`, `rollout_func`, ...), by keyword.

    Attributes:
        prm ([`~trl_erprm.ImplicitPRM`]): The PRM.
        prm_optimizer (`torch.optim.AdamW` or `None`): Its optimizer (`None` for a PRM with no trainable weight).
        reuse_ref_logps (`bool`): Whether GRPO's reference log-probs stand in for the PRM reference's.
        last_batch (`dict[str, torch.Tensor]`): Tensors of the last training generation batch, local rows:
            `advantages` `(B, T)`, `token_rewards` `(B, T)`, `outcome` `(B,)`, `keep` `(B,)`, `rows` (kept row
            indices), `ref_logps` `(n_kept, T)` or `None`, `input_ids`, `attention_mask`, `completion_mask`.

    Logged metrics (train): `prime/prm_loss`, `prime/prm_accuracy_before`, `prime/prm_accuracy_after` (sign of the
    implicit outcome reward against the label; a log-ratio within the rounding noise of its summed log-probs is a tie
    and counts 1/2, see [`~trl_erprm.functional.sign_accuracy`] and [`~trl_erprm.functional.log_ratio_tolerance`]),
    `prime/prm_grad_norm`, `prime/process_reward/mean`, `prime/process_reward/std`, `prime/kept_fraction`,
    `prime/unscorable_fraction`.

    Example:
        ```python
        trainer = PRIMETrainer(model="sft-model", reward_funcs=[accuracy_reward], args=PRIMEConfig(...), train_dataset=ds)
        trainer.train()
        trainer.save_model()  # the policy, and the PRM in <output_dir>/prm
        ```
    """

    _tag_names = ["trl", "grpo", "prime", "trl-erprm"]
    _name = "PRIME"
    _paper = {
        "title": "Process Reinforcement through Implicit Rewards",
        "id": "2502.01456",
        # docstyle-ignore
        "citation": PRIME_CITATION,
    }
    advantage_estimator = "prime"
    metric_prefix = "prime"

    def __init__(self, model, reward_funcs=None, args: PRIMEConfig | None = None, prm=None, **kwargs: Any):
        if args is None:
            name = model if isinstance(model, str) else _model_name(model) or "model"
            args = PRIMEConfig(f"{name.rstrip('/').split('/')[-1]}-PRIME")
        if not isinstance(args, PRIMEConfig):
            raise TypeError(f"PRIMETrainer needs a PRIMEConfig (a GRPOConfig with PRIME's fields), got {type(args)}.")
        if prm is not None and not all(hasattr(prm, a) for a in ("model", "compute_logps", "beta", "has_reference")):
            raise TypeError(
                f"prm must be an ImplicitPRM, got {type(prm).__name__} (pass train_dataset and the other GRPOTrainer "
                "arguments by keyword)."
            )
        if prm is not None:
            given = [
                f for f in ("prm_model_name_or_path", "prm_ref_model_name_or_path", "prm_beta") if getattr(args, f)
            ]
            if given:
                raise ValueError(f"Pass either an ImplicitPRM or PRIMEConfig.{given[0]}, not both.")
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self.check_process_advantages()
        self.prm = prm if prm is not None else self._build_prm(model)
        self._check_prm()
        self.reuse_ref_logps = self._decide_reuse()
        device = self.accelerator.device
        for module in (self.prm.model, getattr(self.prm, "ref_model", None)):
            if module is not None and _first_param(module).device != device:
                module.to(device)
        self.prm.model.eval()  # no dropout: one forward gives the rewards and the loss
        self._prm_params = [p for p in self.prm.model.parameters() if p.requires_grad]
        if args.update_mode != "none" and not self._prm_params:
            raise ValueError(
                "The PRM has no trainable parameter; use PRIMEConfig(update_mode='none') for a frozen PRM."
            )
        self.prm_optimizer = (
            torch.optim.AdamW(self._prm_params, lr=args.prm_learning_rate, weight_decay=args.prm_weight_decay)
            if self._prm_params
            else None
        )
        self._warned_all_filtered = False

    # -- setup --------------------------------------------------------------------------------------------------------

    def _build_prm(self, model):
        from ..implicit_prm import ImplicitPRM

        path = self.args.prm_model_name_or_path or (model if isinstance(model, str) else _model_name(model))
        if path is None:
            raise ValueError("Cannot tell where to load the PRM from: set PRIMEConfig.prm_model_name_or_path.")
        return ImplicitPRM(
            path,
            ref_model=self.args.prm_ref_model_name_or_path or path,
            tokenizer=policy_tokenizer(self),
            beta=self.args.prm_beta or DEFAULT_PRM_BETA,
            model_init_kwargs={"dtype": "float32", "trust_remote_code": bool(self.args.trust_remote_code)},
        )

    def _check_prm(self) -> None:
        prm = self.prm
        if prm.model is self.model or prm.model is self.accelerator.unwrap_model(self.model):
            raise ValueError(
                "The PRM must be a separate model from the policy: PRIME trains it with its own optimizer."
            )
        policy_vocab = policy_tokenizer(self).get_vocab()
        if prm.tokenizer.get_vocab() != policy_vocab:
            raise ValueError(
                f"The PRM's tokenizer (vocabulary of {len(prm.tokenizer.get_vocab())}) differs from the policy's "
                f"({len(policy_vocab)}): PRIME scores the policy's token ids directly, so both must share one "
                "vocabulary. Initialise the PRM from the policy (as PRIME does) or from a model with the same tokenizer."
            )
        if self.args.reference == "prm" and not prm.has_reference:
            logger.info("PRIME: the PRM has no reference, so process rewards are beta * log pi_phi (reference-free).")

    def _decide_reuse(self) -> bool:
        prm, wanted = self.prm, self.args.reuse_ref_logps
        if self.args.reference != "prm" or not prm.has_reference or wanted is False:
            return False
        if self.beta == 0.0:
            if wanted:
                raise ValueError(
                    "reuse_ref_logps=True but GRPO computes no reference log-probs when beta == 0. Set beta > 0 or "
                    "leave reuse_ref_logps=None."
                )
            return False
        if self.temperature != 1.0:
            if wanted:
                raise ValueError(
                    f"reuse_ref_logps=True but GRPO's reference log-probs are taken at temperature {self.temperature}, "
                    "the PRM's at temperature 1. Leave reuse_ref_logps=None."
                )
            return False
        if wanted:
            return True
        grpo_ref, prm_ref = getattr(self, "ref_model", None), getattr(prm, "ref_model", None)
        if grpo_ref is None or prm_ref is None:
            return False
        if prm_ref is grpo_ref or prm_ref is self.accelerator.unwrap_model(grpo_ref):
            return True
        name = _model_name(prm_ref)
        same_dtype = _first_param(prm_ref).dtype == _first_param(grpo_ref).dtype
        return name is not None and name == _model_name(grpo_ref) and same_dtype

    # -- per training generation batch --------------------------------------------------------------------------------

    def prepare_rollout_batch(self, batch, rollout) -> None:
        """Outcomes, the accuracy filter, the PRM's process rewards and its online update; adds `outcome`, `keep` and
        `token_rewards` to `batch.tensors` (see the class docstring).

        Args:
            batch ([`~trl_erprm.grpo.advantages.RolloutBatch`]):
                The global batch.
            rollout (`Rollout`):
                This process's rows.
        """
        args, K = self.args, self.num_generations
        B, T = rollout.completion_ids.shape
        local = slice(batch.process_index * B, (batch.process_index + 1) * B)
        input_ids, attention_mask = self.last_batch["input_ids"], self.last_batch["attention_mask"]  # set by the mixin
        mask = rollout.loss_mask

        # 1. outcomes of the global batch, from the rewards GRPO gathered
        outcome, unscorable = weighted_outcome(batch.rewards, batch.reward_weights)
        self._check_outcomes(outcome, unscorable)

        # 2. online prompt filter
        truncated = self.gather_rows(_truncated(rollout.completion_ids, rollout.completion_mask, eos_token_ids(self)))
        keep = accuracy_band_mask(
            outcome,
            K,
            args.accuracy_lower_bound,
            args.accuracy_upper_bound,
            truncated=truncated if args.drop_truncated else None,
        )
        keep &= ~unscorable.view(-1, K).any(1).repeat_interleave(K)
        num_kept = int(keep.sum())
        if num_kept == 0:
            self._warn_all_filtered(outcome, unscorable, truncated)
        keep_local = keep[local]
        rows = keep_local.nonzero().squeeze(-1)

        # 3. implicit process rewards of the kept local rows, and the online PRM update
        ids, am, m, labels = input_ids[rows], attention_mask[rows], mask[rows], outcome[local][rows]
        ref = self._reference_logps(rollout, input_ids, attention_mask, T, rows)
        logps, stats = self._prm_step(ids, am, T, m, labels, ref, num_kept)
        token_rewards = torch.zeros(B, T, device=rollout.completion_ids.device)
        token_rewards[rows] = implicit_token_rewards(logps, ref, self.prm.beta, m).to(token_rewards.device)

        global_rewards = self.gather_rows(token_rewards)
        batch.tensors.update(outcome=outcome, keep=keep, token_rewards=global_rewards)

        kept_values = global_rewards[(batch.mask.bool() & keep.unsqueeze(-1))]
        self.log_rollout_metric("kept_fraction", keep.float().mean().item())
        self.log_rollout_metric("unscorable_fraction", unscorable.float().mean().item())
        self.log_rollout_metric("process_reward/mean", kept_values.mean().item() if kept_values.numel() else 0.0)
        self.log_rollout_metric("process_reward/std", kept_values.std().item() if kept_values.numel() > 1 else 0.0)
        for name, value in stats.items():
            self.log_rollout_metric(name, value)
        self.last_batch.update(
            token_rewards=token_rewards, outcome=outcome[local], keep=keep_local, ref_logps=ref, rows=rows
        )

    def _check_outcomes(self, outcome: torch.Tensor, unscorable: torch.Tensor) -> None:
        bad = (~unscorable) & (~torch.isfinite(outcome) | (outcome < 0) | (outcome > 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"PRIME trains the PRM with a cross-entropy on the outcome, which must lie in [0, 1]: the weighted sum "
                f"of the reward functions {list(self.reward_func_names)} is {outcome[i].item()} for completion {i} of "
                "the global batch. Use 0/1 verifiers as reward functions, with reward_weights summing to 1."
            )

    def _warn_all_filtered(self, outcome: torch.Tensor, unscorable: torch.Tensor, truncated: torch.Tensor) -> None:
        if self._warned_all_filtered or not self.accelerator.is_main_process:  # the same on every process: say it once
            return
        self._warned_all_filtered = True
        K, args = self.num_generations, self.args
        accuracy = outcome.view(-1, K).mean(1)
        groups_unscorable = unscorable.view(-1, K).any(1)
        counts = {
            "all correct or above the band": int(((accuracy > args.accuracy_upper_bound) & ~groups_unscorable).sum()),
            "all wrong or below the band": int(((accuracy < args.accuracy_lower_bound) & ~groups_unscorable).sum()),
            "with an unscorable completion": int(groups_unscorable.sum()),
        }
        if args.drop_truncated:
            counts["with a truncated completion"] = int(truncated.view(-1, K).any(1).sum())
        reasons = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        logger.warning(
            f"PRIME: no prompt of this batch survived the accuracy filter ({reasons}; {len(accuracy)} groups): every "
            "advantage is 0, so this step trains the policy with loss 0 and the PRM not at all. If it persists, "
            f"widen the band PRIMEConfig(accuracy_lower_bound={args.accuracy_lower_bound}, accuracy_upper_bound="
            f"{args.accuracy_upper_bound}) (0 and 1 keep every group), use prompts the policy solves sometimes, or "
            "raise num_generations. `prime/kept_fraction` tracks it. (Warned once per trainer.)"
        )

    def _reference_logps(self, rollout, input_ids, attention_mask, T, rows) -> torch.Tensor | None:
        """`(n_kept_local, T)` reference log-probs of the kept rows, or `None` for a reference-free PRM."""
        if self.args.reference == "policy" and self.temperature == 1.0:
            return self.sampling_logps(rollout, rows)
        if self.args.reference == "policy":  # GRPO's log-probs are at its temperature, the PRM's at 1: one forward
            return self._policy_logps(input_ids[rows], attention_mask[rows], T)  # of the (unmoved) sampling policy
        if not self.prm.has_reference:
            return None
        if self.reuse_ref_logps:
            return rollout.ref_logps[rows].float()
        if len(rows) == 0:
            return torch.zeros(0, T, device=input_ids.device)
        with self.accelerator.autocast():
            return self.prm.compute_logps(input_ids[rows], attention_mask[rows], T, reference=True)

    def _policy_logps(self, input_ids, attention_mask, T) -> torch.Tensor:
        """`(n, T)` log-probs at temperature 1 (the PRM's) of the completions under the policy, which has not moved
        since it sampled them: no gradient, eval mode, in chunks of `per_device_train_batch_size` rows."""
        model = self.accelerator.unwrap_model(self.model)
        size = self.args.per_device_train_batch_size
        chunks = [torch.zeros(0, T, device=input_ids.device)]
        with torch.no_grad(), _eval_mode(model), self.accelerator.autocast():
            for start in range(0, len(input_ids), size):
                ids, am = input_ids[start : start + size], attention_mask[start : start + size]
                chunks.append(completion_logps(model, ids, am, T).float())
        return torch.cat(chunks)

    def _prm_passes(self, ids, am, T, mask, labels, ref, denominator: int, backward: bool) -> torch.Tensor:
        """PRM log-probs `(n, T)` of the given rows, in micro-batches; with `backward`, also accumulate the gradient of
        the CE loss summed over the rows and divided by `denominator` (the number of kept rows of the global batch)."""
        size = self.args.prm_micro_batch_size or getattr(self.prm, "batch_size", None) or len(ids) or 1
        chunks = []
        for start in range(0, len(ids), size):
            end = start + size
            with self.accelerator.autocast():
                logps = self.prm.compute_logps(ids[start:end], am[start:end], T, grad=backward)
            if backward:
                ref_chunk = None if ref is None else ref[start:end].to(logps.device)
                log_ratio = sequence_log_ratio(logps, ref_chunk, mask[start:end].to(logps.device))
                loss = implicit_prm_ce_loss(log_ratio, labels[start:end].to(logps.device), self.prm.beta)
                (loss.sum() / denominator).backward()
            chunks.append(logps.detach())
        return torch.cat(chunks) if chunks else torch.zeros(0, T, device=ids.device)

    def _prm_stats(self, logps, ref, mask, labels) -> tuple[float, float]:
        """Global CE loss and accuracy over the kept rows. A sample is classified correctly when the sign of its
        implicit outcome reward matches its label; a tie counts one half, chance level (see
        [`~trl_erprm.functional.sign_accuracy`]). A tie is a log-ratio within the float noise of the summed log-probs
        ([`~trl_erprm.functional.log_ratio_tolerance`]), not only an exact 0: the PRM equal to its reference (at the
        start of training) gives log-ratios of ~1e-7 when the two are computed with other batch shapes or kernels
        (GRPO's reference log-probs, the policy's), whose signs are noise."""
        ref = None if ref is None else ref.to(logps.device)
        mask = mask.to(logps.device)
        log_ratio = sequence_log_ratio(logps, ref, mask)
        labels = labels.to(logps.device)
        loss = implicit_prm_ce_loss(log_ratio, labels, self.prm.beta).sum().item()
        tolerance = log_ratio_tolerance(logps, ref, mask)
        correct = sign_accuracy(log_ratio, labels, tolerance).sum().item()
        return self.global_mean(loss, len(labels)), self.global_mean(correct, len(labels))

    def _prm_optimizer_step(self) -> float:
        for p in self._prm_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if self.accelerator.num_processes > 1:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)  # the loss is already divided by the global count
        if self.args.prm_max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._prm_params, self.args.prm_max_grad_norm).item()
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self._prm_params])).item()
        self.prm_optimizer.step()
        self.prm_optimizer.zero_grad(set_to_none=True)
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
        stats["prm_grad_norm"] = self._prm_optimizer_step()
        if args.update_mode == "double" or args.log_accuracy_after:
            updated = self._prm_passes(ids, am, T, mask, labels, ref, num_kept, backward=False)
            _, stats["prm_accuracy_after"] = self._prm_stats(updated, ref, mask, labels)
            if args.update_mode == "double":
                logps = updated
        return logps, stats

    # -- saving and resuming ------------------------------------------------------------------------------------------

    def save_prm(self, output_dir: str, save_optimizer: bool = True) -> None:
        """Write the PRM folder: weights (safetensors, or the adapter of a PEFT PRM), tokenizer, optimizer state, model
        card and `prime_prm.json`, atomically (written aside, then renamed into place). Only the process that saves
        (`args.should_save`) writes.

        Args:
            output_dir (`str`):
                The PRM folder (e.g. `<output_dir>/prm`); replaced if it exists.
            save_optimizer (`bool`, *optional*, defaults to `True`):
                Also write the AdamW state to `prm_optimizer.pt`.
        """
        if not self.args.should_save:
            return
        location = os.path.abspath(output_dir)
        if self.args.push_to_hub and self.hub_model_id:
            location = f"{self.hub_model_id}-prm"
        card = prm_model_card(
            self.prm, location, _model_name(self.accelerator.unwrap_model(self.model)), self.state.global_step,
            list(self.reward_func_names),
        )  # fmt: skip
        optimizer = self.prm_optimizer if save_optimizer else None
        save_prm_folder(self.prm, optimizer, output_dir, self.state.global_step, card)

    def load_prm(self, folder: str) -> None:
        """Load PRM weights (and the optimizer state, when saved) written by [`~PRIMETrainer.save_prm`], in place.

        Args:
            folder (`str`):
                A PRM folder (the `prm/` folder of a checkpoint or of the output folder).
        """
        if not load_prm_folder(self.prm, self.prm_optimizer, folder, self.accelerator.device):
            if self.prm_optimizer is not None:
                logger.warning(f"PRIME: {folder} has no PRM optimizer state (save_only_model?): AdamW starts afresh.")

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

    def save_extra_state(self, folder: str) -> None:
        """Write the PRM into `<checkpoint>/prm` before the trainer writes its own files of the checkpoint (a stale
        `trainer_state.json` of an overwritten checkpoint is removed first, so the checkpoint counts as complete only
        once the trainer rewrites it).

        Args:
            folder (`str`):
                The checkpoint folder.
        """
        if not self.args.should_save:
            return
        stale = os.path.join(folder, "trainer_state.json")
        if os.path.isfile(stale):
            os.remove(stale)
        self.save_prm(os.path.join(folder, PRM_CHECKPOINT_FOLDER), save_optimizer=not self.args.save_only_model)

    def load_extra_state(self, folder: str) -> None:
        """Restore the PRM and its optimizer from a checkpoint (refused if incomplete).

        Args:
            folder (`str`):
                The checkpoint folder.
        """
        check_prime_checkpoint(folder)
        self.load_prm(os.path.join(folder, PRM_CHECKPOINT_FOLDER))
        logger.info(f"PRIME: PRM restored from {folder}.")

    def save_model(self, output_dir: str | None = None, **kwargs: Any) -> None:
        """Save the policy as [`~transformers.Trainer.save_model`] does, and the PRM in `<output_dir>/prm` (inside a
        checkpoint, the PRM was already written by `save_extra_state`).

        Args:
            output_dir (`str`, *optional*):
                Folder; defaults to `args.output_dir`.
            **kwargs:
                Passed to [`~transformers.Trainer.save_model`].
        """
        super().save_model(output_dir, **kwargs)
        if not self.saving_checkpoint:
            self.save_prm(os.path.join(output_dir or self.args.output_dir, PRM_CHECKPOINT_FOLDER))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """Train, as [`~transformers.Trainer.train`]; a checkpoint to resume from must be whole (trainer state and
        PRM of the same step), or training does not start.

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*):
                A checkpoint folder, or `True` for the last one of `args.output_dir`.
            **kwargs:
                Passed to [`~transformers.Trainer.train`].

        Returns:
            [`~transformers.trainer_utils.TrainOutput`].

        Raises:
            ValueError: The checkpoint is incomplete (the message names the last complete one).
        """
        if resume_from_checkpoint is True and os.path.isdir(self.args.output_dir):
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        if isinstance(resume_from_checkpoint, str):
            check_prime_checkpoint(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
