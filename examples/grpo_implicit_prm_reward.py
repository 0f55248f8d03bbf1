# accelerate launch examples/grpo_implicit_prm_reward.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --prm_model_name_or_path Qwen2.5-Math-1.5B-ImplicitPRM --prm_ref_model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --dataset_name tests/data/math500_test.jsonl --output_dir Qwen2.5-Math-1.5B-GRPO-ImplicitPRM --num_generations 8 --max_completion_length 1024
"""GRPO with two rewards: an implicit PRM (process reward, `trl_erprm.ImplicitPRM`) and TRL's math-verify
`accuracy_reward` (outcome reward). GRPOTrainer sums them (weights: `--reward_weights`).

`--dataset_name` is a local `.jsonl` file (or a Hub id) with conversational or standard `prompt` + `solution` columns,
or MATH-500 rows (`problem`, `answer`) or GSM8K rows (`question`, `answer` ending in `#### N`), which are converted.
`--prm_ref_model_name_or_path adapter` uses the PRM's own base model (PRM saved as a LoRA adapter); `none` scores
with the reference-free variant `beta * log pi_prm`.

On CPU with tiny local models (see docs/implicit_prm.md):

    python examples/grpo_implicit_prm_reward.py --model_name_or_path tiny-lm --prm_model_name_or_path tiny-implicit-prm \
        --prm_ref_model_name_or_path tiny-lm --dataset_name tests/data/math500_test.jsonl --max_train_samples 8 \
        --output_dir tiny-grpo --max_steps 2 --num_generations 2 --per_device_train_batch_size 2 \
        --max_completion_length 16 --use_cpu --bf16 False --report_to none
"""

from dataclasses import dataclass, field

from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, get_peft_config
from trl.rewards import accuracy_reward

from trl_erprm.data import load_any_dataset
from trl_erprm.implicit_prm import ImplicitPRM
from trl_erprm.script_utils import check_launch, make_parser, run_script


INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class ImplicitPRMRewardArguments:
    """Arguments of the implicit PRM reward.

    Args:
        prm_model_name_or_path (`str`):
            Path or id of the implicit PRM (a causal LM, or a LoRA adapter folder).
        prm_ref_model_name_or_path (`str`, *optional*, defaults to `"adapter"`):
            Its reference model; `"adapter"` for the PRM's base with the adapter disabled, `"none"` for no reference.
        prm_beta (`float`, *optional*, defaults to `0.05`):
            Beta the PRM was trained with.
        prm_step_separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text that ends a step.
        prm_aggregation (`str`, *optional*, defaults to `"min"`):
            How q at the step ends becomes one reward (`min`, `max`, `sum`, `mean`, `prod`, `last`).
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Sequences per PRM forward pass.
        max_train_samples (`int`, *optional*):
            Use only the first rows of the dataset.
    """

    prm_model_name_or_path: str = field(metadata={"help": "Path or id of the implicit PRM."})
    prm_ref_model_name_or_path: str = field(
        default="adapter", metadata={"help": "Reference of the PRM: a path/id, 'adapter' or 'none'."}
    )
    prm_beta: float = field(default=0.05, metadata={"help": "Beta the PRM was trained with."})
    prm_step_separator: str = field(default="\n\n", metadata={"help": "Text that ends a step."})
    prm_aggregation: str = field(default="min", metadata={"help": "Aggregation of q at the step ends."})
    prm_batch_size: int = field(default=8, metadata={"help": "Sequences per PRM forward pass."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first rows of the dataset."})


def to_grpo_row(row: dict) -> dict:
    """Conversational `prompt` + `solution` from MATH-500, GSM8K or already-formatted rows."""
    if "prompt" in row and "solution" in row:
        return {"prompt": row["prompt"], "solution": row["solution"]}
    if "problem" in row:  # MATH-500
        question, answer = row["problem"], row["answer"]
    elif "question" in row:  # GSM8K
        question, answer = row["question"], row["answer"].split("####")[-1].strip().replace(",", "")
    else:
        raise ValueError(f"Cannot build a prompt from a row with columns {sorted(row)}.")
    return {
        "prompt": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}],
        "solution": f"\\boxed{{{answer}}}",
    }


def main(script_args, training_args, model_args, prm_args) -> None:
    check_launch(training_args)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    dataset = load_any_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split)
    if prm_args.max_train_samples is not None:
        dataset = dataset.select(range(min(prm_args.max_train_samples, len(dataset))))
    dataset = dataset.map(to_grpo_row, remove_columns=dataset.column_names)

    reference = prm_args.prm_ref_model_name_or_path
    reference = None if reference.lower() == "none" else reference
    prm = ImplicitPRM(
        prm_args.prm_model_name_or_path,
        ref_model=reference,
        beta=prm_args.prm_beta,
        step_separator=prm_args.prm_step_separator,
        aggregation=prm_args.prm_aggregation,
        batch_size=prm_args.prm_batch_size,
        model_init_kwargs={"dtype": model_args.dtype} if model_args.dtype else None,
    )
    prm.model.to(training_args.device)  # the PRM runs next to the policy
    if prm.ref_model is not None:
        prm.ref_model.to(training_args.device)

    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[prm, accuracy_reward],
        args=training_args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_args.model_name_or_path),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Policy saved to {training_args.output_dir}.")


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, GRPOConfig, ModelConfig, ImplicitPRMRewardArguments)))
