"""`trl-erprm search`: beam search, DVTS and Best-of-N with one generator and one PRM, resumable, with a report.

Pipeline (the shape of `trl-erprm bon`): load the problems (prompt + gold answer); build the generator backend, the
PRM scorer ([`~trl_erprm.evaluation.scorers.load_scorer`]) and the sandboxed math-verify grader; search and grade the
problems chunk by chunk ([`~trl_erprm.search.compare.search_records`]), appending each problem's results to
`output_dir/parts/` as soon as its chunk is done (a rerun with the same arguments resumes and never repeats a written
problem); then compute accuracy and generated-token curves against N and write `results.json`, `table.md`,
`accuracy_vs_n.png` and `accuracy_vs_tokens.png`.

Run `trl-erprm search --help` (or `python -m trl_erprm.search.run --help`) for the arguments.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from ..evaluation.bon import gold_answer_text
from ..evaluation.metrics import grading_timeout_message, resolve_vote_weight
from ..evaluation.report import format_table, plot_curves, write_reports
from ..jobs import JobStore, content_hash, make_manifest
from ..models import load_tokenizer
from .compare import SearchProblem, base_method, search_curves, search_records
from .search_config import SearchConfig


logger = logging.getLogger(__name__)

SEARCH_FORMAT = "trl-erprm-search/1"
SEARCH_REPORTS = ("results.json", "table.md", "accuracy_vs_n.png", "accuracy_vs_tokens.png")


def _load_rows(config: SearchConfig) -> list[dict]:
    from ..data import load_any_dataset

    dataset = load_any_dataset(config.dataset_name, config.dataset_config, config.dataset_split)
    if config.max_problems is not None:
        dataset = dataset.select(range(min(config.max_problems, len(dataset))))
    needed = [config.prompt_column, config.gold_column]
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Dataset {config.dataset_name!r} has no column(s) {missing}; its columns are {dataset.column_names}. "
            "Pass the right --prompt_column / --gold_column names."
        )
    rows = [dict(row) for row in dataset.select_columns(needed)]
    for i, row in enumerate(rows):
        if not isinstance(row[config.prompt_column], str) or not row[config.prompt_column].strip():
            raise ValueError(f"Row {i}: the prompt column {config.prompt_column!r} must hold a non-empty string.")
    return rows


def make_generator(config: SearchConfig):
    """The rollout backend named by `config.generation_backend`.

    Args:
        config ([`SearchConfig`]):
            The run's configuration.

    Returns:
        A [`~trl_erprm.labeling.backends.TransformersBackend`], `VLLMBackend` or `VLLMServerBackend`.
    """
    from ..labeling.backends import TransformersBackend, VLLMBackend, VLLMServerBackend

    if config.generation_backend == "vllm":
        return VLLMBackend(
            config.generator_model,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            max_model_len=config.vllm_max_model_len,
            trust_remote_code=config.trust_remote_code,
        )
    if config.generation_backend == "vllm_server":
        tokenizer = load_tokenizer(config.generator_model, trust_remote_code=config.trust_remote_code)
        return VLLMServerBackend(config.vllm_server_url, tokenizer=tokenizer)
    return TransformersBackend(
        config.generator_model, batch_size=config.generation_batch_size, trust_remote_code=config.trust_remote_code
    )


def make_scorer(config: SearchConfig):
    """The PRM scorer of the configuration ([`~trl_erprm.evaluation.scorers.load_scorer`]).

    Args:
        config ([`SearchConfig`]):
            The run's configuration.

    Returns:
        A scorer with `score(prompts, steps)`.
    """
    from ..evaluation.scorers import load_scorer

    return load_scorer(
        config.prm_model,
        prm_type=config.prm_type,
        step_separator=config.prm_step_separator,
        step_tag=config.step_tag,
        good_token=config.good_token,
        bad_token=config.bad_token,
        ref_model=config.ref_model,
        beta=config.beta,
        implicit_value=config.implicit_value,
        batch_size=config.prm_batch_size,
        max_length=config.max_length,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
    )


def _chat_tokenizer(config: SearchConfig, generator):
    """The generator's tokenizer, for its chat template: its own (`tokenizer`, or vLLM's), else `generator_model`'s."""
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is None and getattr(generator, "llm", None) is not None:
        tokenizer = generator.llm.get_tokenizer()
    if tokenizer is None:
        tokenizer = load_tokenizer(config.generator_model, trust_remote_code=config.trust_remote_code)
    return tokenizer


def _problems(config: SearchConfig, rows: list[dict], indices: list[int], generator) -> list[SearchProblem]:
    tokenizer = _chat_tokenizer(config, generator) if config.use_chat_template else None
    problems = []
    for i in indices:
        query = rows[i][config.prompt_column]
        prompt = query + config.prompt_suffix
        if tokenizer is not None:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        query = prompt if config.prm_prompt == "generator_prompt" else query
        problems.append(SearchProblem(prompt, query, gold_answer_text(rows[i][config.gold_column])))
    return problems


