# accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/erprm_train.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B --dataset_name my-org/erprm-labels --output_dir Qwen2.5-Math-1.5B-ER-PRM --eta 2.0
"""Train an ER-PRM (a process reward model) on soft step labels with ERPRMTrainer.

The dataset is TRL's stepwise supervision (`prompt`, `completions`, `labels` in [0, 1]), or the output of
`trl-erprm label` with `step_outcomes`, in which case `--eta` picks the label at batch time: a number, `soft` (0),
`hard` or `inf`, `pessimistic` or `-inf`, as in `trl-erprm label`. Rows the labeler could not label (`status` other
than `ok`) stop the run with their status; `--skip_failed_rows` drops them instead.

Two PRM conventions (`--head`): `token_classification` (default; a 2-label classifier head, TRL's layout) or `lm`
(a causal LM reading the "+" / "-" tokens at the " ки" tag after every step, Math-Shepherd and ER-PRM's released
models; it can start from a policy's own folder). The saved folder records the convention in `prm_config.json`, so
`trl-erprm bon --prm_model <output_dir>` scores with it without flags.

Full fine-tuning on 8 GPUs with DeepSpeed ZeRO-2 (the paper's setup):

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/erprm_train.py \
        --model_name_or_path Qwen/Qwen2.5-Math-1.5B --dataset_name my-org/erprm-labels \
        --output_dir Qwen2.5-Math-1.5B-ER-PRM --eta 2.0 --learning_rate 5e-7 --num_train_epochs 1 \
        --lr_scheduler_type cosine --per_device_train_batch_size 8 --push_to_hub

LoRA on one GPU, 4-bit (QLoRA):

    accelerate launch examples/erprm_train.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B \
        --dataset_name my-org/erprm-labels --output_dir erprm-lora --use_peft --lora_task_type TOKEN_CLS \
        --load_in_4bit --learning_rate 1e-4

An LM-head PRM (Math-Shepherd / ER-PRM style) from a policy's own LM head, with LoRA:

    accelerate launch examples/erprm_train.py --model_name_or_path Qwen/Qwen2.5-Math-1.5B-Instruct \
        --dataset_name my-org/erprm-labels --output_dir erprm-lm-head --head lm --eta hard --use_peft \
        --learning_rate 1e-4

On a CPU with a local model folder and a local jsonl file:

    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/erprm_train.py \
        --model_name_or_path path/to/model --dataset_name labels.jsonl --output_dir erprm-cpu \
        --max_steps 10 --bf16 False --gradient_checkpointing False --report_to none
"""

from dataclasses import dataclass, field

from accelerate import PartialState
from trl import ModelConfig, get_peft_config, get_quantization_config

from trl_erprm import ERPRMConfig, ERPRMTrainer
from trl_erprm.data import load_any_dataset
from trl_erprm.models import load_model, load_tokenizer
from trl_erprm.script_utils import check_launch, make_parser, run_script


@dataclass
class ScriptArguments:
    """Arguments of the ER-PRM training script.

    Args:
        dataset_name (`str`):
            Hub id, local data file (`.jsonl`, `.json`, `.parquet`) or `save_to_disk` folder of stepwise rows.
        dataset_config (`str`, *optional*):
            Dataset configuration name.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str`, *optional*):
            Split to evaluate on, if any.
        eval_fraction (`float`, *optional*, defaults to `0.0`):
            Fraction of the training split held out for evaluation when there is no test split.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow custom modelling code from the model repository. Only for models you trust.
    """

    dataset_name: str = field(metadata={"help": "Hub id, local data file or save_to_disk folder."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Split to evaluate on."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Held-out fraction when there is no test split."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the repo."})


def main(script_args: ScriptArguments, training_args: ERPRMConfig, model_args: ModelConfig) -> None:
    """Load the model and data, train, save, and optionally push to the Hub."""
    check_launch(training_args)
    quantization_config = get_quantization_config(model_args)
    model_kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation}
    if quantization_config is not None:
        model_kwargs["quantization_config"] = quantization_config
        model_kwargs["device_map"] = {"": PartialState().local_process_index}
    is_lm = training_args.head == "lm"
    if not is_lm:
        model_kwargs["num_labels"] = 2
    # trl-erprm's one loader: safetensors only, no remote code unless asked, "auto" dtype = the checkpoint's.
    model = load_model(
        model_args.model_name_or_path,
        "causal_lm" if is_lm else "token_classification",
        dtype=model_args.dtype,
        trust_remote_code=script_args.trust_remote_code,
        **model_kwargs,
    )
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=script_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id

    if model_args.use_peft:  # the adapter's task follows the PRM's head
        model_args.lora_task_type = "CAUSAL_LM" if is_lm else "TOKEN_CLS"
    peft_config = get_peft_config(model_args)

    train_dataset = load_any_dataset(
        script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split
    )
    eval_dataset = None
    if script_args.dataset_test_split is not None:
        eval_dataset = load_any_dataset(
            script_args.dataset_name, script_args.dataset_config, script_args.dataset_test_split
        )
    elif script_args.eval_fraction > 0:
        split = train_dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    if eval_dataset is None:
        training_args.eval_strategy = "no"

    trainer = ERPRMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    if eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())
    trainer.save_model(training_args.output_dir)
    # README.md: base model and data (a Hub link only for Hub ids), how to score steps, the ER-PRM citation.
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    run_script(main, make_parser((ScriptArguments, ERPRMConfig, ModelConfig)))
