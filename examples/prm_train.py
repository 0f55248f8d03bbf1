# accelerate launch examples/prm_train.py --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/math_shepherd --output_dir Qwen2-0.5B-PRM
r"""A TRL 1.13 PRM training script that runs on every TRL release.

TRL 1.14 removed `trl.experimental.prm`. The change from a TRL 1.13 script is the import line:

    - from trl.experimental.prm import PRMConfig, PRMTrainer
    + from trl_erprm import PRMConfig, PRMTrainer

which gives TRL's own classes where the installed TRL has them and trl-erprm's drop-in otherwise (this copy also uses
trl-erprm's script helpers: one-line errors, `--step_separator "\n"` decoded to a newline, and a stop on a
multi-process launch whose processes would each train alone). Hard labels only; use examples/erprm_train.py for
soft / ER labels.

On a CPU with a local model folder and a local jsonl file of stepwise rows (`prompt`, `completions`, `labels`):

    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/prm_train.py \
        --model_name_or_path path/to/model --dataset_name path/to/rows.jsonl --output_dir prm-cpu --max_steps 10 \
        --bf16 False --gradient_checkpointing False --report_to none

Two data-parallel processes on a CPU need `--use_cpu` (without it each process would train its own model):

    accelerate launch --multi_gpu --num_processes 2 examples/prm_train.py --model_name_or_path path/to/model \
        --dataset_name path/to/rows.jsonl --output_dir prm-cpu-2p --max_steps 10 --use_cpu --bf16 False \
        --gradient_checkpointing False --report_to none
"""

from transformers import AutoModelForTokenClassification, AutoTokenizer
from trl import ModelConfig, ScriptArguments, get_peft_config

from trl_erprm import PRMConfig, PRMTrainer
from trl_erprm.data import load_any_dataset
from trl_erprm.script_utils import check_launch, make_parser, run_script


def main(script_args: ScriptArguments, training_args: PRMConfig, model_args: ModelConfig) -> None:
    check_launch(training_args)
    model = AutoModelForTokenClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=2,
        use_safetensors=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    dataset = load_any_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split)

    trainer = PRMTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, PRMConfig, ModelConfig)))
