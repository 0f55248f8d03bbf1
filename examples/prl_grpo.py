# accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/prl_grpo.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --dataset_name HuggingFaceH4/MATH-500 --dataset_split test --output_dir prl-qwen2.5-math-1.5b --bf16 True --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 1024 --learning_rate 1e-6 --beta 0.001 --eta 150
"""PRL (Process Reward Learning, arXiv:2601.10201) with `PRLTrainer`, a GRPOTrainer subclass: a math-verify outcome
reward (`trl.rewards.accuracy_reward`) on the `solution` column; GRPO's outcome advantage `A_i` becomes the per-step
advantage `A_i - (1/eta) * sum_{j>=t} log pi_old(a_j)/pi_ref(a_j)` (steps end at newline tokens, or every
`--step_len` tokens). No reward model is trained. PRL needs GRPO's reference log-probs, which GRPO computes only with
`--beta` > 0 (PRLConfig defaults to 0.001, which keeps GRPO's own KL loss small).

On the CPU, with a tiny local model and local data (a few steps):

    python -c "from trl_erprm.tiny import build_tokenizer, build_tiny_model; build_tiny_model(build_tokenizer(), save_dir='tiny-lm')"
    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/prl_grpo.py --model_name_or_path tiny-lm --dataset_name tests/data/math500_test.jsonl --max_train_samples 16 --output_dir prl-tiny --use_cpu --per_device_train_batch_size 4 --num_generations 2 --max_completion_length 16 --max_steps 3 --beta 0.001 --eta 100 --step_len 4 --report_to none
"""

from dataclasses import dataclass

from trl import ModelConfig, get_peft_config
from trl.rewards import accuracy_reward

from trl_erprm.data import load_any_dataset
from trl_erprm.grpo import PRLConfig, PRLTrainer
from trl_erprm.script_utils import check_launch, make_parser, run_script


INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class ScriptArguments:
    r"""Arguments of this script.

    Parameters:
        dataset_name (`str`, *optional*, defaults to `"HuggingFaceH4/MATH-500"`):
            Dataset on the Hub, a local `.json` / `.jsonl` / `.csv` / `.parquet` file or a `save_to_disk` folder.
        dataset_split (`str`, *optional*):
            Split to train on; by default the only split there is (a local file's, `"train"`). MATH-500 on the Hub
            has one split (`"test"`).
        prompt_column (`str`, *optional*, defaults to `"problem"`):
            Column holding the question.
        solution_column (`str`, *optional*, defaults to `"solution"`):
            Column holding the reference solution (its `\boxed{}` answer is what math-verify compares with).
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep only the first rows of the dataset.
    """

    dataset_name: str = "HuggingFaceH4/MATH-500"
    dataset_split: str | None = None
    prompt_column: str = "problem"
    solution_column: str = "solution"
    max_train_samples: int | None = None


def load_math_dataset(script_args: ScriptArguments):
    """Load the dataset and turn each row into a conversational prompt plus its `solution`."""
    dataset = load_any_dataset(script_args.dataset_name, split=script_args.dataset_split)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    for column in (script_args.prompt_column, script_args.solution_column):
        if column not in dataset.column_names:
            raise ValueError(f"Column {column!r} not in the dataset (columns: {dataset.column_names}).")

    def to_prompt(row):
        question = row[script_args.prompt_column]
        return {
            "prompt": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}],
            "solution": row[script_args.solution_column],
        }

    return dataset.map(to_prompt, remove_columns=dataset.column_names)


def main(script_args: ScriptArguments, training_args: PRLConfig, model_args: ModelConfig):
    check_launch(training_args)
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    trainer = PRLTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[accuracy_reward],
        args=training_args,
        train_dataset=load_math_dataset(script_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, PRLConfig, ModelConfig)))
