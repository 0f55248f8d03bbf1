"""ER-PRM Monte-Carlo rollout labeling as a resumable, data-parallel job.

For each stepwise row (`prompt`, `completions` = steps, gold answer), every step prefix `a^[l]` (`l < L`) is
continued `num_rollouts` times by the generator, each continuation is graded against the gold answer with
math-verify, and the step's label is `er_label(outcomes, eta)` (ER-PRM, arXiv 2412.11006, eq. 1). The last step is
labelled by grading the full solution (one outcome, no rollouts), as in the reference implementation.

The job writes each finished batch of rows to its output folder (a [`~trl_erprm.jobs.JobStore`]); it can be killed
at any moment and started again with the same arguments, and it runs data-parallel under `accelerate launch`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import jobs
from ..data.converters import convert_prm800k, gsm8k_to_stepwise
from ..steps import StepFormat
from .backends import BACKENDS, Sampling, derive_seed
from .grading import MathVerifyGrader
from .labeler_config import ERPRMLabelerConfig
from .rollout_cache import ROLLOUT_CACHE_FORMAT, RolloutCache


logger = logging.getLogger(__name__)

#: Per-row statuses of the output dataset. Only `"ok"` rows have `step_outcomes` and `labels`; the others have
#: `None` there (never a made-up 0 label) and say why in `status_message`.
ROW_STATUSES = (
    "ok",
    "missing_prompt",
    "empty_steps",
    "missing_gold",
    "gold_unparsable",
    "grading_timeout",
    "grading_failed",
    "no_text",
)
#: Format tag of the job folder's records (2: the default rollout prompt asks for the answer in `\boxed{}`; 3: the
#: rollouts of a step prefix are seeded from its content, [`SEED_POLICY`], instead of its row and step).
LABELS_FORMAT = "trl-erprm-labels/3"
#: How the rollouts of a step prefix are seeded: `derive_seed(seed, "prefix", sha256 of its rollout prompt's token
#: ids)`, sample `j` from `derive_seed(that, j)` (transformers) or the engine's stream for that seed (vLLM). Identical
#: prefixes, in any row, job or process, get identical rollouts, which is what makes reusing them exact.
SEED_POLICY = "prefix-content/1"
ROLLOUTS = "rollouts"
DATASET = "dataset"
SUMMARY = "summary.json"
#: Share of rollouts without an extractable final answer above which the job warns (after `_NO_ANSWER_MIN_ROLLOUTS`).
NO_ANSWER_WARNING_SHARE = 0.5
_NO_ANSWER_MIN_ROLLOUTS = 64

#: Grading statuses that count as a graded rollout (reward 1.0 or 0.0); `"timeout"` and `"error"` are left out.
_GRADED = ("correct", "incorrect", "no_answer")
_COUNT_COLUMNS = (
    "num_rollouts",
    "num_empty_rollouts",
    "num_no_answer_rollouts",
    "num_grading_failures",
    "num_grading_timeouts",
)
_OUTPUT_COLUMNS = ("step_outcomes", "labels", "status", "status_message", *_COUNT_COLUMNS)


def labels_from_outcomes(step_outcomes: Sequence[Sequence[float]], eta: float | str) -> list[float]:
    """ER-PRM label of every step from its graded rollouts: `er_label(outcomes_of_step, eta)` per step.

    Args:
        step_outcomes (`list[list[float]]`):
            For each step, the rewards of its rollouts (any number per step, at least one).
        eta (`float` or `str`):
            ER-PRM coefficient or one of `"soft"`, `"hard"`, `"pessimistic"`.

    Returns:
        `list[float]`: One label per step.
    """
    return labels_for_rows([step_outcomes], eta)[0]


def labels_for_rows(rows: Sequence[Sequence[Sequence[float]] | None], eta: float | str) -> list[list[float] | None]:
    """[`labels_from_outcomes`] for many rows at once: the steps of all rows with the same number of rollouts go
    through one vectorised `er_label` call (a job has millions of steps, almost all with `N` rollouts).

    Args:
        rows (`list[list[list[float]] | None]`):
            `step_outcomes` of each row; `None` rows (no labels) stay `None`.
        eta (`float` or `str`):
            ER-PRM coefficient or one of `"soft"`, `"hard"`, `"pessimistic"`.

    Returns:
        `list[list[float] | None]`: The labels of each row.
    """
    import numpy as np

    from ..functional import er_label

    steps = [(r, s, list(outcomes)) for r, row in enumerate(rows) if row is not None for s, outcomes in enumerate(row)]
    groups: dict[int, list[int]] = {}
    for k, (_, _, outcomes) in enumerate(steps):
        groups.setdefault(len(outcomes), []).append(k)
    values = [0.0] * len(steps)
    for members in groups.values():
        labels = er_label(np.array([steps[k][2] for k in members], dtype=np.float64), eta)
        for k, label in zip(members, labels.tolist()):
            values[k] = label
    out: list[list[float] | None] = [None if row is None else [0.0] * len(row) for row in rows]
    for (r, s, _), value in zip(steps, values):
        out[r][s] = value
    return out


def check_row(prompt, steps, gold) -> tuple[str, str]:
    """Status of an input row before any rollout: `("ok", "")` or a failure status of [`ROW_STATUSES`] and why.

    Args:
        prompt (`str`):
            The problem (must be a non-empty string).
        steps (`list[str]`):
            The solution steps (a non-empty list of non-empty strings).
        gold (`str`, `int` or `float`):
            The gold answer (anything but `None` or a blank string).

    Returns:
        `tuple[str, str]`: The status and a message naming the field and the fix.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        return "missing_prompt", "the prompt is missing or empty; give every row its problem text"
    if not isinstance(steps, list | tuple):
        kind = "nothing" if steps is None else f"a {type(steps).__name__} ({steps!r:.40})"
        return "empty_steps", f"the steps column holds {kind}, not a list of steps; give a list of step strings"
    if len(steps) == 0:
        return "empty_steps", "the solution has no steps; split it into a non-empty list of steps"
    for k, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip():
            return "empty_steps", f"step {k} is empty or not a string; drop empty steps when splitting"
    if gold is None or not str(gold).strip():
        return "missing_gold", "the gold answer is missing or empty; fill the gold column or drop the row"
    return "ok", ""


