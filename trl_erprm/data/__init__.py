"""The data layer: loading datasets, converting public PRM datasets, preparing and collating training rows.

- `loading`: [`load_any_dataset`] (Hub ids, local data files, `save_to_disk` folders).
- `converters`: Math-Shepherd, ER-PRM, PRM800K and GSM8K rows to TRL's stepwise-supervision format (and back out
  to the Math-Shepherd and ER-PRM formats).
- `stepwise`: validation, tokenization (TRL 1.13 `PRMTrainer` layout) and the float-label collator of stepwise rows.
- `lm_head`: the LM-head layout of stepwise rows (a step tag after every step, two candidate tokens).
- `outcome`: outcome-labelled rows of implicit PRMs: GRPO-style prompt tokenization, validation, DPO pairs, collator.

This package imports no trainer, labeler or scorer: they import it. Names are imported on first use.
"""

import sys
from typing import TYPE_CHECKING

from .._lazy import LazyModule


_import_structure = {
    "loading": ["load_any_dataset"],
    "converters": [
        "MATH_SHEPHERD_STEP_TAG",
        "convert_prm800k",
        "erprm_to_stepwise",
        "gsm8k_to_stepwise",
        "math_shepherd_to_stepwise",
        "prm800k_to_stepwise",
        "stepwise_to_erprm",
        "stepwise_to_math_shepherd",
    ],
    "lm_head": ["lm_head_candidate_ids", "tokenize_lm_head_row"],
    "stepwise": [
        "STATUS_COLUMN",
        "ERPRMDataCollator",
        "binary_value",
        "check_hard_labels",
        "check_labelled_rows",
        "drop_failed_rows",
        "map_stepwise_dataset",
        "tokenize_stepwise_row",
        "tokenize_train_and_eval",
        "validate_stepwise_dataset",
    ],
    "outcome": [
        "DataCollatorForImplicitPRM",
        "build_dpo_pairs",
        "completion_text",
        "encode_prompt",
        "mismatched_rows",
        "prepare_outcome_dataset",
        "truncate_to_max_length",
        "validate_outcome_rows",
    ],
}

if TYPE_CHECKING:
    from .converters import (
        MATH_SHEPHERD_STEP_TAG,
        convert_prm800k,
        erprm_to_stepwise,
        gsm8k_to_stepwise,
        math_shepherd_to_stepwise,
        prm800k_to_stepwise,
        stepwise_to_erprm,
        stepwise_to_math_shepherd,
    )
    from .lm_head import lm_head_candidate_ids, tokenize_lm_head_row
    from .loading import load_any_dataset
    from .outcome import (
        DataCollatorForImplicitPRM,
        build_dpo_pairs,
        completion_text,
        encode_prompt,
        mismatched_rows,
        prepare_outcome_dataset,
        truncate_to_max_length,
        validate_outcome_rows,
    )
    from .stepwise import (
        STATUS_COLUMN,
        ERPRMDataCollator,
        binary_value,
        check_hard_labels,
        check_labelled_rows,
        drop_failed_rows,
        map_stepwise_dataset,
        tokenize_stepwise_row,
        tokenize_train_and_eval,
        validate_stepwise_dataset,
    )
else:
    sys.modules[__name__] = LazyModule(__name__, __file__, _import_structure, __spec__, {"__doc__": __doc__})
