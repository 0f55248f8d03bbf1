# accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml examples/raft.py --model_name_or_path meta-math/MetaMath-Mistral-7B --prm_model my-er-prm --dataset_name meta-math/MetaMathQA --prompt_column query --gold_column response --max_problems 20000 --eval_dataset_name openai/gsm8k --eval_dataset_split test --num_rounds 3 --num_samples 16 --max_new_tokens 512 --generation_backend vllm --learning_rate 5e-7 --num_train_epochs 2 --lr_scheduler_type cosine --per_device_train_batch_size 4 --gradient_accumulation_steps 1 --bf16 True --output_dir raft-metamath-mistral-7b
"""RAFT as ER-PRM improves its policy with its PRM (SPEC section 10): per round, sample `--num_samples` completions
per problem, score each with the PRM (minimum step score; or `--scoring outcome` / `majority`), keep the best one per
problem (`--selection best_of_n`; or `top_k`, `threshold`, `--require_correct`), fine-tune the policy on the kept ones
with TRL's SFTTrainer (loss on the completion only) and report held-out accuracy. The first line runs ER-PRM's
settings on 8 GPUs (with vLLM sampling; `--eval_dataset_config main` is needed for GSM8K on the Hub).

Every stage is saved in `--output_dir`: run the same command again after a crash and RAFT resumes at the stage it
stopped in (it says so); raise `--num_rounds` to continue a finished run. `results.json`, `table.md` and
`accuracy.png` hold the per-round summary.

On the CPU, with tiny local models and local data:

    python -c "from trl_erprm.tiny import build_tokenizer as t, build_tiny_model as m; m(t(), save_dir='tiny-lm'); m(t(), 'token_classification', save_dir='tiny-prm')"
    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/raft.py --model_name_or_path tiny-lm --prm_model tiny-prm --dataset_name tests/data/gsm8k_test.jsonl --prompt_column question --gold_column answer --max_problems 12 --eval_fraction 0.25 --num_rounds 2 --num_samples 4 --max_new_tokens 16 --max_steps 2 --per_device_train_batch_size 2 --use_cpu --report_to none --output_dir raft-tiny
"""

from trl_erprm.raft import RAFTConfig, run_raft
from trl_erprm.script_utils import check_launch, make_parser, run_script


def main(config: RAFTConfig) -> int:
    check_launch(config)
    report = run_raft(config)
    print(f"Held-out accuracy per round (0: the initial policy): {report['accuracy']}; policy: {report['policy']}")
    return 1 if report["stopped"] else 0  # a round that kept no sample: the message says what to change


if __name__ == "__main__":
    run_script(main, make_parser((RAFTConfig,)))