@dataclass
class _Pending:
    """A row being labelled: its input and what is known so far."""

    index: int
    prompt: str
    steps: list[str]
    gold: str
    last_outcome: float = 0.0
    outcomes: list[list[float]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # rollouts: empty, no_answer, failures, timeouts
    no_text_step: int | None = None  # first step whose rollouts all came back empty
    ungraded_step: tuple[int, bool] | None = None  # first step without a graded rollout, and whether all timed out


def _record(index: int, status: str, message: str = "", outcomes=None, rollouts=0, counts=None) -> dict:
    counts = counts or {}
    return {
        "index": index,
        "status": status,
        "status_message": message,
        "step_outcomes": outcomes,
        "num_rollouts": rollouts,
        "num_empty_rollouts": counts.get("empty", 0),
        "num_no_answer_rollouts": counts.get("no_answer", 0),
        "num_grading_failures": counts.get("failures", 0),
        "num_grading_timeouts": counts.get("timeouts", 0),
    }


def _value_kind(value) -> str:
    """Coarse type of a cell, as Arrow sees it: mixing two kinds in one column is what Arrow refuses."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        kinds = sorted({_value_kind(v) for v in value} - {"null"})
        return f"list of {' and '.join(kinds) or 'nothing'}" if len(kinds) <= 1 else "list of mixed types"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def find_mixed_types(rows: Sequence[dict]) -> str | None:
    """The first cell whose type differs from its column's (what makes Arrow refuse the rows), as a message.

    Args:
        rows (`list[dict]`):
            Input rows.

    Returns:
        `str` or `None`: "row 3, column 'completions': ..." naming the row, the column, both types and the fix, or
        `None` when every column holds one type (nulls allowed).
    """
    first: dict[str, tuple[int, str]] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"row {index} is a {type(row).__name__}, not a mapping of column names to values"
        for column, value in row.items():
            kind = _value_kind(value)
            if kind == "list of mixed types":
                return (
                    f"row {index}, column {column!r}: a list mixing types ({[type(v).__name__ for v in value][:6]}); "
                    "make every element a string (e.g. str(step)) or drop the row"
                )
            if kind == "null" or kind.endswith("nothing"):
                continue
            if column not in first:
                first[column] = (index, kind)
            elif first[column][1] != kind:
                where, expected = first[column]
                return (
                    f"row {index}, column {column!r}: {kind} {value!r:.60}, but row {where} has a {expected}; give the "
                    "column one type (e.g. a list of step strings for the steps, str(answer) for the gold) or drop "
                    "the row"
                )
    return None


def _dataset_from_rows(rows: list):
    """`Dataset.from_list`, with an error naming the row, the column and the fix instead of Arrow's."""
    from datasets import Dataset

    try:
        return Dataset.from_list(rows)
    except Exception as error:  # pyarrow.ArrowInvalid / ArrowTypeError / TypeError, depending on the mix
        problem = find_mixed_types(rows)
        if problem is None:
            raise
        raise ValueError(f"The input rows cannot form a dataset: {problem}. (Arrow: {error})") from None


def partial_state():
    """accelerate's `PartialState`, on the CPU (gloo between processes) when there is no accelerator or when the job
    was launched with `accelerate launch --cpu`.

    Returns:
        `accelerate.PartialState`: The process's rank, world size and device.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not accelerator)


class ERPRMLabeler:
    """Label step-split solutions with ER-PRM Monte-Carlo rollouts (arXiv 2412.11006).

    For every row, step `l < L` gets the graded rewards of `num_rollouts` continuations of the prefix `a^[l]`, the
    last step the graded full solution; `labels = er_label(step_outcomes, eta)` per step. [`label`] runs the whole job:
    resumable (results appended to `config.output_dir`), data-parallel under `accelerate launch`, with a progress bar
    and a summary; it returns the labelled `datasets.Dataset` in input order.

    Args:
        config ([`ERPRMLabelerConfig`], *optional*):
            The job's configuration; defaults to `ERPRMLabelerConfig()` updated with `**kwargs`.
        model ([`~transformers.PreTrainedModel`], *optional*):
            An already loaded generator for the `"transformers"` backend (instead of `config.model_name_or_path`).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The generator's tokenizer, used to build the prompts; loaded from the model when `None`.
        backend (*optional*):
            A ready rollout backend (any object with the `generate(prompts, n, sampling, seeds)` method of
            [`~labeling.backends.TransformersBackend`] and a `name`), instead of building one from `config`.
        grader ([`MathVerifyGrader`], *optional*):
            The grader; defaults to `MathVerifyGrader(config.grading_num_workers, config.grading_timeout)`.
        **kwargs:
            Fields of [`ERPRMLabelerConfig`] overriding `config`.

    Example:
    ```python
    from trl_erprm.labeling.labeler import ERPRMLabeler

    labeler = ERPRMLabeler(model_name_or_path="Qwen/Qwen2.5-Math-1.5B-Instruct", backend="vllm", output_dir="labels")
    dataset = labeler.label(stepwise_dataset)  # columns prompt, completions, gold_answer
    ```
    """

    def __init__(
        self,
        config: ERPRMLabelerConfig | None = None,
        model=None,
        tokenizer=None,
        backend=None,
        grader: MathVerifyGrader | None = None,
        **kwargs,
    ):
        config = config if config is not None else ERPRMLabelerConfig()
        if kwargs:
            config = ERPRMLabelerConfig(**{**asdict(config), **kwargs})
        if model is not None and backend is None and config.backend != "transformers":
            raise ValueError(
                f"A model object only feeds the 'transformers' backend (backend={config.backend!r}): pass "
                "model_name_or_path instead, or backend='transformers'."
            )
        if model is not None and config.model_name_or_path is None:
            config = ERPRMLabelerConfig(**{**asdict(config), "model_name_or_path": model.name_or_path})
        if backend is None and model is None and config.model_name_or_path is None:
            raise ValueError("Set model_name_or_path (--model_name_or_path) to the generator's folder or Hub id.")
        self.config = config
        self._model = model
        self._tokenizer = tokenizer
        self._backend = backend
        self._grader = grader
        self.summary: dict | None = None
        self._reset_counts()
        self._rollouts = RolloutCache()  # in memory; `label` opens the job's folder-backed cache
        self._identity = None  # hash of the job arguments that key the rollout cache
        self.sampling = Sampling(config.temperature, config.top_p, config.max_new_tokens)
        self.step_format = StepFormat(config.step_separator)

    def _reset_counts(self) -> None:
        self.generation_seconds = 0.0  # time spent in the backend's `generate` by the last `label` call
        self.rollouts_generated = self.generated_tokens = 0
        self.prefixes_seen = self.prefixes_rolled_out = 0

    # -- lazily built parts ------------------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        """Name of the rollout backend (part of the job's identity)."""
        return getattr(self._backend, "name", None) or self.config.backend

    @property
    def tokenizer(self):
        """The generator's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from ..models import load_tokenizer

            source = self.config.model_name_or_path or getattr(self._backend, "tokenizer", None)
            if not isinstance(source, str):
                self._tokenizer = source
            else:
                self._tokenizer = load_tokenizer(source, trust_remote_code=self.config.trust_remote_code)
        return self._tokenizer

    @property
    def backend(self):
        """The rollout backend (built on first use, so a finished job loads no model)."""
        if self._backend is None:
            c = self.config
            if c.backend == "transformers":
                self._backend = BACKENDS["transformers"](
                    self._model if self._model is not None else c.model_name_or_path,
                    tokenizer=self.tokenizer,
                    batch_size=c.generation_batch_size,
                    device=partial_state().device,
                    dtype=c.dtype,
                    trust_remote_code=c.trust_remote_code,
                )
            elif c.backend == "vllm":
                self._backend = BACKENDS["vllm"](
                    c.model_name_or_path,
                    dtype=c.dtype,
                    gpu_memory_utilization=c.vllm_gpu_memory_utilization,
                    max_model_len=c.vllm_max_model_len,
                    enforce_eager=c.vllm_enforce_eager,
                    tensor_parallel_size=c.vllm_tensor_parallel_size,
                    trust_remote_code=c.trust_remote_code,
                )
            else:
                self._backend = BACKENDS["vllm_server"](
                    c.vllm_server_base_url, tokenizer=self.tokenizer, connection_timeout=c.vllm_server_timeout
                )
        return self._backend

    @property
    def grader(self) -> MathVerifyGrader:
        """The math-verify grader (workers start on first use)."""
        if self._grader is None:
            self._grader = MathVerifyGrader(self.config.grading_num_workers, self.config.grading_timeout, cache=True)
        return self._grader

    # -- prompts ------------------------------------------------------------------------------------------------------

    def rollout_prompt(self, prompt: str, prefix: Sequence[str]) -> list[int]:
        """Token ids of the rollout prompt of a step prefix (see `ERPRMLabelerConfig.prefix_placement`).

        Args:
            prompt (`str`):
                The problem.
            prefix (`list[str]`):
                The first `l` steps.

        Returns:
            `list[int]`: The prompt's token ids (special tokens as the chat template writes them).
        """
        c, tok, steps = self.config, self.tokenizer, self.step_format
        prefix_text = steps.join(prefix)
        if c.prefix_placement == "plain":
            return tok(steps.join_prefix([prompt, *prefix]))["input_ids"]
        if tok.chat_template is None:
            raise ValueError(
                f"prefix_placement={c.prefix_placement!r} needs a chat template, and the tokenizer of "
                f"{c.model_name_or_path} has none: pass prefix_placement='plain' for a base model."
            )
        if c.prefix_placement == "user":
            content = steps.join([prompt, prefix_text, c.user_instruction])
            text = tok.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        else:
            # The user turn asks for the answer format the grader reads best (unless the prompt already does).
            question = (
                prompt if c.user_instruction in prompt else "\n".join(filter(None, [prompt, c.user_instruction]))
            )
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": prefix_text}]
            text = tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)
            # The separator is added after rendering: templates may strip a trailing newline from the message.
            text = text + steps.separator
        return tok(text, add_special_tokens=False)["input_ids"]

    def graded_text(self, prefix: Sequence[str], continuation: str) -> str:
        """The text graded for one rollout: the whole solution (prefix + continuation), or the answer alone when the
        prefix is in the user turn (`prefix_placement="user"`, where the model writes a new full solution).

        Args:
            prefix (`list[str]`):
                The steps the rollout started from.
            continuation (`str`):
                The generated text.

        Returns:
            `str`: The text whose final answer is graded.
        """
        if self.config.prefix_placement == "user":
            return continuation
        return self.step_format.join_prefix(prefix) + continuation

    # -- labeling rows ------------------------------------------------------------------------------------------------

    def label_rows(self, indices: Sequence[int], prompts, completions, golds) -> list[dict]:
        """Label a batch of rows: roll out every step prefix not in the rollout cache (each distinct one once, in one
        backend call), grade, build records.

        Args:
            indices (`list[int]`):
                Input row indices (they name the records; the rollouts are seeded by their prompts, see
                [`SEED_POLICY`]).
            prompts (`list[str]`):
                Problems.
            completions (`list[list[str]]`):
                Steps of each solution.
            golds (`list`):
                Gold answers.

        Returns:
            `list[dict]`: One record per row: `index`, `status`, `status_message`, `step_outcomes` (`None` unless
            `status == "ok"`), `num_rollouts`, `num_empty_rollouts`, `num_no_answer_rollouts` (graded 0: no final
            answer found), `num_grading_failures` (left out of the outcomes: timeouts and worker errors) and
            `num_grading_timeouts` (of which timeouts).
        """
        c = self.config
        records: dict[int, dict] = {}
        pending: list[_Pending] = []
        for index, prompt, steps, gold in zip(indices, prompts, completions, golds):
            status, message = check_row(prompt, steps, gold)
            if status != "ok":
                records[index] = _record(index, status, message)
            else:
                pending.append(_Pending(index, prompt, list(steps), str(gold).strip()))

        # The last step: grade the full solution (this also finds unparsable golds before spending rollouts).
        full = self.grader.grade([self.step_format.join(p.steps) for p in pending], [p.gold for p in pending])
        alive = []
        for p, result in zip(pending, full):
            if result.status == "gold_unparsable":
                message = (
                    f"math-verify cannot parse the gold answer {p.gold!r:.200}; fix the gold answer or drop the row"
                )
                records[p.index] = _record(p.index, "gold_unparsable", message)
            elif result.status == "timeout":
                message = (
                    "grading the full solution timed out (even on the retry with the longer limit); raise "
                    "grading_timeout if the machine is loaded"
                )
                records[p.index] = _record(p.index, "grading_timeout", message, counts={"failures": 1, "timeouts": 1})
            elif result.status not in _GRADED:
                message = f"grading the full solution failed ({result.status})"
                records[p.index] = _record(p.index, "grading_failed", message, counts={"failures": 1})
            else:
                p.last_outcome = result.reward
                alive.append(p)

        prefixes = [(p, length) for p in alive for length in range(1, len(p.steps))]
        for (p, length), entry in zip(prefixes, self._prefix_outcomes(prefixes)):
            counts = entry["counts"]
            for name in ("empty", "no_answer", "failures", "timeouts"):
                p.counts[name] += counts[name]
            # A timeout or a worker error is not a wrong answer: the rollout is left out of the step's outcomes.
            p.outcomes.append(list(entry["outcomes"]))
            if counts["empty"] == c.num_rollouts and p.no_text_step is None:
                p.no_text_step = length - 1
            if not entry["outcomes"] and p.ungraded_step is None:
                p.ungraded_step = (length - 1, counts["timeouts"] == c.num_rollouts)
        for p in alive:
            status, message = "ok", ""
            if p.no_text_step is not None:
                status = "no_text"
                message = f"the generator returned no text for all {c.num_rollouts} rollouts of step {p.no_text_step}"
            elif p.ungraded_step is not None:
                step, timed_out = p.ungraded_step
                status = "grading_timeout" if timed_out else "grading_failed"
                message = f"grading {'timed out' if timed_out else 'failed'} for every rollout of step {step}"
                if timed_out:
                    message += (
                        " (even on the retry with the longer limit); raise grading_timeout if the machine is loaded"
                    )
            outcomes = [*p.outcomes, [p.last_outcome]] if status == "ok" else None
            rollouts = (len(p.steps) - 1) * c.num_rollouts
            records[p.index] = _record(p.index, status, message, outcomes, rollouts, p.counts)
        return [records[i] for i in indices]

    def rollout_seed(self, prompt_ids: Sequence[int]) -> int:
        """The seed of a step prefix's rollouts under [`SEED_POLICY`]: derived from the job's seed and the prefix's
        rollout prompt, never from its row, so identical prefixes get identical rollouts.

        Args:
            prompt_ids (`list[int]`):
                Token ids of the rollout prompt ([`rollout_prompt`]).

        Returns:
            `int`: The seed passed to the backend for this prompt.
        """
        return derive_seed(self.config.seed, "prefix", jobs.content_hash([list(prompt_ids)]))

    def rollout_key(self, prompt_ids: Sequence[int], gold: str) -> str:
        """The key of a step prefix's graded outcomes in the rollout cache: a SHA-256 of everything that decides them,
        the exact rollout prompt (problem, prefix, prompt format, tokenizer), the gold answer, the generator, dtype and
        backend, `N`, temperature, top-p, max new tokens, seed, [`SEED_POLICY`], the record format and the grader.

        Args:
            prompt_ids (`list[int]`):
                Token ids of the rollout prompt ([`rollout_prompt`]).
            gold (`str`):
                The gold answer the rollouts are graded against.

        Returns:
            `str`: Hex digest; equal keys have equal outcomes.
        """
        return self._outcome_key(jobs.content_hash([list(prompt_ids)]), gold)

    def _outcome_key(self, prompt_key: str, gold: str) -> str:
        if self._identity is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                grader = version("math-verify")
            except PackageNotFoundError:
                grader = None
            job = {**self.config.job_arguments(), "backend": self.backend_name}
            for name in ("prompt_column", "completions_column", "gold_column"):
                job.pop(name)
            self._identity = jobs.content_hash(
                [ROLLOUT_CACHE_FORMAT, LABELS_FORMAT, SEED_POLICY, job, ("math-verify", grader)]
            )
        return jobs.content_hash([self._identity, prompt_key, gold])

    def _prefix_outcomes(self, prefixes: list[tuple[_Pending, int]]) -> list[dict]:
        """The outcome entry (`outcomes`, `counts`) of every step prefix `(row, length)`: reused when its key is in the
        rollout cache or repeats in `prefixes` (unless `reuse_rollouts=False`), else rolled out and graded; each
        distinct prompt is rolled out once and the new entries are stored."""
        c, cache = self.config, self._rollouts
        reuse = c.reuse_rollouts
        prompts = [self.rollout_prompt(p.prompt, p.steps[:length]) for p, length in prefixes]
        prompt_keys = [jobs.content_hash([ids]) for ids in prompts]
        keys = [self._outcome_key(pk, p.gold) for pk, (p, _) in zip(prompt_keys, prefixes)]
        entries: dict = {k: cache.get(k) for k in keys if reuse and cache.get(k) is not None}
        todo, seen = [], set(entries)
        for i, key in enumerate(keys):  # every prefix without reuse; each missing key once with it
            if not reuse or key not in seen:
                todo.append(i)
                seen.add(key)
        # Each distinct prompt is rolled out once, then graded against the gold of every key that needs it.
        group = {i: prompt_keys[i] if reuse else i for i in todo}
        slot, generate = {}, []
        for i in todo:
            if group[i] not in slot:
                slot[group[i]] = len(generate)
                generate.append(i)
        texts = self._roll_out([prompts[i] for i in generate], [self.rollout_seed(prompts[i]) for i in generate])
        texts = {i: texts[slot[group[i]]] for i in todo}
        graded = self.grader.grade(
            [self.graded_text(prefixes[i][0].steps[: prefixes[i][1]], t) for i in todo for t in texts[i]],
            [prefixes[i][0].gold for i in todo for _ in texts[i]],
        )
        computed, position = {}, 0
        for i in todo:
            results = graded[position : position + len(texts[i])]
            position += len(texts[i])
            computed[i] = {
                "outcomes": [r.reward for r in results if r.status in _GRADED],
                "counts": {
                    "empty": sum(1 for t in texts[i] if not t.strip()),
                    "no_answer": sum(1 for r in results if r.status == "no_answer"),
                    "failures": sum(1 for r in results if r.status not in _GRADED),
                    "timeouts": sum(1 for r in results if r.status == "timeout"),
                },
            }
        self.prefixes_seen += len(prefixes)
        if not reuse:
            return [computed[i] for i in range(len(prefixes))]
        new = {keys[i]: computed[i] for i in todo}
        cache.add(new)
        entries.update(new)
        return [entries[key] for key in keys]

    def _roll_out(self, prompts: list[list[int]], seeds: list[int]) -> list[list[str]]:
        """`num_rollouts` texts per prompt from the backend (its token counts too when it gives them)."""
        if not prompts:
            return []
        c, backend = self.config, self.backend
        start = time.perf_counter()
        if hasattr(backend, "generate_completions"):
            completions = backend.generate_completions(prompts, c.num_rollouts, self.sampling, seeds)
            texts = [[completion.text for completion in row] for row in completions]
            self.generated_tokens += sum(completion.num_tokens for row in completions for completion in row)
        else:
            texts = backend.generate(prompts, c.num_rollouts, self.sampling, seeds)
        self.generation_seconds += time.perf_counter() - start
        self.prefixes_rolled_out += len(prompts)
        self.rollouts_generated += len(prompts) * c.num_rollouts
        return texts

    # -- the job ------------------------------------------------------------------------------------------------------

    def metadata(self) -> dict:
        """What makes the labels reproducible: generator, backend, sampling, N, seed, eta, prompts, grader.

        Returns:
            `dict`: JSON-serialisable metadata, stored in `summary.json` and in the dataset's `info.description`.
        """
        from importlib.metadata import PackageNotFoundError, version

        def _version(name):
            try:
                return version(name)
            except PackageNotFoundError:
                return None

        c = self.config
        return {
            "method": "ER-PRM Monte-Carlo rollout labels (arXiv:2412.11006)",
            **c.job_arguments(),
            "backend": self.backend_name,
            "eta": c.eta if math.isfinite(c.eta) else str(c.eta),
            "seed_policy": SEED_POLICY,
            "last_step": "graded full solution (one outcome, no rollouts)",
            "grader": {"name": "math-verify", "version": _version("math-verify"), "timeout": c.grading_timeout},
            "trl_erprm_version": _version("trl-erprm"),
        }

    def label(self, dataset):
        """Run (or resume) the labeling job on `dataset` and return the labelled dataset, in input order.

        Each process of an `accelerate launch` labels its share of the batches and appends its results to the job
        folder; the main process merges them, computes `labels` with `eta`, saves the dataset to
        `output_dir/dataset` (and pushes it if asked), and every process returns it. While the job runs, its folder
        is locked: a second job started on it stops at once, naming this one.

        Args:
            dataset (`datasets.Dataset` or `list[dict]`):
                Stepwise rows with `config.prompt_column`, `config.completions_column` and `config.gold_column`.

        Returns:
            `datasets.Dataset`: The input columns plus `step_outcomes`, `labels`, `status`, `status_message`,
            `num_rollouts`, `num_empty_rollouts`, `num_no_answer_rollouts`, `num_grading_failures` and
            `num_grading_timeouts`.

        Raises:
            `ValueError`: A missing column, rows of mixed types (naming the row and the column), or an output folder
                holding another job.
            [`~trl_erprm.jobs.JobLockedError`]: Another job is running in `output_dir`.
            [`~trl_erprm.jobs.JobFolderError`]: `output_dir` is read-only, full, or a file.
        """
        from datasets import Dataset

        c = self.config
        state = partial_state()
        if not isinstance(dataset, Dataset):
            dataset = _dataset_from_rows(list(dataset))
        for column in (c.prompt_column, c.completions_column, c.gold_column):
            if column not in dataset.column_names:
                name = {c.prompt_column: "prompt_column", c.completions_column: "completions_column"}.get(
                    column, "gold_column"
                )
                raise ValueError(
                    f"The dataset has no column {column!r} (columns: {dataset.column_names}). Rename the column or "
                    f"pass {name}=<its name>."
                )
        prompts = dataset[c.prompt_column]
        completions = dataset[c.completions_column]
        golds = dataset[c.gold_column]
        num_rows = len(dataset)
        data_hash = jobs.content_hash(zip(prompts, completions, golds))
        manifest = jobs.make_manifest(
            LABELS_FORMAT, {**c.job_arguments(), "backend": self.backend_name}, num_rows, data_hash
        )
        root = Path(c.output_dir)
        store = jobs.JobStore(
            root, manifest, rank=state.process_index, outputs=(DATASET, SUMMARY), overwrite=c.overwrite
        )
        try:
            if state.is_main_process:
                store.open()
                with jobs.folder_errors(root, "remove the previous summary"):
                    (root / SUMMARY).unlink(missing_ok=True)
            state.wait_for_everyone()
            if not state.is_main_process:
                store.open()
            return self._run_job(dataset, store, state, prompts, completions, golds)
        finally:
            store.close()

    def _run_job(self, dataset, store: jobs.JobStore, state, prompts, completions, golds):
        """The body of [`label`], with the job folder open."""
        from datasets import load_from_disk

        c, root, num_rows = self.config, store.root, len(dataset)
        done = set(store.read_results())
        batches = [range(s, min(s + c.batch_size, num_rows)) for s in range(0, num_rows, c.batch_size)]
        mine = [b for k, b in enumerate(batches) if k % state.num_processes == state.process_index]
        total = sum(len(b) for b in mine)
        todo = [[i for i in b if i not in done] for b in mine]
        self._reset_counts()
        self._graded_rollouts, self._no_answer_rollouts, self._warned_no_answer = 0, 0, False
        if any(todo):
            self._start_up(verbose=state.is_local_main_process, rows=sum(len(b) for b in todo), root=root)
        try:
            run_seconds = self._label_batches(store, state, todo, total, prompts, completions, golds)
        finally:
            self._rollouts.close()

        if state.is_main_process:
            results = self._wait_for_rows(store, num_rows)
            labelled = self._build_dataset(dataset, jobs.ordered_results(results, num_rows))
            # Save next to the old copy, then swap: the input may itself be memory-mapped from the old copy.
            staging = root / f"{DATASET}.tmp"
            with jobs.folder_errors(root, "save the labelled dataset"):
                shutil.rmtree(staging, ignore_errors=True)
                labelled.save_to_disk(str(staging))
                shutil.rmtree(root / DATASET, ignore_errors=True)
                os.replace(staging, root / DATASET)
            self.summary = self._summarize(labelled, run_seconds)
            store.write_json(SUMMARY, self.summary)
            self._log_summary(self.summary)
            if c.push_to_hub:
                labelled.push_to_hub(c.hub_dataset_id, private=c.hub_private)
        else:
            delay = 0.2
            while not (root / SUMMARY).is_file():
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
            self.summary = json.loads((root / SUMMARY).read_text())
        return load_from_disk(str(root / DATASET))

    def _label_batches(self, store: jobs.JobStore, state, todo, total, prompts, completions, golds) -> float:
        """Label this process's batches, appending each batch's records; returns the seconds it took."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        bar = tqdm(
            total=total,
            initial=total - sum(len(b) for b in todo),
            unit="row",
            desc="ER-PRM labeling",
            dynamic_ncols=True,
            disable=not state.is_local_main_process,
        )
        with store.writer() as writer:
            for batch in todo:
                if not batch:
                    continue
                records = self.label_rows(
                    batch, [prompts[i] for i in batch], [completions[i] for i in batch], [golds[i] for i in batch]
                )
                writer.write(records)
                self._watch_answers(records)
                bar.update(len(batch))
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(rollouts_per_s=f"{self.rollouts_generated / elapsed:.1f}")
        bar.close()
        return time.perf_counter() - started

    def _start_up(self, verbose: bool, rows: int, root: Path) -> None:
        """Start the grader's workers in the background, open the rollout cache, then load the generator, saying what
        happens meanwhile."""
        c = self.config
        say = logger.info if verbose else logger.debug
        say(f"ER-PRM labeling: {rows} rows to label in {c.output_dir}.")
        if isinstance(self.grader, MathVerifyGrader):
            say(f"Starting {self.grader.num_workers} grading worker(s) in the background (math-verify).")
            self.grader.start()
        if c.reuse_rollouts:
            folder = Path(c.rollout_cache_dir) if c.rollout_cache_dir else root / ROLLOUTS
            self._rollouts = RolloutCache(folder)
            if self._rollouts.open():
                say(f"Rollout cache {folder}: {self._rollouts.loaded} step prefixes already rolled out are reused.")
        if self._backend is None:
            say(f"Loading the generator {self.config.model_name_or_path} ({self.config.backend} backend)...")
            start = time.perf_counter()
            _ = self.backend
            say(f"Generator loaded in {time.perf_counter() - start:.1f} s; labeling.")

    def _watch_answers(self, records: list[dict]) -> None:
        """Warn once, as soon as it shows, when most rollouts have no final answer the grader can read."""
        for record in records:
            # (A row whose full solution failed grading has one failure and no rollout.)
            self._graded_rollouts += max(0, record["num_rollouts"] - record["num_grading_failures"])
            self._no_answer_rollouts += record["num_no_answer_rollouts"]
        if not self._warned_no_answer and self._graded_rollouts >= _NO_ANSWER_MIN_ROLLOUTS:
            message = self._no_answer_warning(self._no_answer_rollouts, self._graded_rollouts)
            if message:
                logger.warning(message + " (so far; the job goes on)")
                self._warned_no_answer = True

    def _no_answer_warning(self, no_answer: int, graded: int) -> str | None:
        if graded <= 0 or no_answer / graded <= NO_ANSWER_WARNING_SHARE:
            return None
        return (
            f"{no_answer} of {graded} rollouts ({no_answer / graded:.0%}) have no final answer the grader can read, "
            "so they count as wrong: the steps' labels are mostly noise. Make the generator state its answer as "
            "\\boxed{...} or 'The answer is ...' (user_instruction, now "
            f"{self.config.user_instruction!r:.80}), use prefix_placement='user' for a model that ignores the "
            "instruction, or raise max_new_tokens if rollouts are cut off before their answer"
        )

    @staticmethod
    def _wait_for_rows(store: jobs.JobStore, num_rows: int) -> dict[int, dict]:
        """Results of all rows, waiting for the other processes (no collective: shards may take hours apart)."""
        delay = 0.2
        while True:
            results = store.read_results()
            if len(results) >= num_rows:
                return results
            time.sleep(delay)
            delay = min(2 * delay, 10.0)

    def _build_dataset(self, dataset, records: list[dict]):
        from datasets import Dataset, Features, Sequence, Value, concatenate_datasets

        c = self.config
        for name in _OUTPUT_COLUMNS:
            if name in dataset.column_names:
                logger.warning(f"The input column {name!r} is kept as 'input_{name}': the labeler writes {name!r}.")
                dataset = dataset.rename_column(name, f"input_{name}")
        # Records written before a count existed (an older job folder) read as 0 for it.
        columns = {name: [r.get(name, 0) for r in records] for name in _COUNT_COLUMNS}
        columns.update({name: [r[name] for r in records] for name in ("step_outcomes", "status", "status_message")})
        columns["labels"] = labels_for_rows(columns["step_outcomes"], c.eta)
        features = Features(
            {
                "step_outcomes": Sequence(Sequence(Value("float64"))),
                "status": Value("string"),
                "status_message": Value("string"),
                "labels": Sequence(Value("float64")),
                **{name: Value("int64") for name in _COUNT_COLUMNS},
            }
        )
        merged = concatenate_datasets([dataset, Dataset.from_dict(columns, features=features)], axis=1)
        merged.info.description = json.dumps({"erprm_labeling": self.metadata()}, sort_keys=True)
        return merged

    def _summarize(self, labelled, run_seconds: float) -> dict:
        counts = Counter(labelled["status"])
        ok = counts.get("ok", 0)
        return {
            "num_rows": len(labelled),
            "status_counts": {s: counts.get(s, 0) for s in ROW_STATUSES if counts.get(s, 0)},
            "num_labelled_rows": ok,
            **{name: int(sum(labelled[name])) for name in _COUNT_COLUMNS},
            "this_run": {
                "seconds": round(run_seconds, 3),
                "rollouts_generated": self.rollouts_generated,
                "generated_tokens": self.generated_tokens,
                "generation_seconds": round(self.generation_seconds, 3),
                "prefixes": self.prefixes_seen,
                "prefixes_rolled_out": self.prefixes_rolled_out,
                "prefixes_reused": self.prefixes_seen - self.prefixes_rolled_out,
                "rollouts_reused": (self.prefixes_seen - self.prefixes_rolled_out) * self.config.num_rollouts,
                "grader": self.grader.stats() if self._grader is not None else {},
            },
            "metadata": self.metadata(),
        }

    def _log_summary(self, summary: dict) -> None:
        counts = ", ".join(f"{n} {s}" for s, n in summary["status_counts"].items())
        message = (
            f"ER-PRM labeling: {summary['num_rows']} rows ({counts}); {summary['num_rollouts']} rollouts, "
            f"{summary['num_no_answer_rollouts']} without a final answer, {summary['num_grading_timeouts']} grading "
            f"timeouts and {summary['num_grading_failures'] - summary['num_grading_timeouts']} grading errors (left "
            f"out of the labels); saved to {self.config.output_dir}/{DATASET}"
        )
        if summary["num_labelled_rows"] < summary["num_rows"]:
            logger.warning(message + ". Rows whose status is not 'ok' have no labels: see status_message.")
        else:
            logger.info(message)
        run = summary["this_run"]
        if run["prefixes_reused"]:
            logger.info(
                f"Rollouts reused for {run['prefixes_reused']} of {run['prefixes']} step prefixes "
                f"({run['prefixes_reused'] / run['prefixes']:.0%}, identical prefixes rolled out once): "
                f"{run['rollouts_reused']} rollouts not generated."
            )
        if summary["num_grading_timeouts"]:
            logger.warning(
                f"{summary['num_grading_timeouts']} rollouts timed out in grading, even on the retry with a longer "
                "limit: they are left out of their steps' outcomes (not counted as wrong). Raise grading_timeout or "
                "grading_num_workers if the machine is loaded."
            )
        graded = max(0, summary["num_rollouts"] - summary["num_grading_failures"])
        warning = self._no_answer_warning(summary["num_no_answer_rollouts"], graded)
        if warning:
            logger.warning(warning + ".")

    # -- training ---------------------------------------------------------------------------------------------------

    def collator(self, tokenizer, eta: float | str | None = None, **kwargs):
        """A data collator for `ERPRMTrainer` that recomputes the labels from `step_outcomes` at batch time.

        Args:
            tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
                The PRM's tokenizer.
            eta (`float` or `str`, *optional*):
                ER-PRM coefficient of the training labels; defaults to `config.eta`. Sweeping it needs no new
                rollouts.
            **kwargs:
                Other arguments of `ERPRMDataCollator`.

        Returns:
            `ERPRMDataCollator`: The collator.
        """
        from ..data.stepwise import ERPRMDataCollator
        from ..functional import resolve_eta

        return ERPRMDataCollator(tokenizer, eta=resolve_eta(self.config.eta if eta is None else eta), **kwargs)

    def close(self) -> None:
        """Stop the grader's workers and release the backend."""
        if self._grader is not None:
            self._grader.close()
        if self._backend is not None:
            self._backend.close()


# ---------------------------------------------------------------------------------------------------------------------
# Input datasets and the command line
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LabelScriptArguments:
    r"""
    Input of the `trl-erprm label` command and of `examples/erprm_label.py`.

    Parameters:
        dataset_name (`str`):
            A `.jsonl` / `.json` / `.parquet` / `.csv` file, a folder saved with `save_to_disk`, or a Hub dataset id.
        dataset_config (`str`, *optional*):
            Configuration of a Hub dataset.
        dataset_split (`str`, *optional*, defaults to `"train"`):
            Split to label.
        dataset_format (`str`, *optional*, defaults to `"stepwise"`):
            `"stepwise"` (rows already have the prompt, steps and gold columns), `"gsm8k"` (`question`, `answer`;
            converted with [`gsm8k_to_stepwise`]) or `"prm800k"` (converted with `convert_prm800k`, gold answer from
            `question.ground_truth_answer`).
        num_rows (`int`, *optional*):
            Label only the first `num_rows` rows (after conversion).
    """

    dataset_name: str = field(metadata={"help": "Data file, save_to_disk folder or Hub dataset id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split to label."})
    dataset_format: str = field(
        default="stepwise", metadata={"help": "Input format.", "choices": ["stepwise", "gsm8k", "prm800k"]}
    )
    num_rows: int | None = field(default=None, metadata={"help": "Label only the first rows."})


def load_input_dataset(args: LabelScriptArguments, gold_column: str = "gold_answer"):
    """Load and convert the dataset described by `args` into stepwise rows.

    Args:
        args ([`LabelScriptArguments`]):
            Where the data is and its format.
        gold_column (`str`, *optional*, defaults to `"gold_answer"`):
            Name of the gold-answer column produced by the converters.

    Returns:
        `datasets.Dataset`: Stepwise rows.
    """
    from datasets import Dataset

    from ..data import load_any_dataset

    dataset = load_any_dataset(args.dataset_name, args.dataset_config, args.dataset_split)
    if args.dataset_format == "gsm8k":
        dataset = Dataset.from_list(
            [gsm8k_to_stepwise(row, i, answer_column=gold_column) for i, row in enumerate(dataset)]
        )
    elif args.dataset_format == "prm800k":
        dataset = Dataset.from_list(convert_prm800k(dataset, answer_column=gold_column))
    elif args.dataset_format != "stepwise":
        raise ValueError(f"dataset_format={args.dataset_format!r}: choose 'stepwise', 'gsm8k' or 'prm800k'.")
    if args.num_rows is not None:
        dataset = dataset.select(range(min(args.num_rows, len(dataset))))
    return dataset


def make_parser(subparsers=None):
    """The argument parser of `trl-erprm label`: [`LabelScriptArguments`] and [`ERPRMLabelerConfig`].

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            When given, the parser is added to them as the `label` subcommand.

    Returns:
        `trl.TrlParser`: The parser (it also reads a YAML file given with `--config`), from
        [`~trl_erprm.script_utils.make_parser`].
    """
    from ..script_utils import make_parser as make_script_parser

    types = (LabelScriptArguments, ERPRMLabelerConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "label", help="Label step-split solutions with ER-PRM rollouts", dataclass_types=types
        )
    return make_script_parser(types)


def run(script_args: LabelScriptArguments, config: ERPRMLabelerConfig):
    """Load the input, run the labeling job, return the labelled dataset.

    Args:
        script_args ([`LabelScriptArguments`]):
            The input.
        config ([`ERPRMLabelerConfig`]):
            The job.

    Returns:
        `datasets.Dataset`: The labelled dataset (also saved in `config.output_dir/dataset`).
    """
    dataset = load_input_dataset(script_args, gold_column=config.gold_column)
    labeler = ERPRMLabeler(config)
    try:
        return labeler.label(dataset)
    finally:
        labeler.close()


def main(argv: Sequence[str] | None = None):
    """Entry point of `trl-erprm label ...` (and `python -m trl_erprm.labeling.labeler ...`).

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments; `sys.argv[1:]` when `None`.

    Returns:
        `datasets.Dataset`: The labelled dataset.
    """
    logging.basicConfig(format="%(message)s")
    logging.getLogger("trl_erprm").setLevel(logging.INFO)  # start-up, resume and summary messages
    script_args, config = make_parser().parse_args_and_config(args=argv)
    return run(script_args, config)


def cli_main(argv: Sequence[str] | None = None) -> int:
    """`trl-erprm label ...`: run [`main`] and return an exit status.

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments (without the subcommand); `sys.argv[1:]` when `None`.

    Returns:
        `int`: `0` once the job has finished (errors raise).
    """
    main(argv)
    return 0


if __name__ == "__main__":
    main()
