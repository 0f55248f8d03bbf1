"""RAFT (rejection-sampling fine-tuning): sample N completions per problem, keep the best by a PRM, the grader or a
vote, fine-tune the policy on them with TRL's SFTTrainer, evaluate, repeat; resumable, under `accelerate launch`.

Names are imported from their modules on first use.
"""

import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


_import_structure = {
    "raft": ["STAGES", "format_raft_table", "load_problems", "raft_main", "run_raft"],
    "raft_config": ["RAFTConfig"],
    "selection": ["SCORINGS", "SELECTIONS", "keepable", "majority_scores", "outcome_scores", "select_samples"],
}

if TYPE_CHECKING:
    from .raft import STAGES, format_raft_table, load_problems, raft_main, run_raft
    from .raft_config import RAFTConfig
    from .selection import SCORINGS, SELECTIONS, keepable, majority_scores, outcome_scores, select_samples
else:
    sys.modules[__name__] = LazyModule(__name__, __file__, _import_structure, __spec__, {"__doc__": __doc__})
