# accelerate launch examples/prm_train.py --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/math_shepherd --output_dir Qwen2-0.5B-PRM
"""A TRL 1.13 PRM training script that runs on every TRL release.

TRL 1.14 removed `trl.experimental.prm`. The only change from a TRL 1.13 script is the import line:

    - from trl.experimental.prm import PRMConfig, PRMTrainer
    + from trl_erprm import PRMConfig, PRMTrainer

which gives TRL's own classes where the installed TRL has them and trl-erprm's drop-in otherwise. Hard labels only;
use examples/erprm_train.py for soft / ER labels.

On a CPU with a local model folder and a local jsonl file:

    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/prm_train.py \
        --model_name_or_path path/to/model --dataset_name rows.jsonl --output_dir prm-cpu --max_steps 10 \
        --bf16 False --gradient_checkpointing False --report_to none
"""

from transformers import AutoModelForTokenClassification, AutoTokenizer
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_erprm import PRMConfig, PRMTrainer
from trl_erprm.data import load_any_dataset


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, PRMConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()

    model = AutoModelForTokenClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=2,
        use_safetensors=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    dataset = load_any_dataset(script_args.dataset_name, script_args.dataset_config)
    if not hasattr(dataset, "column_names") or isinstance(dataset.column_names, dict):
        dataset = dataset[script_args.dataset_train_split]

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
