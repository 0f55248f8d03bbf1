"""PRMGRPOTrainer: process-supervised GRPO with a PRM. Advantages of a real training step equal the ones computed by
hand from the PRM's step scores and the step ends located in the policy's tokens; a 2-process run gives the advantages
of a 1-process run (this file is also the worker that `accelerate launch` starts)."""

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
    "What is 5 - 1?": ["", "5 - 1 = 2.\n\n\n\\boxed{2}"],  # an empty completion: no step
}
SOLUTIONS = {"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$", "What is 5 - 1?": "$4$"}
GLOBAL_BATCH = 6


def run(model_path, prm_path, out_dir, world_size=1, reward_funcs="accuracy", **overrides):
    """One PRMGRPOTrainer step on the scripted completions (rewarded with math-verify's accuracy unless
    `reward_funcs` is given; `None`: the PRM); returns the trainer."""
    from datasets import Dataset
    from grpo_helpers import math_rows, scripted_rollout
    from trl.rewards import accuracy_reward

    from trl_erprm import PRMGRPOConfig, PRMGRPOTrainer

    args = PRMGRPOConfig(
        output_dir=os.path.join(out_dir, "trainer"),
        per_device_train_batch_size=GLOBAL_BATCH // world_size,
        num_generations=2,
        max_completion_length=32,
        max_steps=1,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        prm_model_name_or_path=prm_path,
        prm_step_separator="\n",
        **overrides,
    )
    trainer = PRMGRPOTrainer(
        model=model_path,
        reward_funcs=[accuracy_reward] if reward_funcs == "accuracy" else reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(math_rows(SOLUTIONS)),
        rollout_func=scripted_rollout(TABLE),
    )
    trainer.train()
    return trainer


def hand_computed(trainer, tokenizer, texts, group_size, outcome_coef=0.0):
    """Step ends located by hand in the completion tokens, the PRM's step scores, and the DeepSeekMath formula."""
    from test_process_supervision import reference

    from trl_erprm.evaluation.scorers import load_scorer
    from trl_erprm.steps import StepFormat

    scorer = load_scorer(trainer.args.prm_model_name_or_path, step_separator="\n")
    rewards, ends, lengths = [], [], []
    for prompt, text in texts:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        length = len(encoded["input_ids"]) + 1  # + EOS
        steps = StepFormat("\n").split(text)
        if not steps:
            rewards.append([0.0])  # empty_step_reward at the last token (the EOS)
            ends.append([length - 1])
        else:
            starts = [text.index(s) for s in steps]
            chars = [s - 1 for s in starts[1:]]  # the character before the next step starts
            token_of = [next(t for t, (a, b) in enumerate(encoded["offset_mapping"]) if a <= c < b) for c in chars]
            rewards.append(scorer.score([prompt], [steps])[0])
            ends.append([*token_of, length - 1])
        lengths.append(length)
    T = max(lengths)
    advantages = reference(rewards, ends, group_size, lengths, T)
    if outcome_coef:
        mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
        advantages = advantages + outcome_coef * trainer.last_batch["grpo_advantages"].unsqueeze(-1) * mask
    return advantages


def rows_of(trainer):
    """(prompt, completion text) of the local rows, in the batch's order."""
    seen = trainer.reward_inputs()
    return [(p[-1]["content"], c[0]["content"]) for p, c in zip(seen.prompts, seen.completions)]


@pytest.mark.slow
def test_advantages_equal_the_hand_computed_ones_and_the_policy_moves(
    causal_lm_path, token_cls_path, tokenizer, tmp_path
):
    from grpo_helpers import changed, logged, state
    from transformers import AutoModelForCausalLM

    before = state(AutoModelForCausalLM.from_pretrained(causal_lm_path))
    trainer = run(causal_lm_path, token_cls_path, str(tmp_path))
    texts = rows_of(trainer)
    assert sorted(t for _, t in texts) == sorted(t for c in TABLE.values() for t in c)
    expected = hand_computed(trainer, tokenizer, texts, group_size=2)
    advantages = trainer.last_batch["advantages"]
    torch.testing.assert_close(advantages[:, : expected.shape[1]], expected, atol=1e-5, rtol=0)
    assert advantages.abs().sum() > 0 and torch.all(advantages[:, expected.shape[1] :] == 0)
    assert changed(before, trainer.model)
    assert logged(trainer, "prm/steps_per_completion")[0] == pytest.approx(
        10 / 6
    )  # 2, 2, 1, 2, 2 and 1 (the empty one)
    assert logged(trainer, "prm/no_step_fraction")[0] == pytest.approx(1 / 6)
    assert logged(trainer, "rewards/accuracy_reward/mean")  # GRPO's own reward functions still run and log


