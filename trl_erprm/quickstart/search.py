"""The optional search stage (`--search`): beam search, DVTS and Best-of-N with the ER-PRM at equal generated tokens.

[`~trl_erprm.search.compare_search`] runs every method on the same held-out problems with the policy as generator
and the ER-PRM as verifier, grades every candidate, and reports accuracy and generated tokens per problem against N,
with the spread over `SEARCH_REPEATS` independent repetitions.
"""

from __future__ import annotations

from .common import STEP_SEPARATOR, stage_seed


#: Independent repetitions of every search (the spread of the search table).
SEARCH_REPEATS = 2


def run_search_stage(config, seed: int, model, tokenizer, problems, scorer) -> dict:
    """Compare beam search, DVTS, Best-of-N and majority vote with one PRM on `config.search_problems` problems.

    Args:
        config ([`QuickstartConfig`]):
            The settings (`search_problems`, `search_n_values`, `search_beam_width`, `aggregation`).
        seed (`int`):
            The run's seed.
        model ([`~transformers.PreTrainedModel`]):
            The policy (the generator).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        problems (`list[Problem]`):
            Held-out problems (the first `config.search_problems` are searched).
        scorer (`LMHeadScorer` or any object with `score(prompts, steps)`):
            The PRM's scorer.

    Returns:
        `dict`: `prm`, `n_values`, `beam_width`, `num_problems`, `num_seeds`, `curves` (accuracy) and `tokens`
        (generated tokens per problem), each `{method: {N: {"mean", "std", "values"}}}`, as
        [`~trl_erprm.search.search_curves`] returns them.
    """
    from ..labeling.backends import TransformersBackend
    from ..labeling.grading import MathVerifyGrader
    from ..search import SearchParams, SearchProblem, compare_search
    from .policy import format_prompt

    chosen = problems[: config.search_problems]
    searched = [SearchProblem(format_prompt(tokenizer, p), format_prompt(tokenizer, p), str(p.answer)) for p in chosen]
    params = SearchParams(
        step_separator=STEP_SEPARATOR, temperature=1.0, max_step_tokens=48, max_new_tokens=config.max_new_tokens,
        max_steps=8, aggregation=config.aggregation,
    )  # fmt: skip
    generator = TransformersBackend(model, tokenizer, 128)
    grader = MathVerifyGrader(num_workers=1)
    try:
        report = compare_search(
            searched, generator, scorer, grader, params, n_values=config.search_n_values,
            beam_width=config.search_beam_width, num_seeds=SEARCH_REPEATS, seed=stage_seed(seed, "search"),
        )  # fmt: skip
    finally:
        grader.close()
        generator.close()
    keep = ("n_values", "num_problems", "num_seeds", "curves", "tokens", "bad_input", "finish")
    return {"beam_width": config.search_beam_width, **{k: report[k] for k in keep}}
