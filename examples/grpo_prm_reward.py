# accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/grpo_prm_reward.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --prm_model_name_or_path my-er-prm --dataset_name HuggingFaceH4/MATH-500 --dataset_split test --output_dir grpo-prm-reward-qwen2.5-math-1.5b --bf16 True --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 1024
"""GRPO with two rewards: a PRM's aggregated step scores (`trl_erprm.PRMReward`, any PRM trl-erprm loads: token
classification, LM head, implicit) and TRL's math-verify `accuracy_reward` on the `solution` column. GRPOTrainer sums
them with `--reward_weights` (default 1 and 1).

The PRM cuts each completion into steps with its own step format (`--prm_step_separator` overrides it), scores every
step on each process's device without gradient, and `--prm_aggregation` (min, last, prod, mean) makes one reward; a
completion with no step gets 0. GRPO logs `rewards/prm_reward/mean`, `prm_reward/step_score/mean` and
`prm_reward/steps_per_completion`. For an LM-head PRM (Math-Shepherd style) pass `--prm_step_tag " ки"
--prm_good_token "+" --prm_bad_token "-"` when the PRM folder does not say them.

On the CPU, with tiny local models and local data (a few steps):

    python -c "from trl_erprm.tiny import build_tokenizer as t, build_tiny_model as m; m(t(), save_dir='tiny-lm'); m(t(), 'token_classification', save_dir='tiny-prm')"
    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/grpo_prm_reward.py --model_name_or_path tiny-lm --prm_model_name_or_path tiny-prm --dataset_name tests/data/math500_test.jsonl --max_train_samples 8 --output_dir grpo-prm-tiny --use_cpu --per_device_train_batch_size 4 --num_generations 2 --max_completion_length 16 --max_steps 2 --report_to none
"""

import os
from dataclasses import dataclass, field

from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config
from trl.rewards import accuracy_reward

from trl_erprm import PRMReward
from trl_erprm.script_utils import check_launch, make_parser, run_script


INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class ScriptArguments:
    r"""Arguments of this script.

    Parameters:
        prm_model_name_or_path (`str`):
            The PRM (folder or Hub id).
        prm_type (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"token_classification"`, `"lm_head"` or `"implicit"`.
        prm_step_separator (`str` or `None`, *optional*, defaults to `None`):
            Text that ends a step (default: the PRM's own).
        prm_step_tag (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the step tag.
        prm_good_token (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the "good step" token.
        prm_bad_token (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the "bad step" token.
        prm_aggregation (`str`, *optional*, defaults to `"min"`):
            How the step scores become one reward.
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Completions per PRM forward pass.
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

    prm_model_name_or_path: str = field(metadata={"help": "The PRM (folder or Hub id)."})
    prm_type: str = field(default="auto", metadata={"help": "'auto', 'token_classification', 'lm_head', 'implicit'."})
    prm_step_separator: str | None = field(default=None, metadata={"help": "Text that ends a step."})
    prm_step_tag: str | None = field(default=None, metadata={"help": "LM-head PRMs: the step tag."})
    prm_good_token: str | None = field(default=None, metadata={"help": "LM-head PRMs: the good-step token."})
    prm_bad_token: str | None = field(default=None, metadata={"help": "LM-head PRMs: the bad-step token."})
    prm_aggregation: str = field(default="min", metadata={"help": "min, last, prod or mean."})
    prm_batch_size: int = field(default=8, metadata={"help": "Completions per PRM forward pass."})
    dataset_name: str = field(default="HuggingFaceH4/MATH-500", metadata={"help": "Hub dataset or local file."})
    dataset_split: str = field(default="test", metadata={"help": "Split of a Hub dataset."})
    prompt_column: str = field(default="problem", metadata={"help": "Column holding the question."})
    solution_column: str = field(default="solution", metadata={"help": "Column holding the reference solution."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first rows."})


def load_math_dataset(args: ScriptArguments):
    """Conversational prompts (the question and the boxed-answer instruction) with their `solution`."""
    if os.path.isfile(args.dataset_name):
        dataset = load_dataset("json", data_files=args.dataset_name, split="train")
    else:
        dataset = load_dataset(args.dataset_name, split=args.dataset_split)
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return dataset.map(
        lambda row: {
            "prompt": [{"role": "user", "content": f"{row[args.prompt_column]}\n{INSTRUCTION}"}],
            "solution": row[args.solution_column],
        },
        remove_columns=dataset.column_names,
    )


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig):
    check_launch(training_args)
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision}
    reward = PRMReward(
        script_args.prm_model_name_or_path,
        aggregation=script_args.prm_aggregation,
        step_separator=script_args.prm_step_separator,
        prm_type=script_args.prm_type,
        step_tag=script_args.prm_step_tag,
        good_token=script_args.prm_good_token,
        bad_token=script_args.prm_bad_token,
        batch_size=script_args.prm_batch_size,
    )
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[reward, accuracy_reward],
        args=training_args,
        train_dataset=load_math_dataset(script_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, GRPOConfig, ModelConfig)))