def open_store(config: SearchConfig, rows: list[dict]) -> JobStore:
    """The job store of a search run (not opened yet): its identity is `config.job()` and the input rows.

    Args:
        config ([`SearchConfig`]):
            The run's configuration.
        rows (`list[dict]`):
            The input rows.

    Returns:
        [`~trl_erprm.jobs.JobStore`]: The store of `config.output_dir`.
    """
    manifest = make_manifest(SEARCH_FORMAT, config.job(), len(rows), content_hash(rows))
    return JobStore(config.output_dir, manifest, outputs=SEARCH_REPORTS, overwrite=config.overwrite, unit="problems")


def search_problems(
    config: SearchConfig,
    generator=None,
    scorer=None,
    grader=None,
    store: JobStore | None = None,
    rows: list[dict] | None = None,
) -> list[dict]:
    """Search and grade every problem, resuming from `output_dir`; the first half of [`run_search`].

    Args:
        config ([`SearchConfig`]):
            The run's configuration.
        generator (*optional*):
            A ready generator (any object with `generate_completions`); built from the configuration when `None`.
        scorer (*optional*):
            A ready scorer (`score(prompts, steps)`); loaded from `prm_model` when `None`.
        grader (*optional*):
            A ready grader (`grade(completions, golds)`); a [`~trl_erprm.labeling.grading.MathVerifyGrader`] when
            `None`.
        store ([`~trl_erprm.jobs.JobStore`], *optional*):
            The run's store, already open (owned by the caller); by default one is opened and closed here.
        rows (`list[dict]`, *optional*):
            The input rows, when the caller has loaded them.

    Returns:
        `list[dict]`: One record per problem in input order (see
        [`~trl_erprm.search.compare.search_records`]).
    """
    rows = _load_rows(config) if rows is None else rows
    if store is None:
        with open_store(config, rows) as own:
            own.open()
            return _search_all(config, rows, own, generator, scorer, grader)
    return _search_all(config, rows, store, generator, scorer, grader)


def _search_all(config: SearchConfig, rows: list[dict], store: JobStore, generator, scorer, grader) -> list[dict]:
    from tqdm.auto import tqdm

    from ..labeling.grading import MathVerifyGrader

    done = store.read_results()
    todo = [i for i in range(len(rows)) if i not in done]
    if not todo:
        return [done[i] for i in range(len(rows))]
    owned = []
    try:
        if generator is None:
            generator = make_generator(config)
            owned.append(generator)
        if scorer is None:
            scorer = make_scorer(config)
        if grader is None:
            grader = MathVerifyGrader(config.grading_num_workers, config.grading_timeout)
            owned.append(grader)
        with store.writer() as writer, tqdm(total=len(rows), initial=len(done), desc="Search") as bar:
            generated = 0  # tokens of the finished chunks

            def on_iteration(trees):
                bar.set_postfix(iteration=max(t.iteration for t in trees), generated_tokens=generated)

            for start in range(0, len(todo), config.chunk_size):
                chunk = todo[start : start + config.chunk_size]
                records = search_records(
                    _problems(config, rows, chunk, generator),
                    generator,
                    scorer,
                    grader,
                    config.params(),
                    config.n_values,
                    config.beam_width,
                    config.methods,
                    config.num_seeds,
                    config.seed,
                    indices=chunk,
                    on_iteration=on_iteration,
                )
                writer.write(records)
                done.update({r["index"]: r for r in records})
                for run in (run for r in records for run in r["runs"]):
                    generated += sum(t["tokens"] for t in run["trees"].values())
                    generated += sum(c["num_tokens"] for c in run.get("best_of_n", []))
                bar.update(len(chunk))
    finally:
        for owner in owned:
            owner.close()
    return [done[i] for i in range(len(rows))]


def format_token_table(tokens: dict[str, dict[int, dict]], n_values: list[int]) -> str:
    """Markdown table of the mean generated tokens per problem (mean ± std over seeds), one row per method.

    Args:
        tokens (`dict[str, dict[int, dict]]`):
            `{method: {N: {"mean", "std", ...}}}`.
        n_values (`list[int]`):
            The columns.

    Returns:
        `str`: The table.
    """

    def cell(stats: dict) -> str:
        if math.isnan(stats["mean"]):
            return "n/a"
        return f"{stats['mean']:.0f} ± {stats['std']:.0f}" if stats["std"] > 0 else f"{stats['mean']:.0f}"

    lines = ["| method | " + " | ".join(f"N={n}" for n in n_values) + " |", "|---|" + "---:|" * len(n_values)]
    for method, by_n in tokens.items():
        lines.append(f"| {method} | " + " | ".join(cell(by_n[n]) for n in n_values) + " |")
    return "\n".join(lines)


