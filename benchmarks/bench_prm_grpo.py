"""Cost of process-supervised GRPO: the time of a training step of PRMGRPOTrainer over the same step of a plain
GRPOTrainer.

Both trainers are built once, on the same tiny Qwen2 policy (built locally, no Hub), data, seed and settings, and train
in alternating rounds of a few optimizer steps in the same process (the order within a round alternates too), so
drift of the machine's load affects both alike. The k-th PRM-GRPO step of a round is paired with the k-th GRPO step of
the same round; the result is the median of the per-pair ratios with its spread, in wall time and in CPU time of the
process. The PRM is a tiny token-classification Qwen2 of the policy's size: the extra cost is splitting every
completion into steps, one PRM forward pass per completion, locating the step ends in the policy's tokens, the gathers
and the advantage formula.

    python benchmarks/bench_prm_grpo.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from bench_prime import interleaved_step_ratios


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DESCRIPTION = (
    "Cost of process-supervised GRPO: a PRMGRPOTrainer (token-classification PRM) and a plain GRPOTrainer (the "
    "baseline) on the same policy, data and settings train in alternating rounds in one process; the k-th PRM-GRPO step "
    "of a round is paired with the k-th GRPO step, ratio per pair, in wall time and in CPU time (one torch thread)."
)


def run(quick: bool = False) -> dict:
    """Time PRMGRPOTrainer steps against GRPOTrainer steps in one process.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Fewer rounds and shorter completions (well under a minute on 2 CPU cores).

    Returns:
        `dict`: `settings` (with the number of `pairs`), per-pair `prm_grpo_step_s` and `grpo_step_s` (wall time)
        and `cpu_prm_grpo_step_s` and `cpu_grpo_step_s` (CPU time of this process), and `ratios`: PRM-GRPO step / GRPO
        step per pair, in wall time and in CPU time.
    """
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.rewards import accuracy_reward

    from trl_erprm.grpo import PRMGRPOConfig, PRMGRPOTrainer
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    torch.set_num_threads(1)  # idle OpenMP threads spin and inflate CPU time on a busy shared machine
    rounds, warmup_rounds, steps_per_round = (15, 1, 2) if quick else (30, 2, 2)
    settings = {
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 16 if quick else 32,
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "warmup_rounds": warmup_rounds,
        "model": "tiny Qwen2 (hidden 64, 2 layers), float32, CPU",
        "prm": "tiny Qwen2 token classification (hidden 64, 2 layers), float32, min aggregation, outcome_coef 0",
        "torch_threads": torch.get_num_threads(),
    }

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(os.path.join(tmp, "tokenizer"))
        model_path = os.path.join(tmp, "policy")
        build_tiny_model(tokenizer, save_dir=model_path, seed=0)
        prm_path = os.path.join(tmp, "prm")
        build_tiny_model(tokenizer, "token_classification", save_dir=prm_path, seed=1)
        rows = [
            {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "solution": f"${a + b}$"}
            for a in range(1, 13)
            for b in range(1, 13)
        ]
        common = {
            "per_device_train_batch_size": settings["per_device_train_batch_size"],
            "num_generations": settings["num_generations"],
            "max_completion_length": settings["max_completion_length"],
            "max_steps": steps_per_round,
            "learning_rate": 1e-5,
            "lr_scheduler_type": "constant",
            "bf16": False,
            "use_cpu": True,
            "report_to": "none",
            "logging_strategy": "no",
            "save_strategy": "no",
            "disable_tqdm": True,
            "seed": 0,
        }
        trainers = {}
        for name, cls, config in (
            ("grpo", GRPOTrainer, GRPOConfig(output_dir=os.path.join(tmp, "grpo"), **common)),
            (
                "prm_grpo",
                PRMGRPOTrainer,
                PRMGRPOConfig(output_dir=os.path.join(tmp, "prm_grpo"), prm_model_name_or_path=prm_path, **common),
            ),
        ):
            trainer = cls(
                model=model_path, reward_funcs=[accuracy_reward], args=config, train_dataset=Dataset.from_list(rows)
            )
            trainers[name] = trainer
        return interleaved_step_ratios(
            trainers, "prm_grpo", "PRMGRPOTrainer", settings, warmup_rounds, rounds, steps_per_round
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter completions")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
