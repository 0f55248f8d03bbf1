r"""[`PRMReward`]: any PRM trl-erprm can load, as a reward function of [`~trl.GRPOTrainer`] (and `RLOOTrainer`).

A completion is cut into steps with the step format the PRM was trained with ([`~trl_erprm.steps.StepFormat`]: its
`step_separator`, and its tag when the completion writes it), every step is scored by the PRM through the evaluation
scorers ([`~trl_erprm.evaluation.scorers`]: token classification, LM head, implicit), and the step scores become one
reward per completion with a named aggregation ([`~trl_erprm.functional.STEP_AGGREGATIONS`]: `min`, `last`, `prod`,
`mean`, ...). The same object serves RAFT (score sampled solutions) and [`~trl_erprm.grpo.PRMGRPOTrainer`] (per-step
rewards of process-supervised GRPO).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from .data.outcome import completion_text
from .steps import STEP_SPLITTERS, StepFormat, split_steps


__all__ = ["PRMReward", "prompt_text"]

#: Architectures a PRM path may have (an implicit PRM is a causal LM too: its prm_config.json or `prm_type="implicit"` says so).
_PRM_ARCHITECTURE_SUFFIXES = ("ForTokenClassification", "ForCausalLM", "LMHeadModel")


def prompt_text(prompt: str | list[dict], index: int = 0) -> str:
    """The text a PRM reads before the steps: a standard prompt as is, the content of the last user message of a
    conversational one.

    Args:
        prompt (`str` or `list[dict]`):
            A standard or conversational prompt.
        index (`int`, *optional*, defaults to `0`):
            Row index, quoted in errors.

    Returns:
        `str`: The prompt text.

    Raises:
        `ValueError`: A conversational prompt without a user message with text content, or another type.
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        users = [m.get("content") for m in prompt if m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
        raise ValueError(
            f"Row {index}: the conversational prompt has no user message with text content (roles: "
            f"{[m.get('role') for m in prompt]}). Pass prompt_column=<a dataset column with the problem text>."
        )
    raise ValueError(f"Row {index}: a prompt must be a string or a list of messages, got {type(prompt).__name__}.")


def _check_prm_path(path: str, prm_type: str, trust_remote_code: bool) -> None:
    """Refuse, before loading weights, a PRM path whose architecture no scorer reads. A folder whose `prm_config.json`
    records its head was saved by a trl-erprm trainer and is read as recorded (a PEFT adapter folder has no model
    config to check)."""
    from .models import load_config, load_prm_config

    if prm_type == "implicit" or load_prm_config(path) is not None:
        return

    architectures = getattr(load_config(path, trust_remote_code=trust_remote_code), "architectures", None) or []
    if architectures and not any(a.endswith(_PRM_ARCHITECTURE_SUFFIXES) for a in architectures):
        raise ValueError(
            f"The PRM {path} is a {', '.join(architectures)}: PRMReward reads a token-classification PRM "
            "(...ForTokenClassification with 2 labels, TRL's PRMTrainer / ERPRMTrainer) or a causal LM read at a step "
            "tag (...ForCausalLM, Math-Shepherd / ER-PRM style). For an implicit PRM pass prm_type='implicit'."
        )


def _check_step_tag(scorer) -> None:
    """An LM-head PRM reads its +/- logits at ONE tag token: a tag the tokenizer splits cannot be read."""
    tag, tokenizer = getattr(scorer, "step_tag", None), getattr(scorer, "tokenizer", None)
    if not tag or tokenizer is None:
        return
    ids = tokenizer.encode(tag, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"step_tag={tag!r} is {len(ids)} tokens for the PRM's tokenizer ({pieces}): an LM-head PRM reads its good / "
            "bad logits at one tag token. Pass the tag the PRM was trained with (mind the leading space: ' ки' and "
            "'ки' are different tokens), or a token-classification PRM."
        )


class PRMReward:
    r"""A process reward model as a GRPO reward function: one float per completion, from its step scores.

    A plain callable object, not an `nn.Module` (GRPOTrainer would treat a module as a sequence classifier). Each call
    scores its completions in batches of the scorer's `batch_size`, under `torch.no_grad`, with the PRM frozen and in
    eval mode on `device` (by default the device accelerate gives this process, so under `accelerate launch` every
    process scores its own completions on its own GPU).

    Steps: a completion is cut with the step format of the PRM: `StepFormat(step_separator)` (the separator the PRM
    was trained with; for an LM-head PRM whose completions also carry its step tag, `StepFormat(step_separator, tag)`),
    or with a named rule (`split_method`, one of [`~trl_erprm.steps.STEP_SPLITTERS`]). The PRM reads the prompt text
    (a standard prompt, the last user message of a conversational one, or the dataset column `prompt_column`) and the
    steps, laid out as it was trained (see the scorers).

    Defined values: a completion with no step (empty or blank) gets `empty_value` (default `0.0`, the lowest step
    probability: ER-PRM's RAFT scores an untagged solution 0); `None` leaves it to GRPO, which ignores a `None`
    reward in its weighted sum. Steps past the PRM's `max_length` are not scored; the completion is aggregated over
    the steps that were. Logged through GRPO's `log_metric` (averaged over processes and logging steps):
    `<name>/step_score/mean` (over the scored steps), `<name>/steps_per_completion` and `<name>/no_step_fraction`;
    not when the trainer is a [`~trl_erprm.grpo.PRMGRPOTrainer`] whose PRM this is, which logs the same figures once,
    as `prm/step_reward/mean`, `prm/steps_per_completion` and `prm/no_step_fraction`.

    Args:
        prm (`str`, scorer or [`~trl_erprm.ImplicitPRM`]):
            A PRM folder or Hub id (loaded with [`~trl_erprm.evaluation.scorers.load_scorer`], whose conventions the
            overrides below refine), a scorer with `score(prompts, steps) -> list[list[float]]`
            (`TokenClassificationScorer`, `LMHeadScorer`, `ImplicitPRMScorer`, or your own), or an `ImplicitPRM`.
        aggregation (`str`, *optional*, defaults to `"min"`):
            How the step scores become one reward, one of [`~trl_erprm.functional.STEP_AGGREGATIONS`].
        step_separator (`str`, *optional*):
            Override of the text that ends a step (default: the PRM's own, read from the scorer).
        split_method (`str`, *optional*):
            Cut completions with this named rule instead of the PRM's step format.
        empty_value (`float` or `None`, *optional*, defaults to `0.0`):
            Reward of a completion with no step.
        prompt_column (`str`, *optional*):
            A dataset column holding the text the PRM reads as the prompt (GRPOTrainer passes every column).
        device (`str` or `torch.device`, *optional*):
            Where the PRM runs; default: accelerate's device of this process, resolved at the first call.
        name (`str`, *optional*, defaults to `"prm_reward"`):
            The reward's name in GRPO's logs (`rewards/<name>/mean`).
        prm_type (`str`, *optional*, defaults to `"auto"`):
            When `prm` is a path: `"auto"`, `"token_classification"`, `"lm_head"` or `"implicit"`.
        **scorer_kwargs:
            When `prm` is a path: any other argument of `load_scorer` (`step_tag`, `good_token`, `bad_token`,
            `ref_model`, `beta`, `implicit_value`, `batch_size`, `max_length`, `dtype`, `trust_remote_code`); `None`
            values are left to `load_scorer`.

    Raises:
        `ValueError`: An unknown aggregation or split method; a PRM path whose architecture is neither a token
            classifier nor a causal LM (without `prm_type="implicit"`); an LM-head PRM whose step tag the tokenizer
            splits into several tokens, or whose good / bad token is not one token.

    Example:
    ```python
    reward = PRMReward("path/to/er-prm", aggregation="min")
    trainer = GRPOTrainer(model="Qwen/Qwen2.5-Math-1.5B-Instruct", reward_funcs=[reward, accuracy_reward], ...)
    ```
    """

    def __init__(
        self,
        prm,
        aggregation: str = "min",
        step_separator: str | None = None,
        split_method: str | None = None,
        empty_value: float | None = 0.0,
        prompt_column: str | None = None,
        device: str | torch.device | None = None,
        name: str = "prm_reward",
        prm_type: str = "auto",
        **scorer_kwargs: Any,
    ):
        from .functional import STEP_AGGREGATIONS

        if aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"Unknown aggregation {aggregation!r}; choose one of {sorted(STEP_AGGREGATIONS)}.")
        if split_method is not None and split_method not in STEP_SPLITTERS:
            raise ValueError(f"Unknown split_method {split_method!r}; choose one of {sorted(STEP_SPLITTERS)}.")
        if step_separator is not None and not step_separator:
            raise ValueError("step_separator must be a non-empty string (or None for the PRM's own).")
        self.scorer = self._make_scorer(prm, prm_type, step_separator, scorer_kwargs)
        _check_step_tag(self.scorer)
        for model in self._models():
            model.eval().requires_grad_(False)
        self.aggregation = aggregation
        self.split_method = split_method
        self.empty_value = empty_value
        self.prompt_column = prompt_column
        self.device = torch.device(device) if device is not None else None
        self._placed = False
        self.__name__ = name
        separator = step_separator or self._scorer_separator()
        tag = getattr(self.scorer, "step_tag", "") or ""
        self.step_format = StepFormat(separator, tag=tag) if separator else None
        self.last_call: tuple[list[str], list[str], list[list[float]]] | None = None

    # -- the PRM ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _make_scorer(prm, prm_type: str, step_separator: str | None, scorer_kwargs: dict):
        if isinstance(prm, (str, os.PathLike)):
            from .evaluation.scorers import load_scorer

            kwargs = {k: v for k, v in scorer_kwargs.items() if v is not None}
            _check_prm_path(str(prm), prm_type, kwargs.get("trust_remote_code", False))
            if step_separator is not None:
                kwargs["step_separator"] = step_separator
            return load_scorer(str(prm), prm_type=prm_type, **kwargs)
        if any(v is not None for v in scorer_kwargs.values()):
            raise ValueError(
                f"{sorted(k for k, v in scorer_kwargs.items() if v is not None)} configure the loading of a PRM path; the PRM given is already a "
                f"{type(prm).__name__}. Set them on it instead."
            )
        if hasattr(prm, "score_steps") and hasattr(prm, "step_separator") and not hasattr(prm, "score"):
            from .evaluation.scorers import ImplicitPRMScorer

            return ImplicitPRMScorer(prm)
        if not callable(getattr(prm, "score", None)):
            raise TypeError(
                f"prm must be a PRM path, a scorer with score(prompts, steps) or an ImplicitPRM, got {type(prm)}."
            )
        return prm

    def _scorer_separator(self) -> str | None:
        implicit = getattr(self.scorer, "prm", None)
        if implicit is not None and hasattr(implicit, "step_separator"):
            return implicit.step_separator
        return getattr(self.scorer, "step_separator", "\n")

    def _models(self) -> list[torch.nn.Module]:
        """The PRM's modules (the model, and an implicit PRM's separate reference)."""
        owner = getattr(self.scorer, "prm", self.scorer)
        models = [getattr(owner, name, None) for name in ("model", "ref_model")]
        return [m for m in models if isinstance(m, torch.nn.Module)]

    def _place(self) -> None:
        """Put the PRM on its device once: the given one, else accelerate's device of this process."""
        if self._placed:
            return
        if self.device is None:
            from accelerate import PartialState

            self.device = PartialState().device
        for model in self._models():
            if not getattr(model, "hf_device_map", None):  # a model dispatched over devices stays where it is
                model.to(self.device)
        self._placed = True

    # -- steps --------------------------------------------------------------------------------------------------------

    def split(self, text: str) -> list[str]:
        """Cut a completion into the steps the PRM scores.

        Args:
            text (`str`):
                The completion.

        Returns:
            `list[str]`: The non-empty steps, stripped (none for a blank completion).
        """
        if self.split_method is not None:
            return split_steps(text, self.split_method)
        if self.step_format is None:  # an implicit PRM without separator: the whole completion is one step
            return [text.strip()] if text.strip() else []
        fmt = self.step_format
        if fmt.tag and fmt.tag not in text:  # a policy that does not write the PRM's tag: cut at the separator only
            fmt = StepFormat(fmt.separator) if fmt.separator else None
        return fmt.split(text) if fmt is not None else ([text.strip()] if text.strip() else [])

    def split_with_ends(self, text: str) -> tuple[list[str], list[int]]:
        """[`split`] a completion and give the character where each step ends: the last character before the next
        step starts (the separator, a tag and whitespace between two steps belong to the step they close), the last
        character of the text for the last step.

        Args:
            text (`str`):
                The completion.

        Returns:
            `tuple[list[str], list[int]]`: The steps and, per step, the index of its last character.
        """
        steps = self.split(text)
        starts, cursor = [], 0
        for step in steps:
            start = text.find(step, cursor)
            if start < 0:  # a rule that rewrites its steps: fall back to even positions (never for the built-ins)
                start = cursor
            starts.append(start)
            cursor = start + len(step)
        ends = [max(nxt - 1, start) for start, nxt in zip(starts, starts[1:])] + ([len(text) - 1] if steps else [])
        return steps, ends

    # -- scoring ------------------------------------------------------------------------------------------------------

    def prm_prompts(self, prompts: Sequence, prompt_texts: Sequence[str] | None = None) -> list[str]:
        """The prompt texts the PRM reads.

        Args:
            prompts (`Sequence`):
                Standard or conversational prompts.
            prompt_texts (`Sequence[str]`, *optional*):
                The values of `prompt_column`, when the caller has them; they replace the prompts.

        Returns:
            `list[str]`: One text per prompt.
        """
        if prompt_texts is not None:
            bad = [i for i, p in enumerate(prompt_texts) if not isinstance(p, str)]
            if bad:
                raise ValueError(
                    f"Row {bad[0]}: prompt_column {self.prompt_column!r} holds a {type(prompt_texts[bad[0]]).__name__}"
                    ", not the problem text; name a column of strings."
                )
            return list(prompt_texts)
        return [prompt_text(p, i) for i, p in enumerate(prompts)]

    def score_steps(self, prompts: Sequence, completions: Sequence, prompt_texts: Sequence[str] | None = None):
        """Per-step scores of every completion.

        Args:
            prompts (`Sequence`):
                One standard or conversational prompt per completion.
            completions (`Sequence`):
                Standard completions (strings) or conversational ones (one assistant message).
            prompt_texts (`Sequence[str]`, *optional*):
                The prompt texts the PRM reads, replacing `prompts` (see [`prm_prompts`]).

        Returns:
            `list[list[float]]`: Per completion, one score per step the PRM scored (none for a completion without
            step).
        """
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts for {len(completions)} completions: pass one prompt each.")
        texts = self.prm_prompts(prompts, prompt_texts)
        steps = [self.split(completion_text(c, i)) for i, c in enumerate(completions)]
        self._place()
        with torch.no_grad():
            scores = self.scorer.score(texts, steps)
        self.last_call = (texts, [completion_text(c, i) for i, c in enumerate(completions)], scores)
        return scores

    def aggregate(self, step_scores: Sequence[Sequence[float]]) -> list[float | None]:
        """One reward per completion from its step scores.

        Args:
            step_scores (`Sequence[Sequence[float]]`):
                Per completion, its step scores.

        Returns:
            `list[float | None]`: The aggregated scores; `empty_value` for a completion without a scored step.
        """
        from .evaluation.bon import aggregate_candidate_scores

        values = aggregate_candidate_scores([list(s) for s in step_scores], self.aggregation)
        return [self.empty_value if not s else v for s, v in zip(step_scores, values)]

    def __call__(self, prompts: Sequence, completions: Sequence, completion_ids=None, **kwargs) -> list[float | None]:
        """Score completions as a GRPOTrainer reward function.

        Args:
            prompts (`list[str]` or `list[list[dict]]`):
                One standard or conversational prompt per completion.
            completions (`list[str]` or `list[list[dict]]`):
                The completions.
            completion_ids (`list[list[int]]`, *optional*):
                Ignored: the PRM re-tokenizes the steps with its own tokenizer.
            **kwargs:
                Dataset columns (`prompt_column` is read from them) and GRPO's extras (`log_metric` is used).

        Returns:
            `list[float | None]`: One reward per completion.
        """
        column = None
        if self.prompt_column is not None:
            if self.prompt_column not in kwargs:
                raise ValueError(
                    f"PRMReward: prompt_column={self.prompt_column!r} is not a column of the dataset (columns passed: "
                    f"{sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))})."
                )
            column = kwargs[self.prompt_column]
        step_scores = self.score_steps(prompts, completions, column)
        rewards = self.aggregate(step_scores)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and step_scores and not self._step_figures_logged_by(log_metric):
            flat = [v for s in step_scores for v in s if not math.isnan(v)]
            if flat:
                log_metric(f"{self.__name__}/step_score/mean", sum(flat) / len(flat))
            log_metric(f"{self.__name__}/steps_per_completion", sum(len(s) for s in step_scores) / len(step_scores))
            log_metric(f"{self.__name__}/no_step_fraction", sum(not s for s in step_scores) / len(step_scores))
        return rewards

    def _step_figures_logged_by(self, log_metric) -> bool:
        """Whether the trainer calling this reward logs its step figures itself: a PRMGRPOTrainer whose PRM this is
        (`prm/step_reward/mean`, `prm/steps_per_completion`, `prm/no_step_fraction`, the same figures over the steps
        that enter its advantages)."""
        from ._compat import log_metric_owner

        trainer = log_metric_owner(log_metric)
        if getattr(trainer, "prm", None) is not self:
            return False
        from .grpo.prm_grpo_trainer import PRMGRPOTrainer

        return isinstance(trainer, PRMGRPOTrainer)

    def __repr__(self) -> str:
        return (
            f"PRMReward({type(self.scorer).__name__}, aggregation={self.aggregation!r}, "
            f"step_format={self.step_format!r}, split_method={self.split_method!r}, empty_value={self.empty_value})"
        )
