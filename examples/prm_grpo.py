# accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/prm_grpo.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --prm_model_name_or_path my-er-prm --dataset_name HuggingFaceH4/MATH-500 --dataset_split test --output_dir prm-grpo-qwen2.5-math-1.5b --bf16 True --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 1024 --outcome_coef 1.0
"""Process-supervised GRPO (DeepSeekMath, arXiv:2402.03300, section 4.1.3) with `PRMGRPOTrainer`: the PRM scores
every step of every completion, the step rewards are normalised over all step rewards of the prompt's group, and a
token's advantage is the sum of the normalised rewards of the steps ending at or after it. `--outcome_coef` adds
GRPO's own advantage of the math-verify `accuracy_reward` (on the `solution` column) on top; 0 is pure process
supervision.

On the CPU, with tiny local models and local data (a few steps):

    python -c "from trl_erprm.tiny import build_tokenizer as t, build_tiny_model as m; m(t(), save_dir='tiny-lm'); m(t(), 'token_classification', save_dir='tiny-prm')"
    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/prm_grpo.py --model_name_or_path tiny-lm --prm_model_name_or_path tiny-prm --dataset_name tests/data/math500_test.jsonl --max_train_samples 8 --output_dir prm-grpo-tiny --use_cpu --per_device_train_batch_size 4 --num_generations 2 --max_completion_length 16 --max_steps 2 --outcome_coef 0.5 --report_to none
"""

import os
from dataclasses import dataclass, field

from datasets import load_dataset
from trl import ModelConfig, get_peft_config
from trl.rewards import accuracy_reward

from trl_erprm import PRMGRPOConfig, PRMGRPOTrainer
from trl_erprm.script_utils import check_launch, make_parser, run_script


INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class ScriptArguments:
    r"""Arguments of this script.

    Parameters:
        dataset_name (`str`, *optional*, defaults to `"HuggingFaceH4/MATH-500"`):
            Dataset on the Hub, or a local `.json` / `.jsonl` file.
        dataset_split (`str`, *optional*, defaults to `"test"`):
            Split of a Hub dataset (a local file has one split).
        prompt_column (`str`, *optional*, defaults to `"problem"`):
            Column holding the question.
        solution_column (`str`, *optional*, defaults to `"solution"`):
            Column holding the reference solution.
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep only the first rows of the dataset.
    """

    dataset_name: str = field(default="HuggingFaceH4/MATH-500", metadata={"help": "Hub dataset or local file."})
    dataset_split: str = field(default="test", metadata={"help": "Split of a Hub dataset."})
    prompt_column: str = field(default="problem", metadata={"help": "Column holding the question."})
    solution_column: str = field(default="solution", metadata={"help": "Column holding the reference solution."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first rows."})


def load_math_dataset(args: ScriptArguments):
    """Conversational prompts (the question and the boxed-answer instruction) with their `solution`; the PRM reads
    the question (`problem` column, `--prm_prompt_column problem`)."""
    if os.path.isfile(args.dataset_name):
        dataset = load_dataset("json", data_files=args.dataset_name, split="train")
    else:
        dataset = load_dataset(args.dataset_name, split=args.dataset_split)
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return dataset.map(
        lambda row: {
            "prompt": [{"role": "user", "content": f"{row[args.prompt_column]}\n{INSTRUCTION}"}],
            "problem": row[args.prompt_column],
            "solution": row[args.solution_column],
        },
        remove_columns=dataset.column_names,
    )


def main(script_args: ScriptArguments, training_args: PRMGRPOConfig, model_args: ModelConfig):
    check_launch(training_args)
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    if training_args.prm_prompt_column is None:
        training_args.prm_prompt_column = "problem"  # the PRM reads the question, not the instruction
    trainer = PRMGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[accuracy_reward],
        args=training_args,
        train_dataset=load_math_dataset(script_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, PRMGRPOConfig, ModelConfig)))
