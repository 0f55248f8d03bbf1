# accelerate launch examples/erprm_label.py --model_name_or_path deepseek-ai/deepseek-math-7b-rl --backend vllm --dataset_name tests/data/gsm8k_test.jsonl --dataset_format gsm8k --output_dir gsm8k-erprm-labels
r"""Label step-split solutions with ER-PRM Monte-Carlo rollouts (arXiv 2412.11006), as a resumable job.

For every step prefix of every solution, `--num_rollouts` completions are sampled from the generator and graded
against the gold answer with math-verify (in sandboxed worker processes); the last step is labelled by grading the
full solution. Each row gets `step_outcomes` (the graded rollouts of each step), `labels = er_label(outcomes, eta)`
and a `status`. Results are appended to `--output_dir` as they are produced: kill the job at any time and start the
same command again to resume it. The labelled dataset is saved in `--output_dir/dataset` (`--push_to_hub` pushes it).

The paper's setup on GPUs with vLLM (one engine per GPU, rows split across processes):

    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/erprm_label.py \
        --model_name_or_path deepseek-ai/deepseek-math-7b-rl --backend vllm --num_rollouts 16 --temperature 1.0 \
        --max_new_tokens 1024 --prefix_placement user --dataset_name tests/data/gsm8k_test.jsonl \
        --dataset_format gsm8k --output_dir gsm8k-erprm-labels --eta 1.0

Many labeling processes (or nodes) sharing one generation server:

    trl vllm-serve --model deepseek-ai/deepseek-math-7b-rl --enable_prefix_caching True   # on the GPU node
    accelerate launch --multi_gpu --num_processes 8 examples/erprm_label.py --backend vllm_server \
        --vllm_server_base_url http://gpu-node:8000 --model_name_or_path deepseek-ai/deepseek-math-7b-rl \
        --dataset_name rows.jsonl --output_dir labels

(`--multi_gpu` picks accelerate's torchrun launcher; on a machine without GPUs the processes run on the CPU and talk
over gloo. `--cpu` with several processes would start only one, unless MPI is set up.)

On a CPU with a local model folder (for instance a tiny one from `trl_erprm.tiny`) and the transformers backend:

    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/erprm_label.py \
        --model_name_or_path path/to/model --dataset_name tests/data/gsm8k_test.jsonl --dataset_format gsm8k \
        --num_rows 8 --num_rollouts 4 --max_new_tokens 64 --output_dir erprm-labels

Then train on the labels, choosing eta at batch time: `examples/erprm_train.py --dataset_name
erprm-labels/dataset --eta 2.0`. `--step_separator "\n\n"` (as bash passes it: backslash-n) is two newlines.
"""

import json

from trl_erprm.labeling.labeler import ERPRMLabeler, LabelScriptArguments, load_input_dataset, partial_state
from trl_erprm.labeling.labeler_config import ERPRMLabelerConfig
from trl_erprm.script_utils import make_parser, run_script


def main(script_args: LabelScriptArguments, config: ERPRMLabelerConfig) -> None:
    dataset = load_input_dataset(script_args, gold_column=config.gold_column)
    labeler = ERPRMLabeler(config)
    try:
        labelled = labeler.label(dataset)
    finally:
        labeler.close()
    if partial_state().is_main_process:
        print(json.dumps({k: labeler.summary[k] for k in ("num_rows", "status_counts", "num_rollouts")}))
        ok = labelled.filter(lambda row: row["status"] == "ok")
        if len(ok):
            print(f"first labelled row: labels={[round(v, 3) for v in ok[0]['labels']]}")


if __name__ == "__main__":
    run_script(main, make_parser((LabelScriptArguments, ERPRMLabelerConfig)))