def plot_accuracy_vs_tokens(
    curves: dict[str, dict[int, dict]], tokens: dict[str, dict[int, dict]], path: str | os.PathLike, title: str
) -> str:
    """Plot accuracy against mean generated tokens per problem (log axis), one line per method over its values of N.

    Args:
        curves (`dict[str, dict[int, dict]]`):
            Accuracy `{method: {N: {"mean", "std", ...}}}`.
        tokens (`dict[str, dict[int, dict]]`):
            Generated tokens per search method (`"beam_search"`, `"dvts"`, `"best_of_n"`), same layout.
        path (`str` or `os.PathLike`):
            PNG file to write.
        title (`str`):
            Plot title.

    Returns:
        `str`: The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, by_n in curves.items():
        ns = sorted(by_n)
        ax.errorbar(
            [tokens[base_method(method)][n]["mean"] for n in ns],
            [100 * by_n[n]["mean"] for n in ns],
            xerr=[tokens[base_method(method)][n]["std"] for n in ns],
            yerr=[100 * by_n[n]["std"] for n in ns],
            label=method,
            linestyle="--" if method == "majority" or method.endswith("_weighted") else "-",
            marker="o",
            capsize=3,
        )
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def run_search(config: SearchConfig, generator=None, scorer=None, grader=None) -> dict:
    """Run a search evaluation end to end: search (resumably), compute the curves, write the reports.

    Args:
        config ([`SearchConfig`]):
            The configuration.
        generator (*optional*):
            A ready generator with `generate_completions`; built from `generator_model` when `None`.
        scorer (*optional*):
            A ready scorer with `score(prompts, steps)`; loaded from `prm_model` when `None`.
        grader (*optional*):
            A ready grader with `grade(completions, golds)`; a math-verify grader when `None`.

    Returns:
        `dict`: The report written to `output_dir/results.json`: `curves` (accuracy) and `tokens` (mean generated
        tokens per problem) as `{method: {N: {"mean", "std", "values"}}}`, `n_values`, `num_problems`, `num_seeds`,
        `bad_input`, `grading` and `finish` counts, the arguments, plus `table` (the printed markdown) and `files`.
    """
    rows = _load_rows(config)
    with open_store(config, rows) as store:  # the folder stays this run's until its reports are written
        store.open()
        records = search_problems(config, generator, scorer, grader, store, rows)
        return _report(config, records, scorer)


def _report(config: SearchConfig, records: list[dict], scorer=None) -> dict:
    from ..evaluation.scorers import is_implicit_prm

    implicit = config.vote_weight == "auto" and is_implicit_prm(
        config.prm_model, config.prm_type, scorer, config.trust_remote_code
    )
    weight = resolve_vote_weight(config.vote_weight, implicit=implicit)
    report = search_curves(records, config.n_values, config.beam_width, config.methods, weight)
    if report["bad_input"]["problems_with_grading_timeouts"]:
        logger.warning(grading_timeout_message(report["bad_input"]["problems_with_grading_timeouts"]))
    report["arguments"] = asdict(config)
    out = Path(config.output_dir)
    table = (
        f"Accuracy (%), mean ± std over {report['num_seeds']} seeds, {report['num_problems']} problems\n\n"
        + format_table(report["curves"], report["n_values"])
        + "\n\nGenerated tokens per problem\n\n"
        + format_token_table(report["tokens"], report["n_values"])
    )
    files = {"results": str(out / "results.json"), "table": str(out / "table.md")}
    if config.plot:
        title = f"PRM-guided search ({Path(config.prm_model).name})"
        files["plot"] = plot_curves(report["curves"], out / "accuracy_vs_n.png", title=title)
        files["plot_tokens"] = plot_accuracy_vs_tokens(
            report["curves"], report["tokens"], out / "accuracy_vs_tokens.png", title
        )
    report["files"] = files
    return write_reports(out, report, table, "trl_erprm/search/compare.py")


def search_main(argv: list[str] | None = None) -> dict:
    """Command-line entry point of `trl-erprm search`.

    Args:
        argv (`list[str]`, *optional*):
            Arguments (defaults to `sys.argv[1:]`); a YAML file can be given with `--config`.

    Returns:
        `dict`: The report of [`run_search`].
    """
    from ..script_utils import make_parser

    parser = make_parser((SearchConfig,), prog="trl-erprm search")
    (config,) = parser.parse_args_and_config(argv)
    return run_search(config)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..script_utils import run_command

    sys.exit(run_command(lambda: search_main(sys.argv[1:]), prog="trl-erprm search"))
