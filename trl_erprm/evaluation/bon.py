"""Best-of-N evaluation of a PRM: Best-of-N per step aggregation, majority and PRM-weighted majority vote, pass@N.

Pipeline: load problems (prompt + gold answer) and their candidates, or generate `num_candidates` per problem with a
rollout backend; split each candidate into steps; score the steps with a PRM ([`load_scorer`]) unless the dataset
carries scores; grade every candidate with the sandboxed math-verify grader unless the dataset carries correctness;
write each scored problem to `output_dir/parts/` as soon as its chunk is done (a rerun with the same arguments
resumes); then compute the accuracy curves and write `results.json`, `table.md` and `accuracy_vs_n.png`.

Input that would be misread is an error before anything is scored, naming the row, the column and the fix:
per-candidate columns (candidates, scores, correctness, answers) of different lengths in a row, a correctness that is
not a bool or a number equal to 0 or 1 (a string `"False"`), a given score that is not a number (`None`; NaN is the
value of a candidate that could not be scored). Other bad input never stops a run; each case is counted in
`results.json["bad_input"]` and handled by one rule:

- fewer candidates than N: the problem uses all of its candidates at that N; no candidate at all: wrong at every N;
- a candidate without steps, or with a NaN step score: its aggregated score is NaN, ranked below every real score
  and weighing 0 in weighted voting;
- steps past the PRM's `max_length` are not scored: the candidate is aggregated over its scored steps;
- a gold answer math-verify cannot parse (status `gold_unparsable`): the problem is left out of every accuracy;
- a candidate whose grading timed out (twice: the grader retries with a longer limit) is not a wrong answer: its
  problem is left out of every accuracy and counted (`problems_with_grading_timeouts`), with a warning (one rule with
  search and RAFT: [`~trl_erprm.evaluation.metrics.graded_problems`]);
- a grading error (the worker failed on the answer) counts as a wrong answer.

Run `trl-erprm bon --help` (or `python -m trl_erprm.evaluation.bon --help`) for the arguments.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path

import torch

from ..functional import STEP_AGGREGATIONS, aggregate_steps
from ..jobs import JobStore, content_hash, make_manifest
from ..labeling.answers import extract_final_answer
from ..labeling.grading import MathVerifyGrader
from ..steps import STEP_SPLITTERS, StepFormat, split_steps
from .metrics import (
    default_n_values,
    graded_problems,
    grading_timeout_message,
    normalize_answer,
    resolve_vote_weight,
    selection_curves,
)
from .report import format_table, plot_curves, write_reports
from .scorers import is_implicit_prm, load_scorer


logger = logging.getLogger(__name__)

BON_FORMAT = "trl-erprm-bon/1"
BON_REPORTS = ("results.json", "table.md", "accuracy_vs_n.png")
#: How a candidate given as a list of steps is written as text (for answer extraction and grading).
_CANDIDATE_TEXT = StepFormat("\n\n")


@dataclass
class BestOfNArguments:
    """Arguments of a Best-of-N evaluation (`trl-erprm bon`).

    Args:
        dataset_name (`str`):
            Problems: a Hub id, a local `.jsonl` / `.json` / `.parquet` / `.csv` file or a `save_to_disk` folder.
        dataset_config (`str`, *optional*):
            Hub dataset configuration.
        dataset_split (`str`, *optional*):
            Split to evaluate. By default the only split there is (a local data file is the `"train"` split); a
            dataset with several splits (most Hub datasets) needs it, e.g. `--dataset_split test`.
        max_problems (`int`, *optional*):
            Evaluate only the first `max_problems` problems.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column of the problem text.
        gold_column (`str`, *optional*, defaults to `"gold_answer"`):
            Column of the gold answer. A GSM8K-style solution ending in `#### N` gives `N`.
        candidates_column (`str`, *optional*, defaults to `"completions"`):
            Column of the candidates: per problem a list of solution texts (split into steps with `split_method`) or
            of step lists. Ignored when `generator_model` is set.
        correctness_column (`str`, *optional*):
            Column with the correctness (0/1 or bool) of each candidate: no grading then.
        scores_column (`str`, *optional*):
            Column with each candidate's PRM scores (a list of step scores, or one already aggregated float): no PRM
            needed then.
        answers_column (`str`, *optional*):
            Column with each candidate's final answer for voting; by default extracted from the candidate text.
            Without text or answers, voting is skipped.
        generator_model (`str`, *optional*):
            Generate the candidates with this causal LM instead of reading them from the dataset.
        generation_backend (`str`, *optional*, defaults to `"transformers"`):
            `"transformers"` or `"vllm"` (the labeler's rollout backends).
        num_candidates (`int`, *optional*, defaults to `8`):
            Candidates generated per problem.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling.
        max_new_tokens (`int`, *optional*, defaults to `512`):
            Maximum tokens per candidate.
        use_chat_template (`bool`, *optional*, defaults to `False`):
            Put the prompt in a user turn of the generator's chat template.
        prompt_suffix (`str`, *optional*, defaults to `""`):
            Text appended to the prompt before generation, e.g. "Please reason step by step, and put your final answer
            within \\boxed{}.".
        generation_batch_size (`int`, *optional*, defaults to `64`):
            Sequences per `generate` call (transformers backend).
        split_method (`str`, *optional*, defaults to `"double_newline"`):
            How candidate texts become steps: one of `STEP_SPLITTERS` (`"double_newline"`, `"newline"`,
            `"step_markers"`).
        prm_model (`str`, *optional*):
            The PRM. Required unless `scores_column` is set.
        prm_type (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (the head recorded in the PRM's `prm_config.json`, so a PRM saved by
            [`~trl_erprm.ImplicitPRMTrainer`] is implicit; else read from the architecture), `"token_classification"`,
            `"lm_head"` or `"implicit"`.
        prm_step_separator (`str`, *optional*):
            The text that ends a step for the PRM ([`~trl_erprm.steps.StepFormat`]), as it was trained: appended to
            every step (token classification), after every tag (LM head), joining the steps (implicit). The steps
            themselves come from `split_method` and stay the same steps for every PRM type. Default: the one recorded
            in the PRM's `prm_config.json` (trl-erprm trainers write it), else `"\\n"`.
        step_tag (`str`, *optional*):
            LM-head PRMs: the step tag (default: the one in the PRM's `prm_config.json`, else `" ки"`; mind `" ки"` vs
            `"ки"`).
        good_token (`str`, *optional*):
            LM-head PRMs (default: recorded in `prm_config.json`, else `"+"`): the "good step" token.
        bad_token (`str`, *optional*):
            LM-head PRMs (default: recorded in `prm_config.json`, else `"-"`): the "bad step" token.
        ref_model (`str`, *optional*):
            Implicit PRMs: the reference model, or `"adapter"` for a PEFT PRM with its adapter disabled. Default: the
            one recorded in the PRM's `prm_config.json`, else none (reference-free).
        beta (`float`, *optional*):
            Implicit PRMs: the reward scale. Default: the one recorded in the PRM's `prm_config.json`
            ([`~trl_erprm.ImplicitPRMTrainer`] writes it), else `0.05`.
        implicit_value (`str`, *optional*, defaults to `"q"`):
            Implicit PRMs: step value, `"q"` or `"step_reward"`.
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Candidates per PRM forward pass.
        max_length (`int`, *optional*):
            Maximum PRM tokens per candidate.
        dtype (`str`, *optional*, defaults to `"float32"`):
            PRM weights dtype.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the Hub.
        aggregations (`list[str]`, *optional*, defaults to `["min", "last", "prod", "mean"]`):
            Step aggregations to compare (`functional.STEP_AGGREGATIONS`).
        n_values (`list[int]`, *optional*):
            Values of N; default `1, 2, 4, ...` up to the largest candidate count.
        num_seeds (`int`, *optional*, defaults to `5`):
            Random candidate subsets per problem and N; the table shows mean and standard deviation over them.
        vote_weight (`str`, *optional*, defaults to `"auto"`):
            Weight of a candidate in `weighted_majority_<agg>` (`metrics.VOTE_WEIGHTS`): `"score"` (its aggregated
            score, a probability), `"sigmoid"` (the sigmoid of an implicit PRM's value) or `"auto"` (`"sigmoid"` for an
            implicit PRM, explicit or recorded in its `prm_config.json`, else `"score"`). A negative weight is an error.
        seed (`int`, *optional*, defaults to `0`):
            Seed of generation and of the subset draws.
        grading_num_workers (`int`, *optional*, defaults to `1`):
            Grader worker processes.
        grading_timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed to grade one answer.
        chunk_size (`int`, *optional*, defaults to `16`):
            Problems processed (and written) together.
        output_dir (`str`, *optional*, defaults to `"bon_eval"`):
            Folder of the scored rows and the reports.
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete a different run's results found in `output_dir`.
        plot (`bool`, *optional*, defaults to `True`):
            Write `accuracy_vs_n.png`.
    """

    dataset_name: str = field(metadata={"help": "Hub id, data file or save_to_disk folder of the problems."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate (default: the only split; a local data file's is 'train')."}
    )
    max_problems: int | None = field(default=None, metadata={"help": "Evaluate only the first problems."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the problem text."})
    gold_column: str = field(default="gold_answer", metadata={"help": "Column of the gold answer."})
    candidates_column: str = field(default="completions", metadata={"help": "Column of the candidate solutions."})
    correctness_column: str | None = field(default=None, metadata={"help": "Column of candidate correctness."})
    scores_column: str | None = field(default=None, metadata={"help": "Column of candidate PRM scores."})
    answers_column: str | None = field(default=None, metadata={"help": "Column of candidate final answers."})
    generator_model: str | None = field(default=None, metadata={"help": "Generate candidates with this model."})
    generation_backend: str = field(default="transformers", metadata={"help": "'transformers' or 'vllm'."})
    num_candidates: int = field(default=8, metadata={"help": "Candidates generated per problem."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(default=512, metadata={"help": "Maximum tokens per candidate."})
    use_chat_template: bool = field(default=False, metadata={"help": "Use the generator's chat template."})
    prompt_suffix: str = field(default="", metadata={"help": "Text appended to the prompt for generation."})
    generation_batch_size: int = field(default=64, metadata={"help": "Sequences per generate call."})
    split_method: str = field(default="double_newline", metadata={"help": "How candidate texts become steps."})
    prm_model: str | None = field(default=None, metadata={"help": "The PRM (folder or Hub id)."})
    prm_type: str = field(default="auto", metadata={"help": "auto, token_classification, lm_head or implicit."})
    prm_step_separator: str | None = field(
        default=None, metadata={"help": "Separator the PRM was trained with (default: its prm_config.json, else \\n)."}
    )
    step_tag: str | None = field(
        default=None, metadata={"help": "LM-head PRMs: the step tag (default: recorded, ' ки')."}
    )
    good_token: str | None = field(
        default=None, metadata={"help": "LM-head PRMs: the good-step token (default: recorded, +)."}
    )
    bad_token: str | None = field(
        default=None, metadata={"help": "LM-head PRMs: the bad-step token (default: recorded, -)."}
    )
    ref_model: str | None = field(
        default=None,
        metadata={"help": "Implicit PRMs: the reference model (default: its prm_config.json, else reference-free)."},
    )
    beta: float | None = field(
        default=None, metadata={"help": "Implicit PRMs: the reward scale (default: its prm_config.json, else 0.05)."}
    )
    implicit_value: str = field(default="q", metadata={"help": "Implicit PRMs: 'q' or 'step_reward'."})
    prm_batch_size: int = field(default=8, metadata={"help": "Candidates per PRM forward pass."})
    max_length: int | None = field(default=None, metadata={"help": "Maximum PRM tokens per candidate."})
    dtype: str = field(default="float32", metadata={"help": "PRM weights dtype."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub."})
    aggregations: list[str] = field(
        default_factory=lambda: ["min", "last", "prod", "mean"], metadata={"help": "Step aggregations to compare."}
    )
    n_values: list[int] | None = field(default=None, metadata={"help": "Values of N (default powers of two)."})
    num_seeds: int = field(default=5, metadata={"help": "Random subsets per problem and N."})
    vote_weight: str = field(
        default="auto",
        metadata={"help": "Weighted vote: 'score', 'sigmoid' (implicit PRM values) or 'auto' (sigmoid if implicit)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of generation and subset draws."})
    grading_num_workers: int = field(default=1, metadata={"help": "Grader worker processes."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed to grade one answer."})
    chunk_size: int = field(default=16, metadata={"help": "Problems processed and written together."})
    output_dir: str = field(default="bon_eval", metadata={"help": "Folder of scored rows and reports."})
    overwrite: bool = field(default=False, metadata={"help": "Delete a different run's results in output_dir."})
    plot: bool = field(default=True, metadata={"help": "Write accuracy_vs_n.png."})

    def __post_init__(self):
        unknown = [a for a in self.aggregations if a not in STEP_AGGREGATIONS]
        if unknown or not self.aggregations:
            raise ValueError(f"aggregations {unknown or '[]'} invalid; choose from {sorted(STEP_AGGREGATIONS)}.")
        if self.split_method not in STEP_SPLITTERS:
            raise ValueError(f"split_method must be one of {sorted(STEP_SPLITTERS)}, got {self.split_method!r}.")
        resolve_vote_weight(self.vote_weight, False)  # an unknown one is an error now, not at report time
        if self.generation_backend not in ("transformers", "vllm"):
            raise ValueError(f"generation_backend must be 'transformers' or 'vllm', got {self.generation_backend!r}.")
        if self.prm_model is None and self.scores_column is None:
            raise ValueError("Pass --prm_model to score candidates, or --scores_column if the dataset has scores.")
        for name in ("num_candidates", "num_seeds", "chunk_size", "prm_batch_size", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_values is not None and any(n < 1 for n in self.n_values):
            raise ValueError(f"n_values must be positive, got {self.n_values}.")

    def job(self) -> dict:
        """The arguments that decide the scored rows (the resumption identity of a run).

        Returns:
            `dict`: All fields except those that only change speed, reporting or the folder itself.
        """
        skip = {
            "output_dir",
            "overwrite",
            "plot",
            "aggregations",
            "n_values",
            "num_seeds",
            "vote_weight",
            "prm_batch_size",
            "generation_batch_size",
            "grading_num_workers",
            "chunk_size",
        }
        job = {k: v for k, v in asdict(self).items() if k not in skip}
        job["seed"] = self.seed if self.generator_model else None  # subset draws are redone at report time
        return job


# ---------------------------------------------------------------------------------------------------------------------
# Reading problems and candidates
# ---------------------------------------------------------------------------------------------------------------------


def gold_answer_text(value: str | float | None) -> str | None:
    """Gold answer of a row as a string: `None` stays `None`, a GSM8K solution `... #### N` gives `N`.

    Args:
        value (`str`, `int`, `float` or `None`):
            The gold column's value.

    Returns:
        `str` or `None`: The gold answer.
    """
    if value is None:
        return None
    text = str(value)
    return text.split("####")[-1].strip() if "####" in text else text.strip()


def _candidate_steps(candidate, split_method: str) -> tuple[str | None, list[str]]:
    """Text (for answer extraction) and steps of one candidate given as a string or a list of steps."""
    if isinstance(candidate, str):
        return candidate, split_steps(candidate, split_method)
    if isinstance(candidate, (list, tuple)) and all(isinstance(s, str) for s in candidate):
        steps = [s for s in candidate if s.strip()]
        return _CANDIDATE_TEXT.join(candidate), steps
    return None, []


def _load_rows(args: BestOfNArguments) -> list[dict]:
    from ..data import load_any_dataset

    dataset = load_any_dataset(args.dataset_name, args.dataset_config, args.dataset_split)
    if args.max_problems is not None:
        dataset = dataset.select(range(min(args.max_problems, len(dataset))))
    needed = [args.prompt_column]
    if args.correctness_column is None:
        needed.append(args.gold_column)
    if args.generator_model is None:
        needed.append(args.candidates_column if args.scores_column is None else args.scores_column)
    for name in (args.correctness_column, args.answers_column):
        if name is not None:
            needed.append(name)
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Dataset {args.dataset_name!r} has no column(s) {missing}; its columns are {dataset.column_names}. Pass "
            "the right --prompt_column / --gold_column / --candidates_column / ... names."
        )
    keep = [c for c in dict.fromkeys([*needed, args.candidates_column]) if c in dataset.column_names]
    rows = [dict(row) for row in dataset.select_columns(keep)]
    for i, row in enumerate(rows):
        _check_row(args, i, row)
    return rows


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_row(args: BestOfNArguments, i: int, row: dict) -> None:
    """Raise a `ValueError` naming the row, the column and the fix for per-candidate columns that disagree in length
    or hold values that would be misread (a string correctness, a `None` score)."""
    from ..data import binary_value

    columns = {}
    if args.generator_model is not None:
        columns["generated candidates (--num_candidates)"] = [None] * args.num_candidates
    elif args.candidates_column in row:
        columns[args.candidates_column] = row[args.candidates_column]
    for name in (args.scores_column, args.correctness_column, args.answers_column):
        if name is not None:
            columns[name] = row[name]
    for name, values in columns.items():
        if values is not None and not isinstance(values, (list, tuple)):
            raise ValueError(
                f"Row {i}: column {name!r} is {values!r:.80}, not a list with one value per candidate; fix the row."
            )
    sizes = {name: len(values or []) for name, values in columns.items()}
    if len(set(sizes.values())) > 1:
        counts = ", ".join(f"{name!r}: {size}" for name, size in sizes.items())
        raise ValueError(
            f"Row {i}: the per-candidate columns have different lengths ({counts}); "
            "each needs exactly one value per candidate, in the same order. Fix the row or drop it (a shorter column "
            "would silently pair values with the wrong candidates)."
        )
    for j, value in enumerate(columns.get(args.correctness_column) or []):
        if binary_value(value) is None:
            raise ValueError(
                f"Row {i}: column {args.correctness_column!r} candidate {j} is {value!r}; correctness must be a bool "
                "or a number equal to 0 or 1 (a string such as 'False' is not read). Convert the column, e.g. "
                "`dataset.map(lambda row: {'correct': [c == 'True' for c in row['correct']]})`."
            )
    for j, value in enumerate(columns.get(args.scores_column) or []):
        if not (_is_number(value) or isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)):
            raise ValueError(
                f"Row {i}: column {args.scores_column!r} candidate {j} is {value!r:.80}; a score must be a number or a "
                "list of step scores (numbers). Write NaN for a candidate or step the PRM could not score: it ranks "
                "below every real score and weighs 0 in weighted voting."
            )


def _generate(args: BestOfNArguments, rows: list[dict], indices: list[int], backend) -> list[list[str]]:
    from ..labeling.backends import Sampling, derive_seed

    prompts = []
    for i in indices:
        text = rows[i][args.prompt_column] + args.prompt_suffix
        if args.use_chat_template:
            text = backend.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        prompts.append(text)
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens)
    seeds = [derive_seed(args.seed, "bon", i) for i in indices]
    return backend.generate(prompts, args.num_candidates, sampling, seeds)


def _make_backend(args: BestOfNArguments):
    from ..labeling.backends import TransformersBackend, VLLMBackend

    if args.generation_backend == "vllm":
        return VLLMBackend(args.generator_model, trust_remote_code=args.trust_remote_code)
    return TransformersBackend(
        args.generator_model, batch_size=args.generation_batch_size, trust_remote_code=args.trust_remote_code
    )


def _score_chunk(args, rows, indices, candidates_of, scorer, grader) -> list[dict]:
    """Steps, PRM scores, answers and grades of the candidates of some problems: one record per problem."""
    records, texts = [], []
    flat_prompts, flat_steps, owners = [], [], []
    for i in indices:
        texts_steps = [_candidate_steps(c, args.split_method) for c in candidates_of[i]]
        record = {"index": i, "num_steps": [len(s) for _, s in texts_steps]}
        if args.answers_column is not None:
            record["answers"] = [None if a is None else str(a) for a in rows[i][args.answers_column]]
        else:
            record["answers"] = [extract_final_answer(t) for t, _ in texts_steps]
        record["has_text"] = args.answers_column is not None or any(t is not None for t, _ in texts_steps)
        if args.generator_model is not None:
            record["candidates"] = candidates_of[i]
        for j, (_, steps) in enumerate(texts_steps):
            flat_prompts.append(rows[i][args.prompt_column])
            flat_steps.append(steps)
            owners.append((len(records), j))
        texts.append([t for t, _ in texts_steps])
        records.append(record)
    if scorer is not None:
        for record in records:
            record["step_scores"] = [[] for _ in record["num_steps"]]
        for (r, j), scores in zip(owners, scorer.score(flat_prompts, flat_steps)):
            records[r]["step_scores"][j] = scores
    else:
        for record, record_texts in zip(records, texts):
            given = rows[record["index"]][args.scores_column] or []
            record["step_scores"] = [
                [float(s)] if isinstance(s, (int, float)) else [float(v) for v in s] for s in given
            ]
            record["given_scores"] = True
            if not any(t is not None for t in record_texts):  # scores-only dump: the scores define the steps
                record["num_steps"] = [len(s) for s in record["step_scores"]]
    if args.correctness_column is not None:
        from ..data import binary_value

        for record in records:
            record["correct"] = [binary_value(c) for c in rows[record["index"]][args.correctness_column] or []]
            record["statuses"] = ["given"] * len(record["correct"])
        return records
    to_grade, golds, owners = [], [], []
    for r, (record, record_texts) in enumerate(zip(records, texts)):
        gold = gold_answer_text(rows[record["index"]][args.gold_column])
        for j, (text, answer) in enumerate(zip(record_texts, record["answers"])):
            # The candidate text is graded as such; a bare answer (answers_column) as "\boxed{answer}".
            if args.answers_column is not None or text is None:
                text = f"\\boxed{{{answer}}}" if answer else ""
            to_grade.append(text)
            golds.append(gold)
            owners.append((r, j))
        record["correct"] = [0.0] * len(record["answers"])
        record["statuses"] = [""] * len(record["answers"])
    for (r, j), result in zip(owners, grader.grade(to_grade, golds) if to_grade else []):
        records[r]["correct"][j] = result.reward
        records[r]["statuses"][j] = result.status
    return records


def open_store(args: BestOfNArguments, rows: list[dict]) -> JobStore:
    """The job store of a Best-of-N run (not opened yet): its identity is `args.job()` and the input rows.

    Args:
        args ([`BestOfNArguments`]):
            The run's arguments.
        rows (`list[dict]`):
            The input rows.

    Returns:
        [`~trl_erprm.jobs.JobStore`]: The store of `args.output_dir`.
    """
    manifest = make_manifest(BON_FORMAT, args.job(), len(rows), content_hash(rows))
    return JobStore(args.output_dir, manifest, outputs=BON_REPORTS, overwrite=args.overwrite, unit="problems")


def score_problems(
    args: BestOfNArguments, store: JobStore | None = None, rows: list[dict] | None = None
) -> list[dict]:
    """Score (and if needed generate and grade) every problem, resuming from `output_dir`; the first half of
    [`run_best_of_n`].

    Args:
        args ([`BestOfNArguments`]):
            The run's arguments.
        store ([`~trl_erprm.jobs.JobStore`], *optional*):
            The run's store, already open (owned by the caller); by default one is opened and closed here.
        rows (`list[dict]`, *optional*):
            The input rows, when the caller has loaded them.

    Returns:
        `list[dict]`: One record per problem in input order: `index`, `answers`, `num_steps`, `step_scores`, `correct`,
        `statuses` (and `candidates` when generated).
    """
    rows = _load_rows(args) if rows is None else rows
    if store is None:
        with open_store(args, rows) as own:
            return _score_all(args, rows, own, own.open())
    return _score_all(args, rows, store, store.read_results())


def _score_all(args: BestOfNArguments, rows: list[dict], store: JobStore, done: dict[int, dict]) -> list[dict]:
    todo = [i for i in range(len(rows)) if i not in done]
    if todo:
        logger.info(f"Best-of-N: {len(todo)} of {len(rows)} problems to score in {args.output_dir}.")
        grader = None if args.correctness_column else MathVerifyGrader(args.grading_num_workers, args.grading_timeout)
        if grader is not None:
            logger.info(f"Starting {grader.num_workers} grading worker(s) in the background (math-verify).")
            grader.start()
        scorer, backend = None, None
        try:
            if args.scores_column is None:
                logger.info(f"Loading the PRM {args.prm_model} ({args.prm_type})...")
                scorer = load_scorer(
                    args.prm_model,
                    prm_type=args.prm_type,
                    step_separator=args.prm_step_separator,
                    step_tag=args.step_tag,
                    good_token=args.good_token,
                    bad_token=args.bad_token,
                    ref_model=args.ref_model,
                    beta=args.beta,
                    implicit_value=args.implicit_value,
                    batch_size=args.prm_batch_size,
                    max_length=args.max_length,
                    dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code,
                )
            if args.generator_model:
                logger.info(f"Loading the generator {args.generator_model} ({args.generation_backend} backend)...")
                backend = _make_backend(args)
            from tqdm.auto import tqdm

            with store.writer() as writer, tqdm(total=len(rows), initial=len(done), desc="BoN") as bar:
                for start in range(0, len(todo), args.chunk_size):
                    chunk = todo[start : start + args.chunk_size]
                    if backend is not None:
                        candidates_of = dict(zip(chunk, _generate(args, rows, chunk, backend)))
                    else:
                        candidates_of = {i: list(rows[i].get(args.candidates_column) or []) for i in chunk}
                        if args.candidates_column not in rows[chunk[0]]:  # scores-only dumps
                            candidates_of = {i: [None] * len(rows[i][args.scores_column] or []) for i in chunk}
                    records = _score_chunk(args, rows, chunk, candidates_of, scorer, grader)
                    writer.write(records)
                    done.update({r["index"]: r for r in records})
                    bar.update(len(chunk))
        finally:
            if grader is not None:
                grader.close()
            if backend is not None:
                backend.close()
    return [done[i] for i in range(len(rows))]


# ---------------------------------------------------------------------------------------------------------------------
# From scored records to curves
# ---------------------------------------------------------------------------------------------------------------------


def aggregate_candidate_scores(step_scores: list[list[float]], how: str) -> list[float]:
    """One score per candidate from its step scores with [`~trl_erprm.functional.aggregate_steps`].

    Args:
        step_scores (`list[list[float]]`):
            Per candidate, its step scores (possibly none).
        how (`str`):
            Aggregation name (`"min"`, `"last"`, `"prod"`, `"mean"`, ...).

    Returns:
        `list[float]`: Per candidate, the aggregated score; NaN for a candidate without steps (or with a NaN step
        score under an aggregation that propagates it).
    """
    if not step_scores:
        return []
    width = max(1, max(len(s) for s in step_scores))
    values = torch.zeros(len(step_scores), width, dtype=torch.float64)
    mask = torch.zeros(len(step_scores), width, dtype=torch.bool)
    for b, scores in enumerate(step_scores):
        values[b, : len(scores)] = torch.tensor(scores, dtype=torch.float64)
        mask[b, : len(scores)] = True
    out = aggregate_steps(values, mask, how)
    # A NaN step score must not vanish under an aggregation that skips it (e.g. "last" of an earlier NaN).
    has_nan = torch.isnan(values).logical_and(mask).any(-1)
    return torch.where(has_nan, math.nan, out).tolist()


def best_of_n_report(records: list[dict], args: BestOfNArguments) -> dict:
    """Accuracy curves and bad-input counts from scored problem records.

    Args:
        records (`list[dict]`):
            The output of [`score_problems`].
        args ([`BestOfNArguments`]):
            Reporting arguments (`aggregations`, `n_values`, `num_seeds`, `seed`).

    Returns:
        `dict`: `curves` (`{method: {N: {"mean", "std", "values"}}}`), `n_values`, `num_problems` (evaluated),
        `bad_input` counts and `grading` status counts.
    """
    statuses = Counter(s for r in records for s in r["statuses"])
    # A gold math-verify cannot parse, or a candidate whose grading timed out, leaves the problem's accuracy unknown.
    kept, left_out = graded_problems([r["statuses"] for r in records])
    evaluated = [records[i] for i in kept]
    sizes = [len(r["correct"]) for r in evaluated]
    max_n = max([args.num_candidates if args.generator_model else 0, *sizes], default=1)
    n_values = sorted(set(args.n_values)) if args.n_values else default_n_values(max(1, max_n))
    scored = [r for r in evaluated if "step_scores" in r]
    bad = {
        **left_out,
        "problems_without_candidates": sum(k == 0 for k in sizes),
        "problems_with_fewer_than_max_n": sum(0 < k < max(n_values) for k in sizes),
        "candidates_without_steps": sum(n == 0 for r in evaluated for n in r["num_steps"]),
        "candidates_with_nan_scores": sum(any(math.isnan(v) for v in s) for r in scored for s in r["step_scores"]),
        "candidates_truncated": sum(
            len(s) < n for r in scored if not r.get("given_scores") for s, n in zip(r["step_scores"], r["num_steps"])
        ),
        "candidates_without_answer": sum(a is None for r in evaluated for a in r["answers"]),
        "grading_timeouts": statuses.get("timeout", 0),
        "grading_errors": statuses.get("error", 0),
    }
    correct = [r["correct"] for r in evaluated]
    voting = all(r.get("has_text", True) for r in evaluated)
    keys = [[normalize_answer(a) for a in r["answers"]] for r in evaluated]
    scores = {agg: [aggregate_candidate_scores(r["step_scores"], agg) for r in evaluated] for agg in args.aggregations}
    prm = None if args.scores_column else args.prm_model
    implicit = args.vote_weight == "auto" and is_implicit_prm(prm, args.prm_type, None, args.trust_remote_code)
    weight = resolve_vote_weight(args.vote_weight, implicit=implicit)
    curves = selection_curves(correct, keys, scores, n_values, args.num_seeds, args.seed, vote_weight=weight)
    if not voting:
        curves = {k: v for k, v in curves.items() if "majority" not in k}
    return {
        "num_problems": len(evaluated),
        "n_values": n_values,
        "curves": curves,
        "bad_input": bad,
        "grading": dict(statuses),
    }


def run_best_of_n(args: BestOfNArguments) -> dict:
    """Run a Best-of-N evaluation end to end: score (resumably), compute the curves, write the reports.

    Args:
        args ([`BestOfNArguments`]):
            The arguments.

    Returns:
        `dict`: The report written to `output_dir/results.json` (see [`best_of_n_report`]), plus `table` (the
        printed markdown table) and `files` (paths of the reports).
    """
    rows = _load_rows(args)
    with open_store(args, rows) as store:  # the folder stays this run's until its reports are written
        store.open()
        records = score_problems(args, store, rows)
        report = best_of_n_report(records, args)
        report["arguments"] = asdict(args)
        timed_out = report["bad_input"]["problems_with_grading_timeouts"]
        if timed_out:
            logger.warning(grading_timeout_message(timed_out))
        out = Path(args.output_dir)
        table = format_table(report["curves"], report["n_values"])
        files = {"results": str(out / "results.json"), "table": str(out / "table.md")}
        if args.plot:
            title = f"Best-of-N ({args.prm_model})"
            files["plot"] = plot_curves(report["curves"], out / "accuracy_vs_n.png", title=title)
        report["files"] = files
        return write_reports(out, report, table, "trl_erprm/evaluation/bon.py")


def bon_main(argv: list[str] | None = None) -> dict:
    """Command-line entry point of `trl-erprm bon`.

    Args:
        argv (`list[str]`, *optional*):
            Arguments (defaults to `sys.argv[1:]`); a YAML file can be given with `--config`.

    Returns:
        `dict`: The report of [`run_best_of_n`].
    """
    from ..script_utils import make_parser

    logging.basicConfig(format="%(message)s")
    logging.getLogger("trl_erprm").setLevel(logging.INFO)  # start-up, resume and warning messages
    parser = make_parser((BestOfNArguments,), prog="trl-erprm bon")
    (args,) = parser.parse_args_and_config(argv)
    return run_best_of_n(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..script_utils import run_command

    sys.exit(run_command(lambda: bon_main(sys.argv[1:]), prog="trl-erprm bon"))
