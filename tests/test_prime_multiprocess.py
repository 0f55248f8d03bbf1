"""PRIME and PRL under data parallelism: a 2-process CPU run gives the same advantages as a 1-process run on the same
batch.

The test launches this file with `accelerate launch --num_processes N` (N = 1 with `--cpu`; N = 2 with `--multi_gpu`,
which picks accelerate's torchrun launcher, while `GRPOConfig(use_cpu=True)` makes the processes talk over gloo on the
CPU: `--cpu` with 2 processes starts a single one unless MPI is set up), with the same global batch
of 6 completions (3 prompts x 2 generations) split 6 | 3 + 3, so that one group straddles the two processes. The
completions are scripted through GRPOTrainer's `rollout_func` (so both runs see identical text), the PRM update is
"double forward" (so the process rewards come from the updated PRM, which is identical only if its gradients were
averaged over processes) and each process dumps its advantages. PRL runs the same way (`--trainer prl`).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


TABLE = {
    "What is 2 + 2?": ["Step 1: 2 + 2 = 4.\n\nThe answer is \\boxed{4}.", "2 + 2 = 5.\n\\boxed{5}"],
    "What is 3 * 3?": ["3 * 3 = 9, so \\boxed{9}", "Step 1: 3 * 3 = 6.\n\nStep 2: \\boxed{6}."],
    "What is 5 - 1?": ["\\boxed{3}", "5 - 1 = 2.\n\n\\boxed{2}"],  # both wrong: filtered out
}
SOLUTIONS = {"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$", "What is 5 - 1?": "$4$"}
GLOBAL_BATCH = 6
LEARNING_RATE_PRM = 1e-3


def worker(model_path: str, out_dir: str, trainer_name: str = "prime") -> None:
    """Run one PRIME (or PRL) step (launched by accelerate) and dump what the test compares."""
    from datasets import Dataset
    from grpo_helpers import math_rows, scripted_rollout
    from trl.rewards import accuracy_reward

    from trl_erprm.grpo import PRIMEConfig, PRIMETrainer, PRLConfig, PRLTrainer

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    common = {
        "output_dir": os.path.join(out_dir, "trainer"),
        "per_device_train_batch_size": GLOBAL_BATCH // world_size,
        "num_generations": 2,
        "max_completion_length": 32,
        "max_steps": 1,
        "learning_rate": 1e-2,
        "bf16": False,
        "use_cpu": True,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
    }
    if trainer_name == "prime":
        cls, args = PRIMETrainer, PRIMEConfig(**common, update_mode="double", prm_learning_rate=LEARNING_RATE_PRM)
        keys = ("advantages", "token_rewards", "completion_mask", "input_ids", "keep")
    else:
        cls, args = PRLTrainer, PRLConfig(**common, eta=2.0, num_iterations=2)  # the policy moves: old logps differ
        keys = ("advantages", "grpo_advantages", "old_logps", "ref_logps", "step_ends", "completion_mask", "input_ids")
    trainer = cls(
        model=model_path,
        reward_funcs=[accuracy_reward],
        args=args,
        train_dataset=Dataset.from_list(math_rows(SOLUTIONS)),
        rollout_func=scripted_rollout(TABLE),
    )
    trainer.train()

    rank = trainer.accelerator.process_index
    torch.save({k: trainer.last_batch[k].cpu() for k in keys}, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 0:
        prefix = f"{trainer.metric_prefix}/"
        metrics = {k: v for entry in trainer.state.log_history for k, v in entry.items() if k.startswith(prefix)}
        prm = trainer.prm.model.state_dict() if trainer_name == "prime" else {}
        torch.save({"prm": prm, "metrics": metrics}, os.path.join(out_dir, "prm.pt"))


def launch(num_processes: int, model_path: str, out_dir, trainer_name: str = "prime") -> None:
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # with more than one process, --multi_gpu picks the torchrun launcher; use_cpu=True then means gloo on the CPU
        "--multi_gpu" if num_processes > 1 else "--cpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        __file__,
        "--model",
        model_path,
        "--out",
        str(out_dir),
        "--trainer",
        trainer_name,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def merged(out_dir, num_processes: int, key: str) -> torch.Tensor:
    """Rows of all processes in process order (the global batch), right-padded to a common length."""
    parts = [torch.load(out_dir / f"rank{r}.pt")[key] for r in range(num_processes)]
    if parts[0].ndim == 1:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_give_the_same_advantages_as_one(causal_lm_path, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(1, causal_lm_path, one)
    launch(2, causal_lm_path, two)

    ids_1, ids_2 = merged(one, 1, "input_ids"), merged(two, 2, "input_ids")
    mask_1, mask_2 = merged(one, 1, "completion_mask"), merged(two, 2, "completion_mask")
    width = max(mask_1.shape[1], mask_2.shape[1])

    def pad(x):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    # the same global batch, in the same order
    assert mask_1.shape[0] == mask_2.shape[0] == GLOBAL_BATCH
    assert torch.equal(pad(mask_1), pad(mask_2))
    completions_1 = [row[m.bool()].tolist() for row, m in zip(ids_1[:, -mask_1.shape[1] :], mask_1)]
    completions_2 = [row[m.bool()].tolist() for row, m in zip(ids_2[:, -mask_2.shape[1] :], mask_2)]
    assert completions_1 == completions_2
    keep = merged(one, 1, "keep")
    assert torch.equal(keep, merged(two, 2, "keep"))
    assert keep.tolist().count(True) == 4  # two groups of 2 kept, one filtered (one group straddles the processes)

    # the PRM update averaged its gradients over the processes: the same PRM, hence the same process rewards
    # (AdamW's first step moves every weight by about lr * sign(gradient), so a gradient component that is ~0 up to the
    # order of floating-point summation may move differently: allow a few weights 2% of lr apart. Without the gradient
    # averaging, most weights would be up to 2 * lr apart.)
    prm_1, prm_2 = torch.load(one / "prm.pt"), torch.load(two / "prm.pt")
    differences = torch.cat([(prm_2["prm"][name] - weight).abs().flatten() for name, weight in prm_1["prm"].items()])
    assert differences.max() <= 0.02 * LEARNING_RATE_PRM
    assert (differences > 1e-6).float().mean() < 1e-3
    rewards_1, rewards_2 = pad(merged(one, 1, "token_rewards")), pad(merged(two, 2, "token_rewards"))
    assert rewards_1.abs().sum() > 0
    torch.testing.assert_close(rewards_2, rewards_1, atol=1e-6, rtol=0)

    advantages_1, advantages_2 = pad(merged(one, 1, "advantages")), pad(merged(two, 2, "advantages"))
    assert advantages_1[keep].abs().sum() > 0 and torch.all(advantages_1[~keep] == 0)
    torch.testing.assert_close(advantages_2, advantages_1, atol=1e-5, rtol=0)
    for name, value in prm_1["metrics"].items():
        assert prm_2["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trainer", default="prime", choices=["prime", "prl"])
    cli = parser.parse_args()
    worker(cli.model, cli.out, cli.trainer)
    if torch.distributed.is_initialized():  # gloo threads torn down at exit can abort the process
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_prl_two_processes_give_the_same_advantages_as_one(causal_lm_path, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(1, causal_lm_path, one, "prl")
    launch(2, causal_lm_path, two, "prl")
    mask_1, mask_2 = merged(one, 1, "completion_mask"), merged(two, 2, "completion_mask")
    width = max(mask_1.shape[1], mask_2.shape[1])

    def pad(x):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    assert torch.equal(pad(mask_1), pad(mask_2)) and mask_1.shape[0] == GLOBAL_BATCH
    torch.testing.assert_close(merged(two, 2, "grpo_advantages"), merged(one, 1, "grpo_advantages"), atol=1e-6, rtol=0)
    assert torch.equal(pad(merged(one, 1, "step_ends")), pad(merged(two, 2, "step_ends")))
    mask = pad(mask_1)
    for key in ("old_logps", "ref_logps"):  # beyond a completion, each process scores its own padding: compare within
        torch.testing.assert_close(pad(merged(two, 2, key)) * mask, pad(merged(one, 1, key)) * mask, atol=1e-5, rtol=0)
    advantages_1, advantages_2 = pad(merged(one, 1, "advantages")), pad(merged(two, 2, "advantages"))
    assert advantages_1.abs().sum() > 0
    torch.testing.assert_close(advantages_2, advantages_1, atol=1e-5, rtol=0)
