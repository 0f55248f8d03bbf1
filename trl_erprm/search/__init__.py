"""Test-time search with a PRM: step-level beam search and DVTS, compared with Best-of-N at equal generated tokens.

Names are imported from their modules on first use (TRL's lazy-module pattern).
"""

import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


_import_structure = {
    "compare": ["METHODS", "SearchProblem", "compare_search", "search_curves", "search_records"],
    "run": ["run_search", "search_main"],
    "search": [
        "BEAM_FINISH_REASONS",
        "SELECTIONS",
        "Beam",
        "BeamTree",
        "SearchParams",
        "StepGenerator",
        "StepScorer",
        "beam_search",
        "dvts",
        "dvts_trees",
        "run_trees",
        "select_candidate",
        "tree_seed",
    ],
    "search_config": ["SearchConfig"],
}

if TYPE_CHECKING:
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
else:
    sys.modules[__name__] = LazyModule(__name__, __file__, _import_structure, __spec__, {"__doc__": __doc__})
