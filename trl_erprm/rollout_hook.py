r"""The plumbing shared by [`~trl_erprm.prime.PRIMECallback`] and [`~trl_erprm.prl.PRLCallback`] (internal).

A [`~transformers.TrainerCallback`] never sees rollouts, so both callbacks take the trainer and replace two methods *on
the trainer instance* (not on its class, and without subclassing): `_calculate_rewards` is wrapped to keep the rewards
it returns (already gathered over processes, one row per completion of the global batch), and
`_generate_and_score_completions` is wrapped to replace the `(B,)` advantages of its output by `(B, T)` ones, which
`GRPOTrainer._compute_loss` accepts as they are. Group statistics are computed on data gathered from all processes and
then sliced back to the local rows, exactly as GRPOTrainer slices its own advantages. Checked on trl 1.13.0 and 1.16.0.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback


#: Marker attribute set on a trainer that has a PRIME or PRL callback attached.
_HOOK_ATTRIBUTE = "_trl_erprm_rollout_hook"


def _policy_tokenizer(trainer):
    return getattr(trainer, "_tokenizer", None) or trainer.processing_class


def _global_mean(accelerator, total: float, count: float) -> float:
    stats = accelerator.gather(torch.tensor([[total, count]], dtype=torch.float64, device=accelerator.device))
    total, count = stats.sum(0).tolist()
    return total / count if count > 0 else 0.0


def _old_logps(trainer, output: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
    """`(n, T)` log-probs of the completions (all, or the given rows) under the sampling policy: GRPO's
    `old_per_token_logps`, or one forward pass without gradient (GRPO skips them when the policy has not moved since
    sampling, in which case the current policy *is* the sampling policy)."""
    old = output.get("old_per_token_logps")
    if old is not None:
        return (old if rows is None else old[rows]).float()
    input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    if rows is not None:
        input_ids, attention_mask = input_ids[rows], attention_mask[rows]
    T = output["completion_ids"].shape[1]
    if len(input_ids) == 0:
        return torch.zeros(0, T, device=input_ids.device)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, T, batch_size=trainer.args.per_device_train_batch_size
        )
    return logps.float()


class _RolloutHook(TrainerCallback):
    """Attach to a GRPOTrainer instance and post-process each training generation batch (see the module docstring).

    A subclass sets `metric_prefix`, implements `_process(output, rewards_per_func) -> output` (the output of
    `_generate_and_score_completions` for the local rows, and the rewards of the global batch, `(B_global,
    num_reward_funcs)`) and calls `self._attach()` at the end of its constructor, once its checks have passed.
    """

    metric_prefix = ""

    def __init__(self, trainer):
        from trl import GRPOTrainer

        if not isinstance(trainer, GRPOTrainer):
            raise TypeError(f"{type(self).__name__} needs a trl.GRPOTrainer, got {type(trainer).__name__}.")
        for name in ("_generate_and_score_completions", "_calculate_rewards", "_metrics"):
            if not hasattr(trainer, name):
                raise TypeError(
                    f"This GRPOTrainer has no `{name}`: {type(self).__name__} supports trl 1.13.0 to 1.16.x."
                )
        if getattr(trainer, _HOOK_ATTRIBUTE, None) is not None:
            raise ValueError(
                f"This trainer already has a {type(getattr(trainer, _HOOK_ATTRIBUTE)).__name__} attached; attach one "
                "PRIME or PRL callback per trainer (call `.remove()` on the old one first)."
            )
        if getattr(trainer, "use_liger_kernel", False) and hasattr(trainer, "compute_liger_loss"):
            raise ValueError(
                f"{type(self).__name__} needs per-token advantages, which the Liger GRPO loss of this TRL version does "
                "not accept. Set `use_liger_kernel=False` in GRPOConfig."
            )
        self.trainer = trainer
        #: Set to `False` to pass GRPO's own advantages through unchanged (e.g. to time a step without the callback).
        self.enabled = True
        #: Tensors of the last processed generation batch (local rows), for inspection and tests.
        self.last_batch: dict[str, torch.Tensor] = {}
        self._captured_rewards: torch.Tensor | None = None
        self._originals = {
            "_generate_and_score_completions": trainer._generate_and_score_completions,
            "_calculate_rewards": trainer._calculate_rewards,
        }

    def _attach(self) -> None:
        """Install the wrappers on the trainer instance and register the callback."""
        trainer = self.trainer
        generate_and_score = self._originals["_generate_and_score_completions"]
        calculate_rewards = self._originals["_calculate_rewards"]

        def _calculate_rewards(inputs, prompts, completions, completion_ids_list):
            rewards_per_func = calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._captured_rewards = rewards_per_func  # (B_global, num_reward_funcs), gathered by TRL
            return rewards_per_func

        def _generate_and_score_completions(inputs):
            self._captured_rewards = None
            output = generate_and_score(inputs)
            if self.enabled and trainer.model.training:
                if self._captured_rewards is None:
                    raise RuntimeError(
                        "GRPOTrainer._generate_and_score_completions did not call _calculate_rewards: this TRL version "
                        f"is not supported by {type(self).__name__}."
                    )
                output = self._process(output, self._captured_rewards)
            return output

        trainer._calculate_rewards = _calculate_rewards
        trainer._generate_and_score_completions = _generate_and_score_completions
        setattr(trainer, _HOOK_ATTRIBUTE, self)
        trainer.add_callback(self)

    def remove(self) -> None:
        """Detach from the trainer: restore its methods and unregister the callback."""
        for name in self._originals:
            self.trainer.__dict__.pop(name, None)
        if getattr(self.trainer, _HOOK_ATTRIBUTE, None) is self:
            delattr(self.trainer, _HOOK_ATTRIBUTE)
        self.trainer.remove_callback(self)

    def _log(self, name: str, value: float) -> None:
        self.trainer._metrics["train"][f"{self.metric_prefix}/{name}"].append(float(value))

    def _process(self, output: dict, rewards_per_func: torch.Tensor) -> dict:
        raise NotImplementedError
