"""Step-level search guided by a PRM: beam search and diverse verifier tree search (DVTS).

Both algorithms (search-and-learn, Hugging Face 2024, "Scaling test-time compute"; SPEC section 11) grow solutions
one step at a time. A step is sampled until the step separator (`Sampling.stop`) or the end of the solution, the PRM
scores the partial solution, and the best partial solutions are expanded further:

- **Beam search** ([`BeamTree`] with `n` and `width`): the root is expanded with `n` samples; at every later
  iteration each of the `n // width` kept beams is expanded with `width` samples. New beams that ended (EOS, a step
  that hit `max_step_tokens`, an empty step, a final answer) are kept aside as finished; of the others the
  `n // width` with the best aggregated score continue. At iteration `max_steps - 1` the beams are sampled to the end
  of the solution (no stop string), so every beam ends within `max_steps` iterations.
- **DVTS** ([`dvts_trees`]): the budget `n` is split into `n // width` independent subtrees, each a beam search with
  `n = width` (so it keeps one beam and expands it greedily with `width` samples), with its own seed.

The final answer is chosen among the finished beams by [`select_candidate`]: the best aggregated PRM score, or a
PRM-weighted (or plain) vote over normalised final answers.

The generator and the scorer are injected: any object with `generate_completions(prompts, n, sampling, seeds)` (the
rollout backends of [`~trl_erprm.labeling.backends`], or a scripted generator in tests) and any object with
`score(prompts, steps)` (the scorers of [`~trl_erprm.evaluation.scorers`]). [`run_trees`] advances many trees (of
many problems, seeds and methods) in lockstep, so each iteration is one generation call per request size and one
scoring call. Everything is seeded: a tree's samples depend only on its seed, its problem and the generator.

Every generated token is counted in [`BeamTree.tokens`] (`Completion.num_tokens` of every sample, pruned ones
included), so methods can be compared at equal generation budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..evaluation.bon import aggregate_candidate_scores
from ..evaluation.metrics import normalize_answer, pick_best, vote, vote_weights
from ..functional import STEP_AGGREGATIONS
from ..labeling.backends import Completion, Sampling, derive_seed
from ..labeling.grading import extract_final_answer
from ..steps import split_by_separator


#: Why a beam ended: EOS, a step cut at its token limit, a step without text, a final answer in the step, or the
#: last iteration reached while a step still ended at the separator.
BEAM_FINISH_REASONS = ("eos", "length", "empty", "answer", "max_steps")

#: How the final answer is chosen among finished beams (see [`select_candidate`]).
SELECTIONS = ("score", "weighted_vote", "majority")


class StepGenerator(Protocol):
    """What search needs from a generator: the `generate_completions` method of the rollout backends."""

    def generate_completions(
        self, prompts: Sequence[str], n: int, sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]: ...


class StepScorer(Protocol):
    """What search needs from a PRM: the `score` method of the scorers."""

    def score(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]: ...


@dataclass(frozen=True)
class SearchParams:
    """How steps are sampled, scored and ended during a search.

    Args:
        step_separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text between two steps in the generator's solutions: generation of a step stops there, and full solutions
            are split there into the steps the PRM scores.
        temperature (`float`, *optional*, defaults to `0.8`):
            Sampling temperature (search-and-learn uses 0.8).
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling.
        max_step_tokens (`int`, *optional*, defaults to `256`):
            Maximum tokens of one step; a step that reaches it ends its beam (`"length"`).
        max_new_tokens (`int`, *optional*, defaults to `1024`):
            Maximum tokens of the last iteration (sampled to the end of the solution) and of a Best-of-N candidate.
        max_steps (`int`, *optional*, defaults to `40`):
            Maximum iterations of a search; the last one samples each beam to the end of its solution.
        aggregation (`str`, *optional*, defaults to `"last"`):
            How a beam's step scores become its score, for pruning and for the final choice: one of
            `functional.STEP_AGGREGATIONS` (`"last"`, `"min"`, `"prod"`, `"mean"`, ...).
        finish_on_answer (`bool`, *optional*, defaults to `True`):
            End a beam whose new step holds a final answer (`\\boxed{}` or "The answer is",
            [`~trl_erprm.labeling.grading.extract_final_answer`]).
    """

    step_separator: str = "\n\n"
    temperature: float = 0.8
    top_p: float = 1.0
    max_step_tokens: int = 256
    max_new_tokens: int = 1024
    max_steps: int = 40
    aggregation: str = "last"
    finish_on_answer: bool = True

    def __post_init__(self):
        if not self.step_separator:
            raise ValueError("step_separator must be a non-empty string such as '\\n\\n'.")
        if self.aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {sorted(STEP_AGGREGATIONS)}, got {self.aggregation!r}.")
        for name in ("max_step_tokens", "max_new_tokens", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        self.sampling(final=True)  # validates temperature and top_p

    def sampling(self, final: bool) -> Sampling:
        """Sampling of one iteration.

        Args:
            final (`bool`):
                Whether this is a search's last iteration (or a Best-of-N candidate): sampled to the end of the
                solution, without the stop string, up to `max_new_tokens`.

        Returns:
            [`~trl_erprm.labeling.backends.Sampling`]: One step (stop at `step_separator`, at most `max_step_tokens`)
            or a whole solution.
        """
        if final:
            return Sampling(self.temperature, self.top_p, self.max_new_tokens)
        return Sampling(self.temperature, self.top_p, self.max_step_tokens, stop=(self.step_separator,))


@dataclass
class Beam:
    """A partial (or finished) solution in a search tree.

    Args:
        text (`str`, *optional*, defaults to `""`):
            The generated text so far, exactly as generated (steps joined by the separator the generator wrote); the
            generator's next prompt is the problem prompt followed by it.
        steps (`tuple[str, ...]`, *optional*, defaults to `()`):
            The non-empty steps, stripped: what the PRM scores.
        step_scores (`list[float]`, *optional*, defaults to `[]`):
            The PRM's scores of `steps` (fewer when the PRM cut the solution at its `max_length`).
        score (`float`, *optional*, defaults to NaN):
            `step_scores` aggregated with `SearchParams.aggregation` (NaN without any score).
        finish (`str`, *optional*):
            `None` while the beam is active, else one of [`BEAM_FINISH_REASONS`].
    """

    text: str = ""
    steps: tuple[str, ...] = ()
    step_scores: list[float] = field(default_factory=list)
    score: float = math.nan
    finish: str | None = None

    @property
    def answer(self) -> str | None:
        """`str` or `None`: The final answer of the text ([`~trl_erprm.labeling.grading.extract_final_answer`])."""
        return extract_final_answer(self.text)


def tree_seed(seed: int, k: int) -> int:
    """Seed of the `k`-th tree of a search run with base seed `seed` (beam search uses tree 0, DVTS trees 0, 1, ...).

    Args:
        seed (`int`):
            The base seed of one problem and one repetition.
        k (`int`):
            Index of the tree.

    Returns:
        `int`: The tree's seed ([`~trl_erprm.labeling.backends.derive_seed`]).
    """
    return derive_seed(seed, "tree", k)


class BeamTree:
    """The state of one beam search over one problem; advanced by [`run_trees`].

    Args:
        prompt (`str`):
            The generator's prompt (chat template and suffix applied); each beam's text is appended to it.
        query (`str`):
            The problem as the PRM reads it (`score([query], [steps])`).
        n (`int`):
            Samples per iteration: the root gets `n`, then each of the `n // width` kept beams gets `width`.
        width (`int`):
            Beam width `M`; `n` must be a multiple of it.
        seed (`int`):
            Seed of the tree: expansion `j` of iteration `t` uses `derive_seed(seed, t, j)`.
        params ([`SearchParams`]):
            Sampling, separator, aggregation and limits.
    """

    def __init__(self, prompt: str, query: str, n: int, width: int, seed: int, params: SearchParams):
        if width < 1 or n < width or n % width:
            raise ValueError(
                f"Beam search needs n to be a positive multiple of the beam width; got n={n}, width={width}."
            )
        self.prompt, self.query, self.n, self.width, self.seed, self.params = prompt, query, n, width, seed, params
        self.keep = n // width
        self.active: list[Beam] = [Beam()]
        self.finished: list[Beam] = []
        self.iteration = 0
        self.tokens = 0
        self.samples = 0

    @property
    def done(self) -> bool:
        """`bool`: Whether no beam is left to expand."""
        return not self.active

    @property
    def final(self) -> bool:
        """`bool`: Whether the coming iteration is the last one (sampled to the end of the solution)."""
        return self.iteration >= self.params.max_steps - 1

    def requests(self) -> list[tuple[str, int, int]]:
        """The expansions of the coming iteration.

        Returns:
            `list[tuple[str, int, int]]`: Per active beam, in order: (generator prompt, number of samples, seed).
        """
        n = self.n if self.iteration == 0 else self.width
        return [
            (self.prompt + b.text, n, derive_seed(self.seed, self.iteration, j)) for j, b in enumerate(self.active)
        ]

    def extend(self, completions: Sequence[Sequence[Completion]]) -> list[Beam]:
        """New (unscored) beams from the samples of each active beam, in order; counts their tokens.

        Args:
            completions (`Sequence[Sequence[Completion]]`):
                Per active beam (the order of [`requests`]), its samples.

        Returns:
            `list[Beam]`: One child per sample, with `finish` set when it ended.
        """
        if len(completions) != len(self.active):
            raise ValueError(f"Got samples for {len(completions)} beams, expected {len(self.active)}.")
        separator, children = self.params.step_separator, []
        for parent, samples in zip(self.active, completions):
            for c in samples:
                self.tokens += c.num_tokens
                self.samples += 1
                new_steps = tuple(split_by_separator(c.text, separator))
                child = Beam(parent.text + c.text, parent.steps + new_steps, list(parent.step_scores))
                if c.finish_reason != "stop":
                    child.finish = c.finish_reason
                elif not new_steps:
                    child.finish = "empty"
                elif self.params.finish_on_answer and extract_final_answer(new_steps[-1]) is not None:
                    child.finish = "answer"
                elif self.final:
                    child.finish = "max_steps"
                if c.finish_reason == "stop":
                    child.text += separator
                children.append(child)
        return children

    def update(self, children: Sequence[Beam]) -> None:
        """Keep the finished children, continue with the best `n // width` others, and move to the next iteration.

        Args:
            children (`Sequence[Beam]`):
                The scored output of [`extend`]. Ties go to the earlier child; a NaN score ranks last.
        """
        self.finished.extend(b for b in children if b.finish is not None)
        live = [b for b in children if b.finish is None]
        rank = sorted(range(len(live)), key=lambda i: (-_rank_value(live[i].score), i))
        self.active = [live[i] for i in rank[: self.keep]]
        self.iteration += 1


def _rank_value(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def _check_scores(scores: list, beams: list[Beam]) -> None:
    if len(scores) != len(beams):
        raise ValueError(f"The scorer returned {len(scores)} score lists for {len(beams)} solutions.")
    for beam, values in zip(beams, scores):
        if len(values) > len(beam.steps):
            raise ValueError(
                f"The scorer returned {len(values)} scores for a solution of {len(beam.steps)} steps: a step the PRM "
                "splits further (an implicit PRM whose step_separator occurs inside the generator's steps?). Use a "
                f"PRM separator that does not occur inside steps. Steps: {list(beam.steps)!r}"
            )


def run_trees(
    trees: Sequence[BeamTree],
    generator: StepGenerator,
    scorer: StepScorer,
    on_iteration: Callable[[Sequence[BeamTree]], None] | None = None,
) -> None:
    """Advance trees in lockstep until every one is done: per iteration one generation call per request size (and
    per kind of sampling) and one scoring call for all of them.

    Args:
        trees (`Sequence[BeamTree]`):
            The trees (any problems, sizes and seeds), modified in place.
        generator ([`StepGenerator`]):
            Samples steps (`generate_completions`).
        scorer ([`StepScorer`]):
            Scores partial solutions (`score`).
        on_iteration (`Callable`, *optional*):
            Called with the trees after every iteration (progress reporting).
    """
    while True:
        live = [t for t in trees if not t.done]
        if not live:
            return
        requests = [(t, r) for t in live for r in t.requests()]
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, (tree, (_, n, _)) in enumerate(requests):
            groups.setdefault((tree.final, n), []).append(i)
        samples: list = [None] * len(requests)
        for (final, n), members in groups.items():
            sampling = requests[members[0]][0].params.sampling(final)
            prompts = [requests[i][1][0] for i in members]
            seeds = [requests[i][1][2] for i in members]
            outputs = generator.generate_completions(prompts, n, sampling, seeds)
            if len(outputs) != len(members) or any(len(o) != n for o in outputs):
                raise ValueError(
                    f"The generator returned {[len(o) for o in outputs]} samples; expected {n} per prompt."
                )
            for i, output in zip(members, outputs):
                samples[i] = output
        children, start = {}, 0
        for tree in live:
            children[id(tree)] = tree.extend(samples[start : start + len(tree.active)])
            start += len(tree.active)
        new = [(t, b) for t in live for b in children[id(t)] if b.steps]
        if new:
            beams = [b for _, b in new]
            scores = scorer.score([t.query for t, _ in new], [list(b.steps) for b in beams])
            _check_scores(scores, beams)
            for beam, values in zip(beams, scores):
                beam.step_scores = [float(v) for v in values]
        for tree in live:
            kids = children[id(tree)]
            for beam, value in zip(
                kids, aggregate_candidate_scores([b.step_scores for b in kids], tree.params.aggregation)
            ):
                beam.score = value
            tree.update(kids)
        if on_iteration is not None:
            on_iteration(trees)


def beam_search(
    prompt: str,
    query: str,
    generator: StepGenerator,
    scorer: StepScorer,
    n: int,
    width: int,
    seed: int,
    params: SearchParams | None = None,
) -> BeamTree:
    """Step-level beam search for one problem (the first tree of `seed`, [`tree_seed`]`(seed, 0)`).

    Args:
        prompt (`str`):
            The generator's prompt.
        query (`str`):
            The problem as the PRM reads it.
        generator ([`StepGenerator`]):
            Samples steps.
        scorer ([`StepScorer`]):
            Scores partial solutions.
        n (`int`):
            Number of beams `N` (samples per iteration).
        width (`int`):
            Beam width `M`: each kept beam gets `M` samples, `N // M` beams are kept.
        seed (`int`):
            Base seed.
        params ([`SearchParams`], *optional*):
            Defaults to `SearchParams()`.

    Returns:
        [`BeamTree`]: The finished tree: `finished` beams, `tokens` generated.
    """
    tree = BeamTree(prompt, query, n, width, tree_seed(seed, 0), params or SearchParams())
    run_trees([tree], generator, scorer)
    return tree


def dvts_trees(prompt: str, query: str, n: int, width: int, seed: int, params: SearchParams) -> list[BeamTree]:
    """The `n // width` independent subtrees of a DVTS run: beam searches with `n = width` and seeds
    [`tree_seed`]`(seed, k)`.

    Args:
        prompt (`str`):
            The generator's prompt.
        query (`str`):
            The problem as the PRM reads it.
        n (`int`):
            Total budget `N` (samples per iteration over all subtrees).
        width (`int`):
            Samples per subtree and iteration `M`; `n` must be a multiple of it.
        seed (`int`):
            Base seed.
        params ([`SearchParams`]):
            Sampling, separator, aggregation and limits.

    Returns:
        `list[BeamTree]`: The unexpanded subtrees (advance them with [`run_trees`]).
    """
    if width < 1 or n < width or n % width:
        raise ValueError(f"DVTS needs n to be a positive multiple of the width; got n={n}, width={width}.")
    return [BeamTree(prompt, query, width, width, tree_seed(seed, k), params) for k in range(n // width)]


def dvts(
    prompt: str,
    query: str,
    generator: StepGenerator,
    scorer: StepScorer,
    n: int,
    width: int,
    seed: int,
    params: SearchParams | None = None,
) -> list[BeamTree]:
    """Diverse verifier tree search for one problem: [`dvts_trees`] advanced to the end.

    Args:
        prompt (`str`):
            The generator's prompt.
        query (`str`):
            The problem as the PRM reads it.
        generator ([`StepGenerator`]):
            Samples steps.
        scorer ([`StepScorer`]):
            Scores partial solutions.
        n (`int`):
            Total budget `N`.
        width (`int`):
            Width `M` of each subtree.
        seed (`int`):
            Base seed.
        params ([`SearchParams`], *optional*):
            Defaults to `SearchParams()`.

    Returns:
        `list[BeamTree]`: The finished subtrees; the candidates are all their finished beams.
    """
    trees = dvts_trees(prompt, query, n, width, seed, params or SearchParams())
    run_trees(trees, generator, scorer)
    return trees


def select_candidate(
    scores: Sequence[float], answers: Sequence[str | None], how: str = "score", vote_weight: str = "score"
) -> int | None:
    """Choose the final solution among finished candidates.

    Args:
        scores (`Sequence[float]`):
            Each candidate's aggregated PRM score (NaN ranks last and weighs 0).
        answers (`Sequence[str | None]`):
            Each candidate's final answer (`None`: no answer, no vote).
        how (`str`, *optional*, defaults to `"score"`):
            One of [`SELECTIONS`]: `"score"` (highest score, ties to the first), `"weighted_vote"` (answers grouped
            with [`~trl_erprm.evaluation.metrics.normalize_answer`], each group weighs the sum of its scores) or
            `"majority"` (unweighted vote).
        vote_weight (`str`, *optional*, defaults to `"score"`):
            `"weighted_vote"`: a candidate's weight from its score
            ([`~trl_erprm.evaluation.metrics.VOTE_WEIGHTS`]): `"score"` (a probability) or `"sigmoid"` (an implicit
            PRM's value).

    Returns:
        `int` or `None`: Index of the chosen candidate; `None` without candidates (or, for votes, without answers).

    Raises:
        `ValueError`: An unknown `how` or `vote_weight`, or a negative vote weight (an implicit PRM's value voted
            with `vote_weight="score"`).
    """
    if how not in SELECTIONS:
        raise ValueError(f"how must be one of {SELECTIONS}, got {how!r}.")
    if not scores:
        return None
    subset = range(len(scores))
    if how == "score":
        return pick_best(scores, subset)
    keys = [normalize_answer(a) for a in answers]
    return vote(keys, subset, vote_weights(scores, vote_weight) if how == "weighted_vote" else None)
