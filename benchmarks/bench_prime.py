"""Cost of PRIME: the time of a GRPO step with PRIMECallback over the same step without it.

One GRPOTrainer run on a tiny Qwen2 (built locally, no Hub), with a PRIMECallback attached whose `enabled` flag is
flipped at every optimizer step, so that steps with and without PRIME alternate in the same run, on the same model and
data (drift of the machine's load affects both alike). Each PRIME step is paired with the plain step that follows it;
the result is the median of the per-pair ratios with its spread, in wall time and in CPU time of the process (the
latter is less disturbed by other jobs on a shared machine). The accuracy filter keeps every group (band [0, 1]),
so the PRM scores and trains on every rollout: the full cost of PRIME (PRM forward with gradient, reference forward,
optimizer step, one more forward for the accuracy after the update, the gathers).

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
    "Cost of PRIME: one GRPOTrainer run whose PRIMECallback is switched on and off at alternate optimizer steps; "
    "each PRIME step is paired with the plain GRPO step (the baseline) that follows it, ratio per pair, in wall time "
    "and in CPU time of the process (one torch thread)."
)


def run(quick: bool = False) -> dict:
    """Time GRPO steps with and without PRIME in one run.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Fewer step pairs and shorter completions (well under a minute on 2 CPU cores).

    Returns:
        `dict`: `settings` (with the number of `pairs`), per-pair `prime_step_s` and `grpo_step_s` (wall time) and
        `cpu_prime_step_s` and `cpu_grpo_step_s` (CPU time of this process, less sensitive to other jobs on a shared
        machine), and `ratios`: PRIME step / plain step per pair, in wall time and in CPU time.
    """
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.rewards import accuracy_reward

    from trl_erprm.implicit_prm import ImplicitPRM
    from trl_erprm.prime import PRIMECallback, PRIMEConfig
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    torch.set_num_threads(1)  # idle OpenMP threads spin and inflate CPU time on a busy shared machine
    pairs, warmup = (30, 2) if quick else (60, 4)
    settings = {
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 16 if quick else 32,
        "pairs": pairs,
        "warmup_steps": warmup,
        "model": "tiny Qwen2 (hidden 64, 2 layers), float32, CPU",
        "prime": "update_mode=single, separate reference model, band [0, 1]",
        "torch_threads": torch.get_num_threads(),
    }

    class AlternatePRIME(TrainerCallback):
        """Time every optimizer step and switch PRIME on and off between steps."""

        def __init__(self, prime):
            self.prime, self.times, self.start = prime, [], (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
            self.times.append((self.prime.enabled, wall, cpu))
            self.prime.enabled = not self.prime.enabled

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(os.path.join(tmp, "tokenizer"))
        model_path = os.path.join(tmp, "policy")
        build_tiny_model(tokenizer, save_dir=model_path, seed=0)
        rows = [
            {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "solution": f"${a + b}$"}
            for a in range(1, 13)
            for b in range(1, 13)
        ]
        config = GRPOConfig(
            output_dir=os.path.join(tmp, "out"),
            per_device_train_batch_size=settings["per_device_train_batch_size"],
            num_generations=settings["num_generations"],
            max_completion_length=settings["max_completion_length"],
            max_steps=warmup + 2 * pairs,
            learning_rate=1e-5,
            bf16=False,
            use_cpu=True,
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=model_path, reward_funcs=[accuracy_reward], args=config, train_dataset=Dataset.from_list(rows)
        )
        prm = ImplicitPRM(model_path, ref_model=model_path, tokenizer=trainer.processing_class)
        prime = PRIMECallback(trainer, prm, PRIMEConfig(accuracy_lower_bound=0.0, accuracy_upper_bound=1.0))
        timer = AlternatePRIME(prime)
        trainer.add_callback(timer)
        trainer.remove_callback(PrinterCallback)  # keep stdout for the result
        trainer.train()

    timed = timer.times[warmup:]
    if warmup % 2:  # keep pairs (PRIME step, plain step) in this order
        timed = timed[1:]
    pairs_timed = list(zip(timed[0::2], timed[1::2]))
    if not all(a[0] and not b[0] for a, b in pairs_timed):
        raise RuntimeError("PRIME steps and plain steps did not alternate; the pairs are not like for like.")
    settings["pairs"] = len(pairs_timed)
    return {
        "settings": settings,
        "prime_step_s": [a[1] for a, _ in pairs_timed],
        "grpo_step_s": [b[1] for _, b in pairs_timed],
        "cpu_prime_step_s": [a[2] for a, _ in pairs_timed],
        "cpu_grpo_step_s": [b[2] for _, b in pairs_timed],
        "ratios": {
            "GRPO step with PRIME / without, wall time": [a[1] / b[1] for a, b in pairs_timed],
            "GRPO step with PRIME / without, CPU time": [a[2] / b[2] for a, b in pairs_timed],
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer step pairs, shorter completions")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