@pytest.mark.slow
def test_outcome_coefficient_and_the_prm_as_default_reward(causal_lm_path, token_cls_path, tokenizer, tmp_path):
    trainer = run(causal_lm_path, token_cls_path, str(tmp_path / "outcome"), outcome_coef=0.5)
    expected = hand_computed(trainer, tokenizer, rows_of(trainer), group_size=2, outcome_coef=0.5)
    torch.testing.assert_close(trainer.last_batch["advantages"][:, : expected.shape[1]], expected, atol=1e-5, rtol=0)

    from datasets import Dataset
    from grpo_helpers import CPU_GRPO, logged, math_rows

    from trl_erprm import PRMGRPOConfig, PRMGRPOTrainer, PRMReward

    reward = PRMReward(token_cls_path, step_separator="\n")
    calls = []
    score = reward.scorer.score
    reward.scorer.score = lambda prompts, steps: calls.append(len(prompts)) or score(prompts, steps)
    args = PRMGRPOConfig(**{**CPU_GRPO, "output_dir": str(tmp_path / "default")})
    trainer = PRMGRPOTrainer(
        model=causal_lm_path, args=args, prm=reward, train_dataset=Dataset.from_list(math_rows(SOLUTIONS))
    )
    assert trainer.reward_funcs == [reward]
    trainer.train()
    assert calls == [4]  # one scoring pass per batch: the reward's step scores are reused for the advantages
    assert logged(trainer, "rewards/prm_reward/mean") and logged(trainer, "prm/advantages/std")


PRM_METRICS = {
    "prm/step_reward/mean",
    "prm/steps_per_completion",
    "prm/no_step_fraction",
    "prm/advantages/mean",
    "prm/advantages/std",
}


@pytest.mark.slow
def test_the_prm_as_reward_logs_each_figure_once(causal_lm_path, token_cls_path, tmp_path):
    from trl_erprm import PRMReward
    from trl_erprm.evaluation.scorers import load_scorer
    from trl_erprm.steps import StepFormat

    trainer = run(causal_lm_path, token_cls_path, str(tmp_path / "default"), reward_funcs=None)
    assert trainer.reward_funcs == [trainer.prm]
    logs = trainer.state.log_history[0]
    # the step figures once, under prm/: no prm_reward/step_score/mean, steps_per_completion or no_step_fraction
    assert {k for k in logs if k.split("/")[0] in ("prm", "prm_reward")} == PRM_METRICS
    assert {"rewards/prm_reward/mean", "rewards/prm_reward/std"} <= set(logs)  # GRPO's own, of the reward
    suffixes = [k.split("/", 1)[1] for k in logs if "/" in k]  # no figure under two prefixes
    assert len(suffixes) == len(set(suffixes)), sorted(suffixes)

    # hand-checked values: the PRM's step scores, the empty completion one step rewarded empty_step_reward (0.0)
    scorer = load_scorer(token_cls_path, step_separator="\n")
    scores = []
    for prompt, text in rows_of(trainer):
        steps = StepFormat("\n").split(text)
        scores.append(scorer.score([prompt], [steps])[0] if steps else [])
    rewarded = [s or [0.0] for s in scores]
    flat = [v for s in rewarded for v in s]
    assert logs["prm/step_reward/mean"] == pytest.approx(sum(flat) / len(flat), rel=1e-5)
    assert logs["prm/steps_per_completion"] == pytest.approx(10 / 6)
    assert logs["prm/no_step_fraction"] == pytest.approx(1 / 6)
    minimum = [min(s) if s else 0.0 for s in scores]  # prm_aggregation="min"; 0.0 without a step
    assert logs["rewards/prm_reward/mean"] == pytest.approx(sum(minimum) / len(minimum), rel=1e-5)

    # another PRMReward object, not the trainer's PRM, is a reward like any other: it logs its own figures
    other = PRMReward(token_cls_path, step_separator="\n", aggregation="last", name="last_step")
    trainer = run(causal_lm_path, token_cls_path, str(tmp_path / "other"), reward_funcs=[other])
    logs = trainer.state.log_history[0]
    assert {"last_step/step_score/mean", "last_step/steps_per_completion", "last_step/no_step_fraction"} <= set(logs)
    assert logs["last_step/steps_per_completion"] == pytest.approx(9 / 6)  # scored steps only
    assert PRM_METRICS <= set(logs)


