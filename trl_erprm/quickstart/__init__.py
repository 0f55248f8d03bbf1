"""The offline quickstart: the synthetic arithmetic task, its checker, its tiny policy and the end-to-end pipeline.

Names are imported from their modules on first use.
"""

import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


_import_structure = {
    "config": ["FAST_SETTINGS", "QuickstartConfig", "quickstart_config"],
    "pipeline": ["quickstart_main", "run_quickstart", "run_seed"],
    "policy": [
        "PolicyConfig",
        "build_policy_tokenizer",
        "format_prompt",
        "load_policy",
        "policy_accuracy",
        "policy_path",
        "sample_solutions",
        "train_policy",
    ],
    "checker": [
        "STEP_ERRORS",
        "SolutionCheck",
        "build_processbench_dataset",
        "build_stepwise_dataset",
        "check_solution",
    ],
    "task": [
        "OPERATIONS",
        "Operation",
        "Problem",
        "ProblemStep",
        "TaskConfig",
        "build_problem_dataset",
        "demonstration_steps",
        "distinct_problems",
        "generate_problems",
        "parse_problem",
        "task_corpus",
    ],
}

if TYPE_CHECKING:
    from .checker import (
        STEP_ERRORS,
        SolutionCheck,
        build_processbench_dataset,
        build_stepwise_dataset,
        check_solution,
    )
    from .config import FAST_SETTINGS, QuickstartConfig, quickstart_config
    from .pipeline import quickstart_main, run_quickstart, run_seed
    from .policy import (
        PolicyConfig,
        build_policy_tokenizer,
        format_prompt,
        load_policy,
        policy_accuracy,
        policy_path,
        sample_solutions,
        train_policy,
    )
    from .task import (
        OPERATIONS,
        Operation,
        Problem,
        ProblemStep,
        TaskConfig,
        build_problem_dataset,
        demonstration_steps,
        distinct_problems,
        generate_problems,
        parse_problem,
        task_corpus,
    )
else:
    sys.modules[__name__] = LazyModule(__name__, __file__, _import_structure, __spec__, {"__doc__": __doc__})
