"""Cost of PRIME: the time of a training step of PRIMETrainer over the same step of a plain GRPOTrainer.

Both trainers are built once, on the same tiny Qwen2 (built locally, no Hub), data, seed and settings, and train in
alternating rounds of a few optimizer steps in the same process (the order within a round alternates too), so drift
of the machine's load affects both alike. The k-th PRIME step of a round is paired with the k-th GRPO step of the same
round; the result is the median of the per-pair ratios with its spread, in wall time and in CPU time of the process
(the latter is less disturbed by other jobs on a shared machine). The accuracy filter keeps every group (band
[0, 1]), so the PRM scores and trains on every rollout: the full cost of PRIME (PRM forward with gradient, reference
forward, optimizer step, one more forward for the accuracy after the update, the gathers).

    python benchmarks/bench_prime.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DESCRIPTION = (
    "Cost of PRIME: a PRIMETrainer and a plain GRPOTrainer (the baseline) on the same model, data and settings train in "
    "alternating rounds in one process; the k-th PRIME step of a round is paired with the k-th GRPO step, ratio per "
    "pair, in wall time and in CPU time of the process (one torch thread)."
)


def run(quick: bool = False) -> dict:
    """Time PRIMETrainer steps against GRPOTrainer steps in one process.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Fewer rounds and shorter completions (well under a minute on 2 CPU cores).

    Returns:
        `dict`: `settings` (with the number of `pairs`), per-pair `prime_step_s` and `grpo_step_s` (wall time) and
        `cpu_prime_step_s` and `cpu_grpo_step_s` (CPU time of this process), and `ratios`: PRIME step / GRPO step per
        pair, in wall time and in CPU time.
    """
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.rewards import accuracy_reward

    from trl_erprm.grpo import PRIMEConfig, PRIMETrainer
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
        "prime": "update_mode=single, separate reference model, band [0, 1]",
        "torch_threads": torch.get_num_threads(),
    }

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(os.path.join(tmp, "tokenizer"))
        model_path = os.path.join(tmp, "policy")
        build_tiny_model(tokenizer, save_dir=model_path, seed=0)
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
                "prime",
                PRIMETrainer,
                PRIMEConfig(
                    output_dir=os.path.join(tmp, "prime"), accuracy_lower_bound=0.0, accuracy_upper_bound=1.0, **common
                ),
            ),
        ):
            trainer = cls(
                model=model_path, reward_funcs=[accuracy_reward], args=config, train_dataset=Dataset.from_list(rows)
            )
            trainers[name] = trainer
        return interleaved_step_ratios(
            trainers, "prime", "PRIMETrainer", settings, warmup_rounds, rounds, steps_per_round
        )


def interleaved_step_ratios(
    trainers: dict, name: str, label: str, settings: dict, warmup_rounds: int, rounds: int, steps_per_round: int
) -> dict:
    """Train `trainers["grpo"]` and `trainers[name]` one round each in turn (the order alternating over rounds), time
    every optimizer step (wall and CPU), and pair each step of `name` with the baseline's step of the same round.

    Args:
        trainers (`dict`):
            `{"grpo": GRPOTrainer, name: its subclass}`, each with `max_steps = steps_per_round` per `train()`.
        name (`str`):
            Key of the measured trainer (also the prefix of its result fields).
        label (`str`):
            Its class name in the ratio labels.
        settings (`dict`):
            The run's settings; `pairs` is added.
        warmup_rounds (`int`):
            Rounds trained but not timed.
        rounds (`int`):
            Timed rounds.
        steps_per_round (`int`):
            Optimizer steps per round.

    Returns:
        `dict`: `settings`, the per-step times of both trainers and their `ratios` (wall and CPU time).
    """
    from transformers import PrinterCallback, TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU time of every optimizer step (generation, scoring, the subclass's work, forward, backward,
        update)."""

        def __init__(self):
            self.times, self.start = [], (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    timers = {}
    for key, trainer in trainers.items():
        trainer.remove_callback(PrinterCallback)  # keep stdout for the result
        timers[key] = StepTimer()
        trainer.add_callback(timers[key])
    for r in range(warmup_rounds + rounds):
        for key in ("grpo", name) if r % 2 == 0 else (name, "grpo"):
            trainers[key].train()
    skip = warmup_rounds * steps_per_round
    pairs = list(zip(timers[name].times[skip:], timers["grpo"].times[skip:]))
    if len(pairs) != rounds * steps_per_round:
        raise RuntimeError(f"Expected {rounds * steps_per_round} timed step pairs, got {len(pairs)}.")
    settings["pairs"] = len(pairs)
    return {
        "settings": settings,
        f"{name}_step_s": [p[0] for p, _ in pairs],
        "grpo_step_s": [g[0] for _, g in pairs],
        f"cpu_{name}_step_s": [p[1] for p, _ in pairs],
        "cpu_grpo_step_s": [g[1] for _, g in pairs],
        "ratios": {
            f"{label} step / GRPOTrainer step, wall time": [p[0] / g[0] for p, g in pairs],
            f"{label} step / GRPOTrainer step, CPU time": [p[1] / g[1] for p, g in pairs],
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter completions")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
