"""A real GRPOTrainer run with ImplicitPRM next to TRL's math-verify accuracy reward (CPU, a few steps)."""

import math

import pytest
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

from trl_erprm.implicit_prm import ImplicitPRM
from trl_erprm.tiny import build_tiny_model


@pytest.fixture(scope="module")
def ref_path(tokenizer, tiny_dir):
    path = tiny_dir / "implicit_ref_seed1"
    if not path.exists():
        build_tiny_model(tokenizer, "causal_lm", save_dir=path, seed=1)
    return str(path)


class CountingPRM(ImplicitPRM):
    """ImplicitPRM that records what GRPOTrainer passed it (the scoring itself is untouched)."""

    calls: list

    def __call__(self, prompts, completions, completion_ids=None, **kwargs):
        rewards = super().__call__(prompts, completions, completion_ids, **kwargs)
        self.calls.append({"prompts": prompts, "completions": completions, "kwargs": set(kwargs), "rewards": rewards})
        return rewards


def test_grpo_trainer_runs_with_implicit_prm_and_accuracy_reward(tokenizer, causal_lm_path, ref_path, tmp_path):
    problems = [(2, 3), (4, 5), (6, 1), (7, 2)]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"What is {a} + {b}? Put the answer in \\boxed{{}}."}],
                "solution": f"\\boxed{{{a + b}}}",
            }
            for a, b in problems
        ]
    )
    prm = CountingPRM(causal_lm_path, ref_model=ref_path, tokenizer=tokenizer, beta=0.05, batch_size=2)
    prm.calls = []
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        bf16=False,
        max_completion_length=8,
        num_generations=2,
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-4,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=causal_lm_path,
        reward_funcs=[prm, accuracy_reward],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()

    assert trainer.reward_func_names == ["implicit_prm", "accuracy_reward"]
    assert len(prm.calls) == 2  # one generation batch per step
    call = prm.calls[0]
    assert isinstance(call["prompts"][0], list) and call["completions"][0][0]["role"] == "assistant"
    assert "solution" in call["kwargs"] and "trainer_state" in call["kwargs"]
    assert all(math.isfinite(r) for c in prm.calls for r in c["rewards"])
    # a direct call on the same inputs reproduces what the trainer received
    assert prm(call["prompts"], call["completions"]) == pytest.approx(call["rewards"], abs=1e-6)
    logged = [h for h in trainer.state.log_history if "rewards/implicit_prm/mean" in h]
    assert len(logged) == 2 and all(math.isfinite(h["rewards/implicit_prm/mean"]) for h in logged)
    assert all("rewards/accuracy_reward/mean" in h for h in logged)
    assert any(r != 0.0 for c in prm.calls for r in c["rewards"])  # PRM and reference differ: real rewards
