r"""PRL (Yao, Wang, Zhang 2026, arXiv:2601.10201) for an unmodified [`~trl.GRPOTrainer`]: per-step advantages from the
policy's own KL to the reference, with no reward model.

The advantage of step `k` is `R_t = A_i - (1/eta) * S_t` at the step's last token, with `A_i` GRPO's own outcome
advantage and `S_t` the policy's log-ratio to the reference summed over the remaining tokens. The callback reaches the
rollouts as [`~trl_erprm.prime.PRIMECallback`] does (see [`trl_erprm.rollout_hook`]); the math is in
[`trl_erprm.functional`].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .functional import prl_advantages, resolve_eta, step_end_mask_from_token_ids
from .rollout_hook import _global_mean, _old_logps, _policy_tokenizer, _RolloutHook


__all__ = ["PRLCallback", "PRLConfig", "separator_token_ids"]


@dataclass
class PRLConfig:
    r"""Configuration of [`PRLCallback`].

    Parameters:
        eta (`float`, *optional*, defaults to `100.0`):
            Entropy-regularisation coefficient of PRL: the KL correction is scaled by `1/eta` (the paper uses
            100-200). `float("inf")` removes it (plain GRPO advantages).
        step_separator (`str` or `None`, *optional*, defaults to `"\n"`):
            Text that ends a step: every vocabulary token whose text contains it ends a step (see
            [`separator_token_ids`]). `None` to split only every `step_len` tokens.
        step_len (`int` or `None`, *optional*, defaults to `None`):
            Also end a step every `step_len` completion tokens (the paper uses 64-256).
    """

    eta: float = 100.0
    step_separator: str | None = "\n"
    step_len: int | None = None

    def __post_init__(self):
        self.eta = resolve_eta(self.eta)
        if self.eta <= 0:
            raise ValueError(f"PRLConfig: eta must be > 0 (the KL correction is scaled by 1/eta), got {self.eta}.")
        if self.step_separator is None and self.step_len is None:
            raise ValueError("PRLConfig: set step_separator (e.g. '\\n'), step_len (e.g. 128), or both.")
        if self.step_separator is not None and not self.step_separator:
            raise ValueError("PRLConfig: step_separator must be a non-empty string or None.")
        if self.step_len is not None and self.step_len < 1:
            raise ValueError(f"PRLConfig: step_len must be >= 1, got {self.step_len}.")


def separator_token_ids(tokenizer, separator: str = "\n") -> list[int]:
    r"""Ids of every vocabulary token whose text contains `separator`, special tokens excluded.

    Byte-level tokenizers merge newlines with their neighbours (`".\n\n"`, `"\n\n"`, `":\n"`), so a step can end at
    many different tokens. Never use `tokenizer.encode(separator)[0]`: for tokenizers that prepend a BOS token it is the
    BOS id, which never occurs inside a completion, and every completion would collapse into one step.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.
        separator (`str`, *optional*, defaults to `"\n"`):
            Text that ends a step.

    Returns:
        `list[int]`: Sorted token ids; empty if no token contains the separator.
    """
    if not separator:
        raise ValueError("separator must be a non-empty string.")
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [i for i, text in zip(ids, texts) if separator in text]


class PRLCallback(_RolloutHook):
    r"""PRL for a stock [`~trl.GRPOTrainer`]: per-step advantages from the policy's own KL to the reference.

    Per training generation batch, with `A_i` GRPO's own (group-normalised, gathered-then-sliced) advantage:
    `S_t = sum_{j>=t} (log pi_old(a_j) - log pi_ref(a_j))` over the remaining completion tokens,
    `R_t = A_i - S_t / eta`, and every token of a step gets `R` at the step's last token
    ([`~trl_erprm.functional.prl_advantages`]). Steps end at every token whose text contains `step_separator`
    (found by scanning the vocabulary, so never the BOS id) and/or every `step_len` tokens, and at the last token.

    `pi_ref` is GRPO's reference: GRPOTrainer computes reference log-probs only when `beta != 0`, so PRL needs
    `GRPOConfig(beta > 0)`; a tiny value (e.g. `1e-4`) keeps GRPO's own KL loss negligible while PRL's KL correction
    works through the advantages. `pi_old` is GRPO's `old_per_token_logps`, or one extra forward pass of the policy
    when GRPO skipped them (then the current policy is the sampling policy). Both are taken at GRPO's `temperature`.
    Every row is local, so no cross-process communication beyond GRPO's own is needed.

    Args:
        trainer ([`~trl.GRPOTrainer`]):
            The trainer, already constructed with `beta > 0`.
        args ([`PRLConfig`], *optional*):
            Options; defaults to `PRLConfig()`.

    Attributes:
        args ([`PRLConfig`]): The options.
        separator_ids (`list[int]`): Token ids that end a step.
        enabled (`bool`): Set to `False` to pass GRPO's own advantages through.
        last_batch (`dict[str, torch.Tensor]`): Tensors of the last processed batch: `advantages` `(B, T)`,
            `grpo_advantages` `(B,)`, `step_ends` `(B, T)`, `old_logps` `(B, T)`, `ref_logps` `(B, T)`,
            `completion_ids`, `completion_mask`.

    Logged metrics (train): `prl/kl_to_go/mean` (`S` at the first token), `prl/steps_per_completion`,
    `prl/advantages/mean`, `prl/advantages/std`.
    """

    metric_prefix = "prl"

    def __init__(self, trainer, args: PRLConfig | None = None):
        super().__init__(trainer)
        self.args = args if args is not None else PRLConfig()
        if trainer.beta == 0.0:
            raise ValueError(
                "PRL needs the reference log-probs that GRPOTrainer computes only when beta != 0. Set "
                "GRPOConfig(beta=1e-4) (or larger): PRL's own KL correction goes through the advantages."
            )
        if getattr(trainer, "tools", None):
            raise ValueError("PRLCallback does not support tool calling (tool tokens would split the steps).")
        self.separator_ids: list[int] = []
        if self.args.step_separator is not None:
            self.separator_ids = separator_token_ids(_policy_tokenizer(trainer), self.args.step_separator)
            if not self.separator_ids:
                raise ValueError(
                    f"No token of the policy's vocabulary contains step_separator={self.args.step_separator!r}. Use "
                    "another separator or split with step_len."
                )
        self._attach()

    def _process(self, output: dict, rewards_per_func: torch.Tensor) -> dict:
        trainer, args = self.trainer, self.args
        accelerator = trainer.accelerator
        completion_ids, mask = output["completion_ids"], output["completion_mask"]
        old = _old_logps(trainer, output)
        ref = output["ref_per_token_logps"].float()
        ends = step_end_mask_from_token_ids(completion_ids, mask, self.separator_ids, args.step_len)
        grpo_advantages = output["advantages"]
        advantages = prl_advantages(grpo_advantages, old, ref, mask, ends, args.eta)
        output["advantages"] = advantages

        valid = mask.bool()
        kl_to_go = ((old - ref) * mask).sum(-1)
        self._log("kl_to_go/mean", _global_mean(accelerator, kl_to_go.sum().item(), len(kl_to_go)))
        self._log("steps_per_completion", _global_mean(accelerator, ends.sum().item(), len(ends)))
        n = valid.sum().item()
        mean = _global_mean(accelerator, advantages[valid].sum().item(), n)
        var = _global_mean(accelerator, ((advantages[valid] - mean) ** 2).sum().item(), n)
        self._log("advantages/mean", mean)
        self._log("advantages/std", var**0.5)
        self.last_batch = {
            "advantages": advantages,
            "grpo_advantages": grpo_advantages,
            "step_ends": ends,
            "old_logps": old,
            "ref_logps": ref,
            "completion_ids": completion_ids,
            "completion_mask": mask,
        }
        return output
