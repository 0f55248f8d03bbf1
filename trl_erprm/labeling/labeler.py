"""ER-PRM Monte-Carlo rollout labeling as a resumable, data-parallel job.

For each stepwise row (`prompt`, `completions` = steps, gold answer), every step prefix `a^[l]` (`l < L`) is
continued `num_rollouts` times by the generator, each continuation is graded against the gold answer with
math-verify, and the step's label is `er_label(outcomes, eta)` (ER-PRM, arXiv 2412.11006, eq. 1). The last step is
labelled by grading the full solution (one outcome, no rollouts), as in the reference implementation.

The job writes each finished batch of rows to its output folder (see [`store`]); it can be killed at any moment
and started again with the same arguments, and it runs data-parallel under `accelerate launch`.
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

from ..data.converters import convert_prm800k, gsm8k_to_stepwise
from ..functional import er_label, resolve_eta
from ..steps import StepFormat
from . import store
from .backends import BACKENDS, Sampling, derive_seed
from .grading import MathVerifyGrader
from .labeler_config import ERPRMLabelerConfig


logger = logging.getLogger(__name__)

#: Per-row statuses of the output dataset. Only `"ok"` rows have `step_outcomes` and `labels`; the others have
#: `None` there (never a made-up 0 label) and say why in `status_message`.
ROW_STATUSES = ("ok", "missing_prompt", "empty_steps", "missing_gold", "gold_unparsable", "grading_failed", "no_text")

#: Grading statuses that count as a graded rollout (reward 1.0 or 0.0); `"timeout"` and `"error"` are left out.
_GRADED = ("correct", "incorrect", "no_answer")
_OUTPUT_COLUMNS = (
    "step_outcomes",
    "labels",
    "status",
    "status_message",
    "num_rollouts",
    "num_empty_rollouts",
    "num_grading_failures",
)


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
    if not isinstance(steps, list | tuple) or len(steps) == 0:
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
    empty: int = 0
    failures: int = 0
    no_text_step: int | None = None


def _record(index: int, status: str, message: str = "", outcomes=None, rollouts=0, empty=0, failures=0) -> dict:
    return {
        "index": index,
        "status": status,
        "status_message": message,
        "step_outcomes": outcomes,
        "num_rollouts": rollouts,
        "num_empty_rollouts": empty,
        "num_grading_failures": failures,
    }


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
        self.generation_seconds = 0.0  # time spent in the backend's `generate` by the last `label` call
        self.rollouts_generated = 0
        self.sampling = Sampling(config.temperature, config.top_p, config.max_new_tokens)
        self.step_format = StepFormat(config.step_separator)

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
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": prefix_text}]
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
        """Label a batch of rows: generate every prefix's rollouts in one backend call, grade, build records.

        Args:
            indices (`list[int]`):
                Input row indices (they seed the rollouts: the same row always gets the same samples).
            prompts (`list[str]`):
                Problems.
            completions (`list[list[str]]`):
                Steps of each solution.
            golds (`list`):
                Gold answers.

        Returns:
            `list[dict]`: One record per row: `index`, `status`, `status_message`, `step_outcomes` (`None` unless
            `status == "ok"`), `num_rollouts`, `num_empty_rollouts`, `num_grading_failures`.
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
                records[p.index] = _record(
                    p.index, "gold_unparsable", f"math-verify cannot parse the gold answer {p.gold!r}"
                )
            elif result.status not in _GRADED:
                records[p.index] = _record(
                    p.index, "grading_failed", f"grading the full solution failed ({result.status})", failures=1
                )
            else:
                p.last_outcome = result.reward
                alive.append(p)

        jobs = [(p, length) for p in alive for length in range(1, len(p.steps))]
        start = time.perf_counter()
        texts = []
        if jobs:
            texts = self.backend.generate(
                [self.rollout_prompt(p.prompt, p.steps[:length]) for p, length in jobs],
                c.num_rollouts,
                self.sampling,
                seeds=[derive_seed(c.seed, p.index, length) for p, length in jobs],
            )
        self.generation_seconds += time.perf_counter() - start
        self.rollouts_generated += len(jobs) * c.num_rollouts

        graded = self.grader.grade(
            [self.graded_text(p.steps[:length], t) for (p, length), ts in zip(jobs, texts) for t in ts],
            [p.gold for (p, _), ts in zip(jobs, texts) for _ in ts],
        )
        position = 0
        for (p, length), ts in zip(jobs, texts):
            results = graded[position : position + len(ts)]
            position += len(ts)
            empty = sum(1 for t in ts if not t.strip())
            p.empty += empty
            p.failures += sum(1 for r in results if r.status not in _GRADED)
            p.outcomes.append([r.reward for r in results if r.status in _GRADED])
            if empty == len(ts) and p.no_text_step is None:
                p.no_text_step = length
        for p in alive:
            rollouts = (len(p.steps) - 1) * c.num_rollouts
            if p.no_text_step is not None:
                message = (
                    f"the generator returned no text for all {c.num_rollouts} rollouts of step {p.no_text_step - 1}"
                )
                records[p.index] = _record(p.index, "no_text", message, None, rollouts, p.empty, p.failures)
            elif any(len(o) == 0 for o in p.outcomes):
                step = next(k for k, o in enumerate(p.outcomes) if not o)
                message = f"grading failed (timeout or error) for every rollout of step {step}"
                records[p.index] = _record(p.index, "grading_failed", message, None, rollouts, p.empty, p.failures)
            else:
                outcomes = [*p.outcomes, [p.last_outcome]]
                records[p.index] = _record(p.index, "ok", "", outcomes, rollouts, p.empty, p.failures)
        return [records[i] for i in indices]

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
            "last_step": "graded full solution (one outcome, no rollouts)",
            "grader": {"name": "math-verify", "version": _version("math-verify"), "timeout": c.grading_timeout},
            "trl_erprm_version": _version("trl-erprm"),
        }

    def label(self, dataset):
        """Run (or resume) the labeling job on `dataset` and return the labelled dataset, in input order.

        Each process of an `accelerate launch` labels its share of the batches and appends its results to the job
        folder; the main process merges them, computes `labels` with `eta`, saves the dataset to
        `output_dir/dataset` (and pushes it if asked), and every process returns it.

        Args:
            dataset (`datasets.Dataset` or `list[dict]`):
                Stepwise rows with `config.prompt_column`, `config.completions_column` and `config.gold_column`.

        Returns:
            `datasets.Dataset`: The input columns plus `step_outcomes`, `labels`, `status`, `status_message`,
            `num_rollouts`, `num_empty_rollouts` and `num_grading_failures`.
        """
        from datasets import Dataset, load_from_disk
        from tqdm.auto import tqdm

        c = self.config
        state = partial_state()
        if not isinstance(dataset, Dataset):
            dataset = Dataset.from_list(list(dataset))
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
        data_hash = store.content_hash(zip(prompts, completions, golds))
        job = {**c.job_arguments(), "backend": self.backend_name}
        manifest = store.make_manifest(job, num_rows, data_hash)
        root = Path(c.output_dir)

        if state.is_main_process:
            store.prepare_job_dir(root, manifest, overwrite=c.overwrite)
            (root / store.SUMMARY).unlink(missing_ok=True)
        state.wait_for_everyone()
        store.check_job_dir(root, manifest)

        done = set(store.read_results(root))
        batches = [range(s, min(s + c.batch_size, num_rows)) for s in range(0, num_rows, c.batch_size)]
        mine = [b for k, b in enumerate(batches) if k % state.num_processes == state.process_index]
        total = sum(len(b) for b in mine)
        todo = [[i for i in b if i not in done] for b in mine]
        self.generation_seconds, self.rollouts_generated = 0.0, 0
        started = time.perf_counter()
        bar = tqdm(
            total=total,
            initial=total - sum(len(b) for b in todo),
            unit="row",
            desc="ER-PRM labeling",
            dynamic_ncols=True,
            disable=not state.is_local_main_process,
        )
        with store.PartWriter(root, state.process_index) as writer:
            for batch in todo:
                if not batch:
                    continue
                records = self.label_rows(
                    batch, [prompts[i] for i in batch], [completions[i] for i in batch], [golds[i] for i in batch]
                )
                writer.write(records)
                bar.update(len(batch))
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(rollouts_per_s=f"{self.rollouts_generated / elapsed:.1f}")
        bar.close()
        run_seconds = time.perf_counter() - started

        if state.is_main_process:
            results = self._wait_for_rows(root, num_rows)
            labelled = self._build_dataset(dataset, store.ordered_results(results, num_rows))
            # Save next to the old copy, then swap: the input may itself be memory-mapped from the old copy.
            staging = root / f"{store.DATASET}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            labelled.save_to_disk(str(staging))
            shutil.rmtree(root / store.DATASET, ignore_errors=True)
            os.replace(staging, root / store.DATASET)
            self.summary = self._summarize(labelled, run_seconds)
            store.write_summary(root, self.summary)
            self._log_summary(self.summary)
            if c.push_to_hub:
                labelled.push_to_hub(c.hub_dataset_id, private=c.hub_private)
        else:
            delay = 0.2
            while not (root / store.SUMMARY).is_file():
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
            self.summary = json.loads((root / store.SUMMARY).read_text())
        return load_from_disk(str(root / store.DATASET))

    @staticmethod
    def _wait_for_rows(root: Path, num_rows: int) -> dict[int, dict]:
        """Results of all rows, waiting for the other processes (no collective: shards may take hours apart)."""
        delay = 0.2
        while True:
            results = store.read_results(root)
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
        columns = {name: [r[name] for r in records] for name in _OUTPUT_COLUMNS if name != "labels"}
        columns["labels"] = labels_for_rows([r["step_outcomes"] for r in records], c.eta)
        features = Features(
            {
                "step_outcomes": Sequence(Sequence(Value("float64"))),
                "labels": Sequence(Value("float64")),
                "status": Value("string"),
                "status_message": Value("string"),
                "num_rollouts": Value("int64"),
                "num_empty_rollouts": Value("int64"),
                "num_grading_failures": Value("int64"),
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
            "num_rollouts": int(sum(labelled["num_rollouts"])),
            "num_empty_rollouts": int(sum(labelled["num_empty_rollouts"])),
            "num_grading_failures": int(sum(labelled["num_grading_failures"])),
            "this_run": {
                "seconds": round(run_seconds, 3),
                "rollouts_generated": self.rollouts_generated,
                "generation_seconds": round(self.generation_seconds, 3),
                "grader": self.grader.stats() if self._grader is not None else {},
            },
            "metadata": self.metadata(),
        }

    def _log_summary(self, summary: dict) -> None:
        counts = ", ".join(f"{n} {s}" for s, n in summary["status_counts"].items())
        message = f"ER-PRM labeling: {summary['num_rows']} rows ({counts}); saved to {self.config.output_dir}/dataset"
        if summary["num_labelled_rows"] < summary["num_rows"]:
            logger.warning(message + ". Rows whose status is not 'ok' have no labels: see status_message.")
        else:
            logger.info(message)

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
        `trl.TrlParser`: The parser (it also reads a YAML file given with `--config`).
    """
    from trl import TrlParser

    types = (LabelScriptArguments, ERPRMLabelerConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "label", help="Label step-split solutions with ER-PRM rollouts", dataclass_types=types
        )
    return TrlParser(types)


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
    logger.setLevel(logging.INFO)
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