def test_bad_configuration_is_refused(causal_lm_path, tmp_path):
    from trl import GRPOConfig

    from trl_erprm import PRMGRPOConfig, PRMGRPOTrainer

    with pytest.raises(ValueError, match="needs a PRM"):
        PRMGRPOTrainer(model=causal_lm_path, args=PRMGRPOConfig(str(tmp_path), use_cpu=True, report_to="none"))
    with pytest.raises(TypeError, match="PRMGRPOConfig"):
        PRMGRPOTrainer(model=causal_lm_path, args=GRPOConfig(str(tmp_path), use_cpu=True, report_to="none"))
    with pytest.raises(ValueError, match="prm_aggregation"):
        PRMGRPOConfig(str(tmp_path), prm_aggregation="median")
    with pytest.raises(ValueError, match="split_method"):
        PRMGRPOConfig(str(tmp_path), split_method="paragraphs")


# ---------------------------------------------------------------------------------------------------------------------
# 2 processes == 1 process (launched with accelerate, like tests/test_prime_multiprocess.py)
# ---------------------------------------------------------------------------------------------------------------------


def worker(model_path: str, prm_path: str, out_dir: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    trainer = run(model_path, prm_path, out_dir, world_size, outcome_coef=0.5)
    rank = trainer.accelerator.process_index
    keys = ("advantages", "step_rewards", "step_ends", "step_mask", "completion_mask", "grpo_advantages")
    torch.save({k: trainer.last_batch[k].cpu() for k in keys}, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 0:
        metrics = {k: v for e in trainer.state.log_history for k, v in e.items() if k.startswith("prm/")}
        torch.save(metrics, os.path.join(out_dir, "metrics.pt"))


def launch(num_processes: int, model_path: str, prm_path: str, out_dir) -> None:
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([root, str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
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
        "--prm",
        prm_path,
        "--out",
        str(out_dir),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def merged(out_dir, num_processes: int, key: str) -> torch.Tensor:
    parts = [torch.load(out_dir / f"rank{r}.pt")[key] for r in range(num_processes)]
    if parts[0].ndim == 1:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_give_the_same_advantages_as_one(causal_lm_path, token_cls_path, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for path in (one, two):
        path.mkdir()
    launch(1, causal_lm_path, token_cls_path, one)
    launch(2, causal_lm_path, token_cls_path, two)

    def both(key):
        a, b = merged(one, 1, key), merged(two, 2, key)
        if a.ndim == 2:
            width = max(a.shape[1], b.shape[1])
            a, b = (torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (a, b))
        return a, b

    mask_1, mask_2 = both("completion_mask")
    assert mask_1.shape[0] == GLOBAL_BATCH and torch.equal(mask_1, mask_2)
    for key in ("step_ends", "step_mask"):
        assert torch.equal(*both(key)), key
    rewards_1, rewards_2 = both("step_rewards")
    torch.testing.assert_close(rewards_2, rewards_1, atol=1e-6, rtol=0)
    torch.testing.assert_close(*reversed(both("grpo_advantages")), atol=1e-6, rtol=0)
    advantages_1, advantages_2 = both("advantages")
    assert advantages_1.abs().sum() > 0
    torch.testing.assert_close(advantages_2, advantages_1, atol=1e-5, rtol=0)
    metrics_1, metrics_2 = torch.load(one / "metrics.pt"), torch.load(two / "metrics.pt")
    assert set(metrics_1) == set(metrics_2) and metrics_1
    for name, value in metrics_1.items():
        assert metrics_2[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prm", required=True)
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    worker(cli.model, cli.prm, cli.out)
    if torch.distributed.is_initialized():  # gloo threads torn down at exit can abort the process
        torch.distributed.destroy_process_group()
