"""ProcessBench-style step evaluation: does the PRM find the first wrong step?

Each item has a `problem`, its `steps` and a `label`: the index of the first wrong step, or `-1` when every step is
right. The PRM scores every step; the predicted first error is the first step scoring below a threshold (`-1` if
none); the report gives the accuracy on erroneous items, on error-free items, and their harmonic mean (F1). The
threshold is given, or chosen to maximise F1 on a calibration set: another split (`calibration_split`) or a seeded
random `calibration_fraction` of the items, which are then left out of the reported metrics.

Stepwise-supervision data (`prompt`, `completions`, per-step `labels`) is accepted with `--label_format step_labels`:
the first step labelled below 0.5 is the first error ([`stepwise_to_processbench`]).

Bad items are counted in `results.json["bad_input"]` and left out:

- an item without steps (or with a step that is not a string), or whose label is not an index of its steps (nor -1;
  a whole-number float such as `-1.0` is an index): left out;
- an item with more scores than steps (a scorer that does not keep the given steps): left out;
- steps past the PRM's `max_length` are not scored: the prediction uses the scored steps (`-1` if none is below);
- a NaN step score counts as below the threshold.

Values that would be misread stop the run before scoring, with an error naming the row and the column: a given step
score that is not a number (`None`: write NaN for an unscored step), and with `step_labels` a label list whose length
is not the number of steps or a label that is not a bool or a number in [0, 1] (NaN). A run where every item is left
out is an error too, not a NaN F1.

Scored items are written to `output_dir/parts/` chunk by chunk; a rerun with the same arguments resumes.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real

import numpy as np

from ..jobs import JobStore, content_hash, make_manifest
from .metrics import choose_threshold, first_error_prediction, processbench_metrics
from .report import write_reports
from .scorers import load_scorer


STEPEVAL_FORMAT = "trl-erprm-stepeval/1"
STEPEVAL_REPORTS = ("results.json", "table.md")
logger = logging.getLogger(__name__)


def stepwise_to_processbench(labels: Sequence[float], threshold: float = 0.5) -> int:
    """First-error index of a stepwise-supervision row: the first step labelled below `threshold`, else `-1`.

    Args:
        labels (`Sequence[float]`):
            Per-step labels in [0, 1] (1 = good step).
        threshold (`float`, *optional*, defaults to `0.5`):
            Labels below it mark a wrong step.

    Returns:
        `int`: The index of the first wrong step, or `-1`.
    """
    return next((i for i, v in enumerate(labels) if float(v) < threshold), -1)


@dataclass
class StepEvalArguments:
    """Arguments of a ProcessBench-style step evaluation (`trl-erprm stepeval`).

    Args:
        dataset_name (`str`):
            Items: a Hub id, a local data file or a `save_to_disk` folder.
        dataset_config (`str`, *optional*):
            Hub dataset configuration.
        dataset_split (`str`, *optional*):
            Split to evaluate. By default the only split there is (a local data file is the `"train"` split); a
            dataset with several splits (most Hub datasets) needs it, e.g. `--dataset_split test`.
        max_items (`int`, *optional*):
            Evaluate only the first items of each split.
        problem_column (`str`, *optional*, defaults to `"problem"`):
            Column of the problem text.
        steps_column (`str`, *optional*, defaults to `"steps"`):
            Column of the list of steps.
        label_column (`str`, *optional*, defaults to `"label"`):
            Column of the label.
        label_format (`str`, *optional*, defaults to `"first_error"`):
            `"first_error"` (ProcessBench: index of the first wrong step, -1 if none) or `"step_labels"` (one label in
            [0, 1] per step, as in stepwise supervision).
        scores_column (`str`, *optional*):
            Column with per-step scores already computed: no PRM needed.
        prm_model (`str`, *optional*):
            The PRM. Required unless `scores_column` is set.
        prm_type (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (the head recorded in the PRM's `prm_config.json`, so a PRM saved by
            [`~trl_erprm.ImplicitPRMTrainer`] is implicit; else read from the architecture), `"token_classification"`,
            `"lm_head"` or `"implicit"`.
        prm_step_separator (`str`, *optional*):
            Separator the PRM was trained with (see `BestOfNArguments`). Default: the one recorded in the PRM's
            `prm_config.json` (trl-erprm trainers write it), else `"\\n"`.
        step_tag (`str`, *optional*):
            LM-head PRMs: the step tag (default: the one in the PRM's `prm_config.json`, else `" ки"`).
        good_token (`str`, *optional*):
            LM-head PRMs (default: recorded in `prm_config.json`, else `"+"`): the good-step token.
        bad_token (`str`, *optional*):
            LM-head PRMs (default: recorded in `prm_config.json`, else `"-"`): the bad-step token.
        ref_model (`str`, *optional*):
            Implicit PRMs: the reference model (`"adapter"` for a PEFT PRM's disabled adapter). Default: the one
            recorded in the PRM's `prm_config.json`, else none (reference-free).
        beta (`float`, *optional*):
            Implicit PRMs: the reward scale. Default: the one recorded in the PRM's `prm_config.json`
            ([`~trl_erprm.ImplicitPRMTrainer`] writes it), else `0.05`.
        implicit_value (`str`, *optional*, defaults to `"q"`):
            Implicit PRMs: step value, `"q"` or `"step_reward"`.
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Items per PRM forward pass.
        max_length (`int`, *optional*):
            Maximum PRM tokens per item.
        dtype (`str`, *optional*, defaults to `"float32"`):
            PRM weights dtype.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the Hub.
        threshold (`float`, *optional*):
            Scores below it mark an error. When `None`, it is chosen on the calibration set.
        calibration_split (`str`, *optional*):
            Split of the same dataset to choose the threshold on.
        calibration_fraction (`float`, *optional*, defaults to `0.5`):
            Without `threshold` nor `calibration_split`: the share of items (seeded random) used to choose the
            threshold and left out of the reported metrics.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the calibration draw.
        chunk_size (`int`, *optional*, defaults to `32`):
            Items scored (and written) together.
        output_dir (`str`, *optional*, defaults to `"stepeval"`):
            Folder of the scored items and the reports.
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete a different run's results found in `output_dir`.
    """

    dataset_name: str = field(metadata={"help": "Hub id, data file or save_to_disk folder of the items."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate (default: the only split; a local data file's is 'train')."}
    )
    max_items: int | None = field(default=None, metadata={"help": "Evaluate only the first items of each split."})
    problem_column: str = field(default="problem", metadata={"help": "Column of the problem text."})
    steps_column: str = field(default="steps", metadata={"help": "Column of the steps."})
    label_column: str = field(default="label", metadata={"help": "Column of the label."})
    label_format: str = field(default="first_error", metadata={"help": "'first_error' or 'step_labels'."})
    scores_column: str | None = field(default=None, metadata={"help": "Column of precomputed step scores."})
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
    prm_batch_size: int = field(default=8, metadata={"help": "Items per PRM forward pass."})
    max_length: int | None = field(default=None, metadata={"help": "Maximum PRM tokens per item."})
    dtype: str = field(default="float32", metadata={"help": "PRM weights dtype."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub."})
    threshold: float | None = field(default=None, metadata={"help": "Error threshold (default: calibrated)."})
    calibration_split: str | None = field(default=None, metadata={"help": "Split to choose the threshold on."})
    calibration_fraction: float = field(default=0.5, metadata={"help": "Share of items to calibrate on."})
    seed: int = field(default=0, metadata={"help": "Seed of the calibration draw."})
    chunk_size: int = field(default=32, metadata={"help": "Items scored and written together."})
    output_dir: str = field(default="stepeval", metadata={"help": "Folder of scored items and reports."})
    overwrite: bool = field(default=False, metadata={"help": "Delete a different run's results in output_dir."})

    def __post_init__(self):
        if self.label_format not in ("first_error", "step_labels"):
            raise ValueError(f"label_format must be 'first_error' or 'step_labels', got {self.label_format!r}.")
        if self.prm_model is None and self.scores_column is None:
            raise ValueError("Pass --prm_model to score steps, or --scores_column if the dataset has scores.")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}.")
        if self.chunk_size < 1 or self.prm_batch_size < 1:
            raise ValueError("chunk_size and prm_batch_size must be >= 1.")

    def job(self) -> dict:
        """The arguments that decide the scored items (the resumption identity of a run).

        Returns:
            `dict`: All fields except the threshold choice, speed settings and the folder itself.
        """
        skip = {"output_dir", "overwrite", "threshold", "calibration_fraction", "seed", "chunk_size", "prm_batch_size"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def _load_items(args: StepEvalArguments) -> list[dict]:
    """Rows of the evaluated split, then of the calibration split, with a `part` field."""
    from ..data import load_any_dataset

    items = []
    splits = [("eval", args.dataset_split)] + (
        [("calibration", args.calibration_split)] if args.calibration_split else []
    )
    for part, split in splits:
        dataset = load_any_dataset(args.dataset_name, args.dataset_config, split)
        if args.max_items is not None:
            dataset = dataset.select(range(min(args.max_items, len(dataset))))
        needed = [args.problem_column, args.steps_column, args.label_column]
        needed += [args.scores_column] if args.scores_column else []
        missing = [c for c in needed if c not in dataset.column_names]
        if missing:
            where = f"Split {split!r} of {args.dataset_name!r}" if split else repr(args.dataset_name)
            raise ValueError(
                f"{where} has no column(s) {missing}; its columns are {dataset.column_names}. Pass --problem_column / "
                "--steps_column / --label_column."
            )
        for i, row in enumerate(dataset.select_columns(needed)):
            _check_item(args, f"Split {split!r} row {i}" if split else f"Row {i}", row)
            items.append({"part": part, **{k: row[k] for k in needed}})
    return items


def _is_number(value) -> bool:
    return isinstance(value, (Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _check_item(args: StepEvalArguments, where: str, row: dict) -> None:
    """Raise a `ValueError` naming the row, the column and the fix for values that would be misread: a score that is
    not a number (`None`), step labels that do not line up with the steps or are not in [0, 1] (NaN). A dump with
    fewer scores than steps stays valid (a PRM's `max_length` cut the rest: counted as truncated)."""
    if args.scores_column:
        scores = row[args.scores_column]
        if not isinstance(scores, list):
            problem = f"is {scores!r:.80}, not a list"
        else:
            problem = next((f"step {k} is {v!r:.80}" for k, v in enumerate(scores) if not _is_number(v)), None)
        if problem is not None:
            raise ValueError(
                f"{where}: column {args.scores_column!r} {problem}; give one number per scored step. Write NaN for a "
                "step the PRM could not score (it counts as below the threshold)."
            )
    if args.label_format == "step_labels":
        labels, steps = row[args.label_column], row[args.steps_column]
        num_steps = len(steps) if isinstance(steps, list) else 0
        if not isinstance(labels, list) or len(labels) != num_steps:
            count = f"{len(labels)} labels" if isinstance(labels, list) else f"{labels!r:.80}"
            raise ValueError(
                f"{where}: column {args.label_column!r} holds {count} for {num_steps} steps in "
                f"{args.steps_column!r}; with --label_format step_labels give exactly one label per step, in step "
                "order, or drop the row."
            )
        for k, value in enumerate(labels):
            number = float(value) if _is_number(value) or isinstance(value, (bool, np.bool_)) else math.nan
            if not 0.0 <= number <= 1.0:
                raise ValueError(
                    f"{where}: column {args.label_column!r} step {k} is {value!r:.80}; with --label_format "
                    "step_labels every step label is a bool or a number in [0, 1] (1 = a good step). Fix the row or "
                    "drop it."
                )


def _item_label(args: StepEvalArguments, value, num_steps: int) -> int | None:
    """The first-error label of an item, or `None` when it is not usable."""
    if args.label_format == "step_labels":
        if not isinstance(value, (list, tuple)) or len(value) != num_steps:
            return None
        return stepwise_to_processbench(value)
    # A float column holds -1.0 / 2.0 when one value of the column is a float: a whole number is still an index.
    if isinstance(value, (bool, np.bool_)) or not _is_number(value) or not float(value).is_integer():
        return None
    return int(value) if -1 <= int(value) < num_steps else None


def _store(args: StepEvalArguments, items: list[dict]) -> JobStore:
    manifest = make_manifest(STEPEVAL_FORMAT, args.job(), len(items), content_hash(items))
    return JobStore(args.output_dir, manifest, outputs=STEPEVAL_REPORTS, overwrite=args.overwrite, unit="items")


def score_items(
    args: StepEvalArguments, store: JobStore | None = None, items: list[dict] | None = None
) -> tuple[list[dict], list[dict]]:
    """Score the steps of every item, resuming from `output_dir`.

    Args:
        args ([`StepEvalArguments`]):
            The arguments.
        store ([`~trl_erprm.jobs.JobStore`], *optional*):
            The run's store, already open (owned by the caller); by default one is opened and closed here.
        items (`list[dict]`, *optional*):
            The input items, when the caller has loaded them.

    Returns:
        `tuple[list[dict], list[dict]]`: The input items and, in the same order, their records (`index`, `part`,
        `label`, `num_steps`, `scores`).
    """
    items = _load_items(args) if items is None else items
    if store is None:
        with _store(args, items) as own:
            own.open()
            return score_items(args, own, items)
    done = store.read_results()
    todo = [i for i in range(len(items)) if i not in done]
    if todo:
        from tqdm.auto import tqdm

        logger.info(f"Step evaluation: {len(todo)} of {len(items)} items to score in {args.output_dir}.")
        scorer = None
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
        with store.writer() as writer, tqdm(total=len(items), initial=len(done), desc="Steps") as bar:
            for start in range(0, len(todo), args.chunk_size):
                chunk = todo[start : start + args.chunk_size]
                steps = [
                    [s for s in items[i][args.steps_column] if isinstance(s, str)]
                    if isinstance(items[i][args.steps_column], list)
                    else []
                    for i in chunk
                ]
                if scorer is not None:
                    prompts = [str(items[i][args.problem_column]) for i in chunk]
                    scores = scorer.score(prompts, steps)
                else:
                    scores = [[float(v) for v in (items[i][args.scores_column] or [])] for i in chunk]
                records = []
                for i, item_steps, item_scores in zip(chunk, steps, scores):
                    raw_steps = items[i][args.steps_column]
                    num_steps = len(raw_steps) if isinstance(raw_steps, list) else 0
                    label = _item_label(args, items[i][args.label_column], num_steps)
                    records.append(
                        {
                            "index": i,
                            "part": items[i]["part"],
                            "label": label,
                            "num_steps": num_steps if len(item_steps) == num_steps else -1,
                            "scores": item_scores,
                        }
                    )
                writer.write(records)
                done.update({r["index"]: r for r in records})
                bar.update(len(chunk))
    return items, [done[i] for i in range(len(items))]


def step_eval_report(records: list[dict], args: StepEvalArguments) -> dict:
    """Threshold, metrics and bad-input counts from scored item records.

    Args:
        records (`list[dict]`):
            The records of [`score_items`].
        args ([`StepEvalArguments`]):
            Threshold arguments (`threshold`, `calibration_split`, `calibration_fraction`, `seed`).

    Returns:
        `dict`: `threshold`, `threshold_source`, `eval` and `calibration` metrics ([`processbench_metrics`] plus
        `num_items`), and `bad_input` counts.
    """
    bad = {"items_without_valid_steps": 0, "items_bad_label": 0, "items_step_count_mismatch": 0}
    bad.update({"items_truncated": 0, "items_with_nan_scores": 0})
    usable = []
    for r in records:
        if r["num_steps"] <= 0:
            bad["items_without_valid_steps"] += 1
        elif r["label"] is None:
            bad["items_bad_label"] += 1
        elif len(r["scores"]) > r["num_steps"]:
            bad["items_step_count_mismatch"] += 1
        else:
            bad["items_truncated"] += len(r["scores"]) < r["num_steps"]
            bad["items_with_nan_scores"] += any(math.isnan(s) for s in r["scores"])
            usable.append(r)
    evaluated = [r for r in usable if r["part"] == "eval"]
    calibration = [r for r in usable if r["part"] == "calibration"]
    for part, kept in (("eval", evaluated), ("calibration", calibration)):
        total = sum(r["part"] == part for r in records)
        if total and not kept:
            reasons = {k: v for k, v in bad.items() if v}
            raise ValueError(
                f"Every one of the {total} {part} items was rejected ({reasons}): there is nothing to measure. "
                f"Check the columns: --label_column {args.label_column!r} with --label_format {args.label_format!r} "
                "(an index of the first wrong step, -1 for none; or 'step_labels', one label in [0, 1] per step), "
                f"--steps_column {args.steps_column!r} (a list of step strings)."
            )
    source = "given"
    if args.threshold is None and not args.calibration_split:
        rng = np.random.default_rng(args.seed)
        chosen = set(rng.permutation(len(evaluated))[: max(1, round(args.calibration_fraction * len(evaluated)))])
        calibration = [r for k, r in enumerate(evaluated) if k in chosen]
        evaluated = [r for k, r in enumerate(evaluated) if k not in chosen]
        source = f"held-out {args.calibration_fraction:.0%} of the items (seed {args.seed})"
    elif args.threshold is None:
        source = f"split {args.calibration_split!r}"
    threshold = args.threshold
    if threshold is None:
        threshold, _ = choose_threshold([r["scores"] for r in calibration], [r["label"] for r in calibration])

    def metrics(rows: list[dict]) -> dict:
        predictions = [first_error_prediction(r["scores"], threshold) for r in rows]
        return {**processbench_metrics([r["label"] for r in rows], predictions), "num_items": len(rows)}

    return {
        "threshold": threshold,
        "threshold_source": source,
        "eval": metrics(evaluated),
        "calibration": metrics(calibration) if calibration else None,
        "bad_input": bad,
    }


def _table(report: dict) -> str:
    lines = ["| set | items | error acc | correct acc | F1 |", "|---|---:|---:|---:|---:|"]
    for name in ("eval", "calibration"):
        m = report[name]
        if m is not None:
            cells = [
                f"{100 * m[k]:.1f}" if not math.isnan(m[k]) else "n/a"
                for k in ("error_accuracy", "correct_accuracy", "f1")
            ]
            lines.append(f"| {name} | {m['num_items']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nthreshold = {report['threshold']:.4g} ({report['threshold_source']})"


def run_step_eval(args: StepEvalArguments) -> dict:
    """Run a step evaluation end to end: score (resumably), choose or apply the threshold, write the reports.

    Args:
        args ([`StepEvalArguments`]):
            The arguments.

    Returns:
        `dict`: The report written to `output_dir/results.json` (see [`step_eval_report`]) plus `table`.
    """
    items = _load_items(args)
    with _store(args, items) as store:
        store.open()  # the folder stays this run's until its reports are written
        _, records = score_items(args, store, items)
        report = step_eval_report(records, args)
        report["arguments"] = asdict(args)
        return write_reports(args.output_dir, report, _table(report), "trl_erprm/evaluation/stepeval.py")


def stepeval_main(argv: list[str] | None = None) -> dict:
    """Command-line entry point of `trl-erprm stepeval`.

    Args:
        argv (`list[str]`, *optional*):
            Arguments (defaults to `sys.argv[1:]`); a YAML file can be given with `--config`.

    Returns:
        `dict`: The report of [`run_step_eval`].
    """
    from ..script_utils import make_parser

    logging.basicConfig(format="%(message)s")
    logging.getLogger("trl_erprm").setLevel(logging.INFO)  # start-up and resume messages
    parser = make_parser((StepEvalArguments,), prog="trl-erprm stepeval")
    (args,) = parser.parse_args_and_config(argv)
    return run_step_eval(args)


if __name__ == "__main__":
    from ..script_utils import run_command

    sys.exit(run_command(lambda: stepeval_main(sys.argv[1:]), prog="trl-erprm stepeval"))
