"""Beam search, DVTS and Best-of-N with one generator and one PRM, on the same problems and seeds, at each N.

[`search_records`] runs every method on a list of problems and grades every candidate: one JSON-serialisable record
per problem (this is what a search run writes to its folder, chunk by chunk). [`search_curves`] turns records into
accuracy and generated-token curves against N, with the mean and spread over seeds. [`compare_search`] does both in
memory, for callers that hold a generator, a scorer and a grader already (the quickstart).

Per problem and repetition `s` (base seed `derive_seed(seed, s, problem_index)`):

- beam search at each N: one [`BeamTree`] with `n = N`, `width = M`, seed [`tree_seed`]`(base, 0)`;
- DVTS: `max(N) // M` subtrees of width `M` with seeds `tree_seed(base, k)`; DVTS at N uses subtrees `0 .. N/M - 1`
  (nested, as Best-of-N's candidates are). Beam search at `N = M` is DVTS's first subtree and is run once;
- Best-of-N: `max(N)` whole solutions from one request with seed `derive_seed(base, "best_of_n")`, split into steps
  at the step separator and scored by the PRM; Best-of-N at N uses the first N.

Methods in the curves: `beam_search`, `dvts`, `best_of_n` (final choice by aggregated PRM score), the same with
`_weighted` (PRM-weighted vote over answers) and `majority` (plain vote over the Best-of-N candidates). The cost of a
method at N is the number of tokens it generated for a problem (pruned samples included), averaged over problems.
A problem whose gold answer cannot be parsed (grading status `gold_unparsable`), or with a candidate whose grading
timed out (status `timeout`, after the grader's retry), is left out of every accuracy and counted, by the rule of
Best-of-N ([`~trl_erprm.evaluation.metrics.graded_problems`]): a timeout is never a wrong answer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..evaluation.bon import aggregate_candidate_scores
from ..evaluation.metrics import check_vote_weights, graded_problems, resolve_vote_weight, vote_weights
from ..labeling.backends import derive_seed
from ..steps import split_by_separator
from .search import Beam, BeamTree, SearchParams, StepGenerator, StepScorer, run_trees, select_candidate, tree_seed


#: Search methods that can be run (`majority` comes with `best_of_n`).
METHODS = ("beam_search", "dvts", "best_of_n")


@dataclass(frozen=True)
class SearchProblem:
    """One problem of a search run.

    Args:
        prompt (`str`):
            The generator's prompt (chat template and suffix applied).
        query (`str`):
            The problem as the PRM reads it.
        gold (`str`, *optional*):
            The gold answer, graded against.
    """

    prompt: str
    query: str
    gold: str | None = None


def tree_key(n: int, width: int, k: int) -> str:
    """Name of a tree in a record: `"<n>x<width>#<k>"`.

    Args:
        n (`int`):
            The tree's `n`.
        width (`int`):
            Its width.
        k (`int`):
            Its index ([`tree_seed`]).

    Returns:
        `str`: The key.
    """
    return f"{n}x{width}#{k}"


def check_n_values(n_values: Sequence[int], width: int) -> list[int]:
    """Sorted distinct values of N, each a positive multiple of the beam width.

    Args:
        n_values (`Sequence[int]`):
            The values of N.
        width (`int`):
            The beam width `M`.

    Returns:
        `list[int]`: The sorted values.
    """
    if width < 1:
        raise ValueError(f"beam_width must be >= 1, got {width}.")
    bad = [n for n in n_values if n < width or n % width]
    if bad or not n_values:
        raise ValueError(
            f"Every N must be a positive multiple of beam_width={width} (N // M beams are kept); got n_values="
            f"{list(n_values)}. Use e.g. {[width * 2**k for k in range(4)]}."
        )
    return sorted(set(n_values))


def _candidate(beam: Beam) -> dict:
    return {
        "text": beam.text,
        "num_steps": len(beam.steps),
        "step_scores": beam.step_scores,
        "score": beam.score,
        "finish": beam.finish,
        "answer": beam.answer,
    }


def _build_trees(problems, jobs, params, n_values, width, methods) -> dict:
    """The trees of every (problem, repetition) job, keyed `(job, tree_key)`; `jobs` holds `(problem, base seed)`."""
    trees: dict[tuple[int, str], BeamTree] = {}
    for job, (p, base) in enumerate(jobs):
        prompt, query = problems[p].prompt, problems[p].query
        if "beam_search" in methods:
            for n in n_values:
                trees[(job, tree_key(n, width, 0))] = BeamTree(prompt, query, n, width, tree_seed(base, 0), params)
        if "dvts" in methods:
            for k in range(max(n_values) // width):
                tree = BeamTree(prompt, query, width, width, tree_seed(base, k), params)
                trees.setdefault((job, tree_key(width, width, k)), tree)
    return trees


def _best_of_n(problems, jobs, generator, scorer, params, num) -> list[list[dict]]:
    """`num` whole solutions per job, split into steps and scored: the Best-of-N candidates."""
    seeds = [derive_seed(base, "best_of_n") for _, base in jobs]
    prompts = [problems[p].prompt for p, _ in jobs]
    samples = generator.generate_completions(prompts, num, params.sampling(final=True), seeds)
    steps = [[split_by_separator(c.text, params.step_separator) for c in row] for row in samples]
    flat = [(i, j) for i, row in enumerate(steps) for j, s in enumerate(row) if s]
    queries = [problems[jobs[i][0]].query for i, _ in flat]
    scores = scorer.score(queries, [steps[i][j] for i, j in flat]) if flat else []
    step_scores = [[[] for _ in row] for row in steps]
    for (i, j), values in zip(flat, scores):
        step_scores[i][j] = [float(v) for v in values]
    out = []
    for i, row in enumerate(samples):
        aggregated = aggregate_candidate_scores(step_scores[i], params.aggregation)
        beams = [
            Beam(c.text, tuple(steps[i][j]), step_scores[i][j], aggregated[j], c.finish_reason)
            for j, c in enumerate(row)
        ]
        out.append([{**_candidate(b), "num_tokens": c.num_tokens} for b, c in zip(beams, row)])
    return out


def _grade(records: list[dict], problems: Sequence[SearchProblem], grader) -> None:
    """Grade every candidate of every record in one call (the grader caches repeated answers)."""
    owners, texts, golds = [], [], []
    for record, problem in zip(records, problems):
        for run in record["runs"]:
            groups = [tree["candidates"] for tree in run["trees"].values()] + [run.get("best_of_n", [])]
            for candidates in groups:
                for c in candidates:
                    owners.append(c)
                    texts.append(c["text"])
                    golds.append(problem.gold)
    for candidate, result in zip(owners, grader.grade(texts, golds) if texts else []):
        candidate["correct"] = float(result.reward)
        candidate["status"] = result.status


def search_records(
    problems: Sequence[SearchProblem],
    generator: StepGenerator,
    scorer: StepScorer,
    grader,
    params: SearchParams,
    n_values: Sequence[int],
    beam_width: int,
    methods: Sequence[str] = METHODS,
    num_seeds: int = 3,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    on_iteration: Callable | None = None,
) -> list[dict]:
    """Run the methods on the problems for every repetition, grade every candidate, one record per problem.

    The problems are searched together (their trees advance in lockstep through [`run_trees`]); a problem's results
    depend only on its index, the seeds and the models, not on which problems share its batch.

    Args:
        problems (`Sequence[SearchProblem]`):
            The problems.
        generator ([`StepGenerator`]):
            Samples steps and solutions (`generate_completions`).
        scorer ([`StepScorer`]):
            The PRM (`score`).
        grader (`MathVerifyGrader` or any object with `grade`):
            Any object with `grade(completions, golds) -> list[GradeResult]`, e.g.
            [`~trl_erprm.labeling.grading.MathVerifyGrader`]; results need `reward` and `status`.
        params ([`SearchParams`]):
            Sampling, separator, aggregation and limits.
        n_values (`Sequence[int]`):
            Values of N, multiples of `beam_width`.
        beam_width (`int`):
            `M`.
        methods (`Sequence[str]`, *optional*, defaults to `METHODS`):
            Which of [`METHODS`] to run.
        num_seeds (`int`, *optional*, defaults to `3`):
            Independent repetitions.
        seed (`int`, *optional*, defaults to `0`):
            Base seed.
        indices (`Sequence[int]`, *optional*):
            Index of each problem in its dataset (seeds derive from it); defaults to `0, 1, ...`.
        on_iteration (`Callable`, *optional*):
            Called after each search iteration with the trees (progress).

    Returns:
        `list[dict]`: Per problem: `index` and `runs` (one per repetition): `trees` (`{tree_key: {"tokens",
        "samples", "candidates"}}`) and `best_of_n` (candidates with `num_tokens`). A candidate holds `text`,
        `num_steps`, `step_scores`, `score`, `finish`, `answer`, `correct` and `status`.
    """
    n_values = check_n_values(n_values, beam_width)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods {unknown or '[]'} invalid; choose from {METHODS}.")
    indices = list(range(len(problems))) if indices is None else list(indices)
    if len(indices) != len(problems):
        raise ValueError(f"Got {len(indices)} indices for {len(problems)} problems.")
    # One job per (problem, repetition), all searched together; seeds derive from the problem's index, not its batch.
    jobs = [(p, derive_seed(seed, s, index)) for p, index in enumerate(indices) for s in range(num_seeds)]
    trees = _build_trees(problems, jobs, params, n_values, beam_width, methods)
    run_trees(list(trees.values()), generator, scorer, on_iteration)
    runs = [{"trees": {}} for _ in jobs]
    for (job, key), tree in trees.items():
        candidates = [_candidate(b) for b in tree.finished]
        runs[job]["trees"][key] = {"tokens": tree.tokens, "samples": tree.samples, "candidates": candidates}
    if "best_of_n" in methods:
        for run, candidates in zip(runs, _best_of_n(problems, jobs, generator, scorer, params, max(n_values))):
            run["best_of_n"] = candidates
    records = [
        {"index": int(index), "runs": runs[p * num_seeds : (p + 1) * num_seeds]} for p, index in enumerate(indices)
    ]
    _grade(records, problems, grader)
    return records


def _choose(candidates: list[dict], how: str, vote_weight: str = "score") -> float:
    """Correctness of the candidate chosen by `how` (0 when none can be chosen)."""
    scores, answers = [c["score"] for c in candidates], [c["answer"] for c in candidates]
    chosen = select_candidate(scores, answers, how, vote_weight)
    return 0.0 if chosen is None else float(candidates[chosen]["correct"])


def base_method(name: str) -> str:
    """The search method behind a curve name: `"beam_search_weighted"` -> `"beam_search"`, `"majority"` ->
    `"best_of_n"` (they share its candidates and its generated tokens).

    Args:
        name (`str`):
            A curve name.

    Returns:
        `str`: One of [`METHODS`].
    """
    return "best_of_n" if name == "majority" else name.removesuffix("_weighted")


def _outcomes(run: dict, n: int, width: int, methods: Sequence[str], vote_weight: str) -> tuple[dict, dict]:
    """Correctness of every curve and generated tokens of every method at N, for one problem and repetition."""
    pools = {}
    if "beam_search" in methods:
        tree = run["trees"][tree_key(n, width, 0)]
        pools["beam_search"] = (tree["candidates"], tree["tokens"])
    if "dvts" in methods:
        subtrees = [run["trees"][tree_key(width, width, k)] for k in range(n // width)]
        pools["dvts"] = ([c for t in subtrees for c in t["candidates"]], sum(t["tokens"] for t in subtrees))
    if "best_of_n" in methods:
        first = run["best_of_n"][:n]
        pools["best_of_n"] = (first, sum(c["num_tokens"] for c in first))
    correct = {}
    for name, (candidates, _) in pools.items():
        correct[name] = _choose(candidates, "score")
        correct[f"{name}_weighted"] = _choose(candidates, "weighted_vote", vote_weight)
    if "best_of_n" in methods:
        correct["majority"] = _choose(pools["best_of_n"][0], "majority")
    return correct, {name: float(tokens) for name, (_, tokens) in pools.items()}


def _stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def _all_candidates(record: dict):
    for run in record["runs"]:
        for tree in run["trees"].values():
            yield from tree["candidates"]
        yield from run.get("best_of_n", [])


def search_curves(
    records: Sequence[dict],
    n_values: Sequence[int],
    beam_width: int,
    methods: Sequence[str],
    vote_weight: str = "score",
) -> dict:
    """Accuracy and generated tokens against N for every method, with the mean and spread over repetitions.

    Args:
        records (`Sequence[dict]`):
            Graded records of [`search_records`] (all with the same number of repetitions).
        n_values (`Sequence[int]`):
            Values of N (each run by the records).
        beam_width (`int`):
            `M`.
        methods (`Sequence[str]`):
            The methods run.
        vote_weight (`str`, *optional*, defaults to `"score"`):
            Weight of a candidate in the `_weighted` curves
            ([`~trl_erprm.evaluation.metrics.VOTE_WEIGHTS`]): `"score"` (a probability) or `"sigmoid"` (an implicit
            PRM's value).

    Returns:
        `dict`: `curves` (`{curve: {N: {"mean", "std", "values"}}}`: accuracy over problems, one value per
        repetition, for every method and selection) and `tokens` (the same layout, per method of [`METHODS`]: mean
        generated tokens per problem; see [`base_method`]), `n_values`, `num_problems` (evaluated),
        `num_seeds`, `bad_input` counts, `grading` status counts and `finish` reason counts.

    Raises:
        `ValueError`: A negative vote weight, naming the problem and the candidate.
    """
    n_values = check_n_values(n_values, beam_width)
    candidates = [c for r in records for c in _all_candidates(r)]
    statuses = Counter(c["status"] for c in candidates)
    kept, left_out = graded_problems([[c["status"] for c in _all_candidates(r)] for r in records])
    evaluated = [records[i] for i in kept]
    for i in kept:  # a negative weight is refused before any curve, naming its problem
        weights = vote_weights([c["score"] for c in _all_candidates(records[i])], vote_weight)
        check_vote_weights(weights, f"problem {records[i].get('index', i)} (all its runs, in order)")
    num_seeds = min((len(r["runs"]) for r in records), default=0)
    curves: dict[str, dict[int, dict]] = {}
    tokens: dict[str, dict[int, dict]] = {}
    for n in n_values:
        correct: dict[str, list[float]] = {}
        cost: dict[str, list[float]] = {}
        for s in range(num_seeds):
            outcomes = [_outcomes(record["runs"][s], n, beam_width, methods, vote_weight) for record in evaluated]
            for values, into in ((0, correct), (1, cost)):
                for name in outcomes[0][values] if outcomes else ():
                    into.setdefault(name, []).append(sum(o[values][name] for o in outcomes) / len(outcomes))
        for name, values in correct.items():
            curves.setdefault(name, {})[n] = _stats(values)
        for name, values in cost.items():
            tokens.setdefault(name, {})[n] = _stats(values)
    bad = {
        **left_out,
        "candidates_without_answer": sum(c["answer"] is None for c in candidates),
        "candidates_without_steps": sum(c["num_steps"] == 0 for c in candidates),
        "candidates_with_nan_scores": sum(any(math.isnan(v) for v in c["step_scores"]) for c in candidates),
        "candidates_truncated": sum(0 < len(c["step_scores"]) < c["num_steps"] for c in candidates),
        "grading_timeouts": statuses.get("timeout", 0),
        "grading_errors": statuses.get("error", 0),
    }
    return {
        "num_problems": len(evaluated),
        "num_seeds": num_seeds,
        "n_values": n_values,
        "curves": curves,
        "tokens": tokens,
        "bad_input": bad,
        "grading": dict(statuses),
        "finish": dict(Counter(c["finish"] for c in candidates)),
    }


def compare_search(
    problems: Sequence[SearchProblem],
    generator: StepGenerator,
    scorer: StepScorer,
    grader,
    params: SearchParams | None = None,
    n_values: Sequence[int] = (4, 16),
    beam_width: int = 4,
    methods: Sequence[str] = METHODS,
    num_seeds: int = 3,
    seed: int = 0,
    vote_weight: str = "auto",
) -> dict:
    """Beam search, DVTS and Best-of-N (and majority vote) on in-memory problems with in-memory models.

    Args:
        problems (`Sequence[SearchProblem]`):
            The problems.
        generator ([`StepGenerator`]):
            E.g. a [`~trl_erprm.labeling.backends.TransformersBackend`] around a loaded policy.
        scorer ([`StepScorer`]):
            E.g. a [`~trl_erprm.evaluation.scorers.TokenClassificationScorer`] around a trained PRM.
        grader (`MathVerifyGrader` or any object with `grade`):
            Any object with `grade(completions, golds) -> list[GradeResult]`.
        params ([`SearchParams`], *optional*):
            Defaults to `SearchParams()`.
        n_values (`Sequence[int]`, *optional*, defaults to `(4, 16)`):
            Values of N, multiples of `beam_width`.
        beam_width (`int`, *optional*, defaults to `4`):
            `M`.
        methods (`Sequence[str]`, *optional*, defaults to `METHODS`):
            Which of [`METHODS`] to run.
        num_seeds (`int`, *optional*, defaults to `3`):
            Independent repetitions (the spread of the curves).
        seed (`int`, *optional*, defaults to `0`):
            Base seed.
        vote_weight (`str`, *optional*, defaults to `"auto"`):
            See [`search_curves`]; `"auto"`: `"sigmoid"` for an
            [`~trl_erprm.evaluation.scorers.ImplicitPRMScorer`], else `"score"`.

    Returns:
        `dict`: The output of [`search_curves`] plus `records` (those of [`search_records`]).
    """
    from ..evaluation.scorers import ImplicitPRMScorer

    vote_weight = resolve_vote_weight(vote_weight, implicit=isinstance(scorer, ImplicitPRMScorer))
    params = params or SearchParams()
    records = search_records(
        problems, generator, scorer, grader, params, n_values, beam_width, methods, num_seeds, seed
    )
    return {**search_curves(records, n_values, beam_width, methods, vote_weight), "records": records}
