"""Test-time search with a PRM: step-level beam search and DVTS, compared with Best-of-N at equal generated tokens."""

from .compare import METHODS, SearchProblem, compare_search, search_curves, search_records
from .run import run_search, search_main
from .search import (
    BEAM_FINISH_REASONS,
    SELECTIONS,
    Beam,
    BeamTree,
    SearchParams,
    StepGenerator,
    StepScorer,
    beam_search,
    dvts,
    dvts_trees,
    run_trees,
    select_candidate,
    tree_seed,
)
from .search_config import SearchConfig


__all__ = [
    "BEAM_FINISH_REASONS",
    "METHODS",
    "SELECTIONS",
    "Beam",
    "BeamTree",
    "SearchConfig",
    "SearchParams",
    "SearchProblem",
    "StepGenerator",
    "StepScorer",
    "beam_search",
    "compare_search",
    "dvts",
    "dvts_trees",
    "run_search",
    "run_trees",
    "search_curves",
    "search_main",
    "search_records",
    "select_candidate",
    "tree_seed",
]
