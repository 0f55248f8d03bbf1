# accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/prime_grpo.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --dataset_name HuggingFaceH4/MATH-500 --dataset_split test --output_dir prime-qwen2.5-math-1.5b --bf16 True --per_device_train_batch_size 8 --num_generations 4 --max_completion_length 1024 --learning_rate 5e-7 --prm_learning_rate 1e-6
"""PRIME (arXiv:2502.01456) with `PRIMETrainer`, a GRPOTrainer subclass: a math-verify outcome reward
(`trl.rewards.accuracy_reward`) on the `solution` column, and an implicit PRM initialised from the policy (or from
`--prm_model_name_or_path`) and trained online, whose token-level rewards give PRIME's advantages.

On the CPU, with a tiny local model and local data (a few steps):

    python -c "from trl_erprm.tiny import build_tokenizer, build_tiny_model; build_tiny_model(build_tokenizer(), save_dir='tiny-lm')"
    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/prime_grpo.py --model_name_or_path tiny-lm --dataset_name tests/data/math500_test.jsonl --max_train_samples 16 --output_dir prime-tiny --use_cpu --per_device_train_batch_size 4 --num_generations 2 --max_completion_length 16 --max_steps 3 --accuracy_lower_bound 0 --accuracy_upper_bound 1 --report_to none

The PRM is a separate full copy of the model per process (its gradients are summed over processes with an
all-reduce); with DeepSpeed ZeRO-2/3 only the policy is sharded. The PRM (with its optimizer state and a model card)
is saved in `prm/` inside every checkpoint and in `<output_dir>/prm` at the end; `--resume_from_checkpoint` restores
it, and refuses a checkpoint that lacks it.
"""

from dataclasses import dataclass

from trl import ModelConfig, get_peft_config
from trl.rewards import accuracy_reward

from trl_erprm.data import load_any_dataset
from trl_erprm.grpo import PRIMEConfig, PRIMETrainer
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


def main(script_args: ScriptArguments, training_args: PRIMEConfig, model_args: ModelConfig):
    check_launch(training_args)
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    # the PRM is built from --prm_model_name_or_path (default: the policy), in float32: AdamW at lr 1e-6 needs float32
    # weights, and with --bf16 its forward passes run under the trainer's autocast
    trainer = PRIMETrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[accuracy_reward],
        args=training_args,
        train_dataset=load_math_dataset(script_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)  # the policy, and the PRM in <output_dir>/prm
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        if trainer.accelerator.is_main_process:
            trainer.push_prm_to_hub(f"{trainer.hub_model_id}-prm")


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, PRIMEConfig, ModelConfig)))
