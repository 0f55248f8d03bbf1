# accelerate launch examples/implicit_prm_train.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct --dataset_name outcomes.jsonl --output_dir Qwen2.5-Math-1.5B-ImplicitPRM --loss_type ce --beta 0.05 --learning_rate 5e-7 --per_device_train_batch_size 8 --gradient_accumulation_steps 8 --use_peft --lora_r 32
"""Train an implicit process reward model (arXiv:2412.01981) from outcome-labelled completions.

The dataset has one row per completion: `prompt` (string or list of messages), `completion` (string or one assistant
message) and `label` (1 / true if the final answer is correct, 0 / false otherwise). `--dataset_name` takes a local
`.jsonl` / `.json` file, a folder saved with `Dataset.save_to_disk`, or a Hub dataset id. `--loss_type dpo` pairs the
correct and incorrect completions of each prompt instead.

On CPU with a tiny local model (see docs/implicit_prm.md for how to build one and the toy data):

    python examples/implicit_prm_train.py --model_name_or_path tiny-lm --dataset_name outcomes.jsonl \
        --output_dir tiny-implicit-prm --max_steps 10 --per_device_train_batch_size 8 --learning_rate 5e-3 \
        --beta 0.1 --use_cpu --bf16 False --gradient_checkpointing False --report_to none

Score with the trained model afterwards: `ImplicitPRM("tiny-implicit-prm", ref_model="tiny-lm", beta=0.1)`, or
`ref_model="adapter"` when trained with `--use_peft`.
"""

import os

from datasets import load_dataset, load_from_disk
from trl import ModelConfig, ScriptArguments, get_peft_config

from trl_erprm.implicit_prm_config import ImplicitPRMConfig
from trl_erprm.implicit_prm_trainer import ImplicitPRMTrainer
from trl_erprm.models import load_tokenizer
from trl_erprm.script_utils import check_launch, make_parser, run_script


def load_outcome_dataset(script_args: ScriptArguments):
    """Load a local json/jsonl file, a `save_to_disk` folder, or a Hub dataset (as a `DatasetDict`)."""
    name = script_args.dataset_name
    if name.endswith((".json", ".jsonl")):
        return load_dataset("json", data_files={script_args.dataset_train_split: name})
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "dataset_dict.json")):
        return load_from_disk(name)
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "dataset_info.json")):
        return {script_args.dataset_train_split: load_from_disk(name)}
    return load_dataset(name, name=script_args.dataset_config)


def main(script_args: ScriptArguments, training_args: ImplicitPRMConfig, model_args: ModelConfig) -> None:
    check_launch(training_args)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs
    tokenizer = load_tokenizer(model_args.model_name_or_path, revision=model_args.model_revision)

    dataset = load_outcome_dataset(script_args)
    eval_dataset = None
    if training_args.eval_strategy != "no" and script_args.dataset_test_split in dataset:
        eval_dataset = dataset[script_args.dataset_test_split]

    trainer = ImplicitPRMTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Implicit PRM saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, ImplicitPRMConfig, ModelConfig)))
