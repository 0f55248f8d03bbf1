# python examples/bon_eval.py --dataset_name tests/data/gsm8k_test.jsonl --prompt_column question --gold_column answer --max_problems 8 --num_candidates 4 --max_new_tokens 32 --tiny_models_dir bon_tiny --output_dir bon_eval
r"""Best-of-N evaluation of a PRM: Best-of-N per step aggregation, majority and PRM-weighted majority vote, pass@N.

Generate N candidates per problem with a generator, score their steps with a PRM, grade them with the sandboxed
math-verify grader, and write `results.json`, `table.md` and `accuracy_vs_n.png` to `--output_dir`. A run that is
interrupted resumes from `--output_dir` when started again with the same arguments.

On a CPU, with tiny randomly initialised models built locally (the first line of this file; the accuracies are 0, the
point is the pipeline):

    python examples/bon_eval.py --dataset_name tests/data/gsm8k_test.jsonl --prompt_column question \
        --gold_column answer --max_problems 8 --num_candidates 4 --max_new_tokens 32 --tiny_models_dir bon_tiny \
        --output_dir bon_eval

A real generator and an ER-PRM trained with `examples/erprm_train.py`, on MATH-500 (one GPU):

    python examples/bon_eval.py --dataset_name tests/data/math500_test.jsonl \
        --prompt_column problem --gold_column answer --generator_model Qwen/Qwen2.5-Math-1.5B-Instruct \
        --use_chat_template --prompt_suffix " Please reason step by step, and put your final answer within \\boxed{}." \
        --generation_backend vllm --num_candidates 64 --max_new_tokens 1024 \
        --prm_model Qwen2.5-Math-1.5B-ER-PRM --prm_step_separator "\n" --output_dir bon-math500

A local data file is its own (`train`) split: no `--dataset_split` needed (a Hub dataset takes one, e.g.
`--dataset_name HuggingFaceH4/MATH-500 --dataset_split test`). Separator options decode `\n`: `--prm_step_separator
"\n"` is a newline. Errors are one line naming the fix (`TRL_ERPRM_DEBUG=1` shows the traceback).

A Math-Shepherd-style LM-head PRM reads "+" / "-" at its step tag: add `--prm_type lm_head --step_tag " ки"`. An
implicit PRM saved by `ImplicitPRMTrainer` needs no flag (its `prm_config.json` records beta and the reference); one
trained elsewhere: `--prm_type implicit --ref_model <reference> --beta 0.05`. A published Best-of-N dump that already
has correctness and scores needs no model: `--correctness_column ... --scores_column ... --answers_column ...`.
"""

from dataclasses import dataclass, field
from pathlib import Path

from trl_erprm.evaluation import BestOfNArguments, run_best_of_n
from trl_erprm.script_utils import make_parser, run_script


@dataclass
class ExampleArguments:
    """Arguments of this example only.

    Args:
        tiny_models_dir (`str`, *optional*):
            Build a tiny random generator and a tiny token-classification PRM in this folder (offline, seconds on a
            CPU) and use them when `--generator_model` / `--prm_model` are not given.
    """

    tiny_models_dir: str | None = field(default=None, metadata={"help": "Build and use tiny local models here."})


def build_tiny_models(folder: str) -> tuple[str, str]:
    """Build (or reuse) a tiny causal LM and a tiny token-classification PRM sharing one tokenizer.

    Args:
        folder (`str`):
            Where to save them.

    Returns:
        `tuple[str, str]`: The generator and PRM folders.
    """
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    root = Path(folder)
    generator, prm = root / "generator", root / "prm"
    if not (generator / "config.json").is_file() or not (prm / "config.json").is_file():
        tokenizer = build_tokenizer()
        build_tiny_model(tokenizer, "causal_lm", save_dir=generator, seed=0)
        build_tiny_model(tokenizer, "token_classification", save_dir=prm, seed=1)
    return str(generator), str(prm)


def main():
    # The tiny models are known only once built: parse this example's flag first, then the Best-of-N arguments.
    example_args, remaining = make_parser((ExampleArguments,)).parse_args_and_config(return_remaining_strings=True)
    if example_args.tiny_models_dir is not None:
        generator, prm = build_tiny_models(example_args.tiny_models_dir)
        if "--generator_model" not in remaining:
            remaining += ["--generator_model", generator]
        if "--prm_model" not in remaining:
            remaining += ["--prm_model", prm]
    (bon_args,) = make_parser((BestOfNArguments,)).parse_args_and_config(remaining)
    report = run_best_of_n(bon_args)
    print(f"Reports written: {report['files']}")


if __name__ == "__main__":
    run_script(main)
