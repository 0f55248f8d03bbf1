from __future__ import annotations

import textwrap
from typing import Any

import torch
from trl import GRPOTrainer

from .._compat import policy_tokenizer
from ..data.outcome import completion_text
from ..prm_reward import PRMReward
from ..steps import locate_chars
from .mixin import ProcessAdvantageMixin
from .prm_grpo_config import PRMGRPOConfig


def completion_offsets(tokenizer, token_ids: list[int], text: str) -> list[tuple[int, int]]:
    """Character span of every sampled token in the completion's decoded text.

    The text is re-tokenized with offsets; when that gives back the sampled ids (special tokens, such as the EOS,
    left out), its offsets are used, the special tokens getting empty spans at the end. Otherwise (a sampled
    tokenization that is not the tokenizer's own), each token spans the characters its prefix decodes to.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.
        token_ids (`list[int]`):
            The sampled completion ids (up to and including the EOS, no padding).
        text (`str`):
            Their decoding with `skip_special_tokens=True`.

    Returns:
        `list[tuple[int, int]]`: One `(start, end)` per token.
    """
    special = set(tokenizer.all_special_ids)
    content = [i for i in token_ids if i not in special]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trailing = len(token_ids) - len(content)
    if encoded["input_ids"] == content and token_ids[: len(content)] == content:
        return [tuple(span) for span in encoded["offset_mapping"]] + [(len(text), len(text))] * trailing
    offsets, previous = [], 0
    for k in range(len(token_ids)):
        length = len(
            tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
        offsets.append((previous, max(length, previous)))
        previous = max(length, previous)
    return offsets


class PRMGRPOTrainer(ProcessAdvantageMixin, GRPOTrainer):
    r"""Trainer for process-supervised GRPO ([DeepSeekMath](https://huggingface.co/papers/2402.03300), section 4.1.3)
    with an explicit or implicit PRM.

    The only change w.r.t. [`~trl.GRPOTrainer`] is the advantage of a training generation batch (see
    [`~trl_erprm.grpo.mixin.ProcessAdvantageMixin`]). Each process cuts its completions into steps with the PRM's
    step format ([`~trl_erprm.PRMReward.split_with_ends`]) and scores every step with the PRM (on its own rows, on its
    own device, without gradient); step `j` of completion `i` ends at the policy token holding its last character (the
    separator after it), the last step at the completion's last token. On the gathered batch, the `"process_supervision"`
    estimator ([`~trl_erprm.functional.process_supervision_advantages`]) normalises all step rewards of a group with
    their mean and standard deviation and gives token `t` the sum of the normalised rewards of the steps that end at
    or after it; `outcome_coef` times GRPO's own (outcome) advantage is added to every token. Each process then keeps
    its rows: a run on several processes gives the advantages of a run on one.

    A completion in which the PRM scores no step (empty, or every step past `prm_max_length`) has one step, ending at
    its last token, rewarded `empty_step_reward`.

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            The policy, as for [`~trl.GRPOTrainer`].
        reward_funcs (reward function or `list`, *optional*):
            GRPO's reward functions (their advantage enters with `outcome_coef`). `None`: the PRM itself, as a
            [`~trl_erprm.PRMReward`] aggregated with `prm_aggregation` (its step scores are then computed once per
            batch, for the reward and for the advantages).
        args ([`~trl_erprm.grpo.PRMGRPOConfig`], *optional*):
            Configuration; defaults to `PRMGRPOConfig("<model name>-PRM-GRPO")`.
        prm ([`~trl_erprm.PRMReward`], `str` or scorer, *optional*):
            The PRM; built from `args.prm_model_name_or_path` (and the other `prm_*` fields) when `None`.
        **kwargs:
            Every other argument of [`~trl.GRPOTrainer`] (`train_dataset`, `processing_class`, `peft_config`, ...), by
            keyword. Tool calling is not supported (tool outputs are not steps of the policy).

    Attributes:
        prm ([`~trl_erprm.PRMReward`]): The PRM and its step format.
        last_batch (`dict[str, torch.Tensor]`): Tensors of the last training generation batch, local rows:
            `advantages` `(B, T)`, `grpo_advantages` `(B,)`, `step_rewards`, `step_ends`, `step_mask` `(B, S)`,
            `completion_ids`, `completion_mask`.

    Logged metrics (train), each figure once: `prm/step_reward/mean` and `prm/steps_per_completion` (over the steps
    that enter the advantages, the `empty_step_reward` step of a completion without scored step included),
    `prm/no_step_fraction` (completions in which the PRM scored no step), `prm/advantages/mean`, `prm/advantages/std`
    (over the completion tokens with loss). When the PRM is also a reward function, GRPO logs its
    `rewards/<name>/mean` and `std`; the [`~trl_erprm.PRMReward`] does not log its step figures again as
    `<name>/step_score/mean`, `<name>/steps_per_completion`, `<name>/no_step_fraction`.
    """

    _tag_names = ["trl", "grpo", "process-supervision", "prm", "trl-erprm"]
    _name = "PRM-GRPO"
    _paper = {
        "title": "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
        "id": "2402.03300",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{shao2024deepseekmath,
                title        = {{DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models}},
                author       = {Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and Mingchuan Zhang and Y. K. Li and Y. Wu and Daya Guo},
                year         = 2024,
                eprint       = {arXiv:2402.03300},
            }"""),
    }
    advantage_estimator = "process_supervision"
    metric_prefix = "prm"

    def __init__(self, model, reward_funcs=None, args: PRMGRPOConfig | None = None, prm=None, **kwargs: Any):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "name_or_path", None) or "model"
            args = PRMGRPOConfig(f"{name.rstrip('/').split('/')[-1]}-PRM-GRPO")
        if not isinstance(args, PRMGRPOConfig):
            raise TypeError(
                f"PRMGRPOTrainer needs a PRMGRPOConfig (a GRPOConfig with the PRM's fields), got {type(args)}."
            )
        if kwargs.get("tools"):
            raise ValueError(
                "PRMGRPOTrainer does not support tool calling (tool outputs are not steps of the policy)."
            )
        self.prm = self._make_prm(prm, args)
        if reward_funcs is None:
            reward_funcs = [self.prm]
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self.check_process_advantages()

    @staticmethod
    def _make_prm(prm, args: PRMGRPOConfig) -> PRMReward:
        if isinstance(prm, PRMReward):
            return prm
        common = {
            "aggregation": args.prm_aggregation,
            "step_separator": args.prm_step_separator,
            "split_method": args.split_method,
            "empty_value": args.empty_step_reward,
            "prompt_column": args.prm_prompt_column,
        }
        if prm is not None:
            return PRMReward(prm, **common)
        if args.prm_model_name_or_path is None:
            raise ValueError("PRMGRPOTrainer needs a PRM: set prm_model_name_or_path or pass prm=PRMReward(...).")
        return PRMReward(
            args.prm_model_name_or_path,
            prm_type=args.prm_type,
            step_tag=args.prm_step_tag,
            good_token=args.prm_good_token,
            bad_token=args.prm_bad_token,
            ref_model=args.prm_ref_model_name_or_path,
            beta=args.prm_beta,
            implicit_value=args.prm_implicit_value,
            batch_size=args.prm_batch_size,
            max_length=args.prm_max_length,
            dtype=args.prm_dtype,
            **common,
        )

    def _step_scores(self, prompts: list, completions: list[str], column) -> list[list[float]]:
        """The PRM's step scores of this process's rows; those of the reward call of this batch when the PRM was
        also a reward function (same prompts and completions), else one scoring pass."""
        last = self.prm.last_call
        if last is not None and last[0] == self.prm.prm_prompts(prompts, column) and last[1] == completions:
            return last[2]
        return self.prm.score_steps(prompts, completions, column)

    def prepare_rollout_batch(self, batch, rollout) -> None:
        """Score the steps of this process's completions and gather `step_rewards`, `step_ends` and `step_mask` into
        `batch.tensors`.

        Args:
            batch ([`~trl_erprm.grpo.advantages.RolloutBatch`]):
                The global batch.
            rollout (`Rollout`):
                This process's rows.
        """
        seen = self.reward_inputs()
        texts = [completion_text(c, i) for i, c in enumerate(seen.completions)]
        column = None
        if self.prm.prompt_column is not None:
            column = [row[self.prm.prompt_column] for row in seen.inputs]
        scores = self._step_scores(seen.prompts, texts, column)
        tokenizer = policy_tokenizer(self)
        # the last token of each completion (its EOS); none for a completion GRPO masked out (truncated, when
        # `mask_truncated_completions`): it has no loss, hence no step
        lengths = rollout.completion_mask.sum(-1).long().tolist()
        rows_rewards, rows_ends, no_step = [], [], 0
        for i, text in enumerate(texts):
            last = lengths[i] - 1
            steps, char_ends = self.prm.split_with_ends(text)
            scored = scores[i][: len(steps)]
            no_step += not scored
            if not scored or last < 0:
                rows_rewards.append([self.args.empty_step_reward] if last >= 0 else [])
                rows_ends.append([max(last, 0)] if last >= 0 else [])
                continue
            ids = rollout.completion_ids[i, : last + 1].tolist()
            ends = locate_chars(completion_offsets(tokenizer, ids, text), char_ends[: len(scored)])
            ends = [min(e, last) for e in ends] or [last]
            if len(scored) == len(steps):
                ends[-1] = last  # the last step ends at the completion's last token (its EOS)
            rows_rewards.append(scored[: len(ends)])
            rows_ends.append(ends)
        S = max([len(r) for r in rows_rewards] + [1])
        device = rollout.completion_ids.device
        rewards = torch.zeros(len(texts), S, dtype=torch.float32, device=device)
        ends = torch.zeros(len(texts), S, dtype=torch.long, device=device)
        mask = torch.zeros(len(texts), S, dtype=torch.bool, device=device)
        for i, (r, e) in enumerate(zip(rows_rewards, rows_ends)):
            rewards[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
            ends[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, : len(r)] = True
        batch.tensors.update(
            step_rewards=self.gather_rows(rewards), step_ends=self.gather_rows(ends), step_mask=self.gather_rows(mask)
        )
        self.last_batch.update(step_rewards=rewards, step_ends=ends, step_mask=mask)
        self._no_step = (no_step, len(texts))

    def process_rollouts(self, output: dict, rewards: torch.Tensor) -> dict:
        """The mixin's step (see [`~trl_erprm.grpo.mixin.ProcessAdvantageMixin.process_rollouts`]), then the metrics.

        Args:
            output (`dict`):
                What GRPOTrainer's generate-and-score step returned for this process's rows.
            rewards (`torch.Tensor`):
                Rewards of the global batch, `(B_global, num_reward_funcs)`.

        Returns:
            `dict`: `output`, with the process-supervised advantages.
        """
        output = super().process_rollouts(output, rewards)
        batch = self.last_batch
        step_mask, valid = batch["step_mask"], batch["completion_mask"].bool()
        advantages = batch["advantages"]
        self.log_rollout_metric(
            "step_reward/mean", self.global_mean(batch["step_rewards"][step_mask].sum().item(), step_mask.sum().item())
        )
        self.log_rollout_metric("steps_per_completion", self.global_mean(step_mask.sum().item(), len(step_mask)))
        self.log_rollout_metric("no_step_fraction", self.global_mean(*self._no_step))
        n = valid.sum().item()
        mean = self.global_mean(advantages[valid].sum().item(), n)
        var = self.global_mean(((advantages[valid] - mean) ** 2).sum().item(), n)
        self.log_rollout_metric("advantages/mean", mean)
        self.log_rollout_metric("advantages/std", var**0.5)
        return output
