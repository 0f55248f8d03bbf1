"""CUDA paths: on a GPU the library computes what it computes on the CPU.

Every test here needs a CUDA device and is skipped (reported as skipped, never as passed) where there is none, as on
CI. Run them on a GPU machine with `pytest tests/test_gpu.py` (`benchmarks/gpu_check.sh` does, before the GPU
benchmarks). Each test runs the same computation on the CPU in the same test and compares.
"""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on CI)")

PROMPTS = [
    "Ann has 3 apples and gets 4 more. How many apples does Ann have now?",
    "What is 7 * 6?",
    "Q",
    "What is 7 * 6?",
]
COMPLETIONS = ["Ann starts with 3.\n\n3 + 4 = 7.\n\nThe answer is \\boxed{7}.", "7 * 6 = 42.", "\\boxed{5}", "So 6."]


def test_rollouts_on_cuda_equal_rollouts_on_cpu_in_float64(causal_lm_path, tokenizer):
    """The transformers backend draws its uniforms on the CPU from per-sample seeds, so the samples of a prompt are
    the same on any device; in float64 the logits differ by rounding only. Both the prefix-shared path and the
    per-rollout path on the GPU give the CPU's samples."""
    from trl_erprm.labeling.backends import Sampling, TransformersBackend

    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=48, stop=("\n\n",))
    seeds = [11, 12, 13, 12]
    cpu = AutoModelForCausalLM.from_pretrained(causal_lm_path, dtype=torch.float64).eval()
    gpu = AutoModelForCausalLM.from_pretrained(causal_lm_path, dtype=torch.float64).eval().to("cuda")
    expected = TransformersBackend(cpu, tokenizer=tokenizer, batch_size=4).generate_completions(
        PROMPTS, 6, sampling, seeds
    )
    for share_prefix in (True, False):
        backend = TransformersBackend(gpu, tokenizer=tokenizer, batch_size=4, share_prefix=share_prefix)
        assert backend.generate_completions(PROMPTS, 6, sampling, seeds) == expected, share_prefix


def test_implicit_prm_rewards_on_cuda_equal_cpu(causal_lm_path, tokenizer):
    from trl_erprm.evaluation.scorers import load_scorer
    from trl_erprm.implicit_prm import ImplicitPRM
    from trl_erprm.tiny import build_tiny_model

    ref = build_tiny_model(tokenizer, "causal_lm", seed=1)
    scores = {}
    for device in ("cpu", "cuda"):
        model = AutoModelForCausalLM.from_pretrained(causal_lm_path).to(device)
        prm = ImplicitPRM(model, ref_model=ref.to(device), tokenizer=tokenizer, beta=0.5, batch_size=2)
        assert next(prm.model.parameters()).device.type == device
        scores[device] = prm.score_steps(PROMPTS, COMPLETIONS)
    # Loaded by path through load_scorer, the implicit PRM and its reference run on the device asked for.
    scorer = load_scorer(causal_lm_path, prm_type="implicit", ref_model=causal_lm_path, device="cuda")
    assert next(scorer.prm.model.parameters()).device.type == "cuda"
    assert next(scorer.prm.ref_model.parameters()).device.type == "cuda"
    for cpu, gpu in zip(scores["cpu"], scores["cuda"]):
        assert len(cpu["step_rewards"]) == len(gpu["step_rewards"])
        torch.testing.assert_close(
            torch.tensor(gpu["step_rewards"]), torch.tensor(cpu["step_rewards"]), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("head", ["token_classification", "lm"])
def test_erprm_trainer_trains_in_bf16_on_cuda_and_its_scores_match_cpu(head, tokenizer, tmp_path):
    """A soft-label PRM trained on the GPU in bfloat16: the loss falls, nothing is NaN, the saved folder loads into a
    scorer whose step scores on the GPU equal those on the CPU."""
    from trl_erprm import ERPRMConfig, ERPRMTrainer
    from trl_erprm.evaluation.scorers import load_scorer
    from trl_erprm.tiny import build_tiny_model

    rows = []
    for i in range(32):
        a, b = i % 7 + 1, i % 5 + 2
        rows.append(
            {
                "prompt": f"What is {a} + {b}?",
                "completions": [f"{a} + {b} = {a + b}. good", f"So {a + b + 1}. bad", f"The answer is {a + b}."],
                "labels": [0.9, 0.1, 0.7],
            }
        )
    kind = "causal_lm" if head == "lm" else "token_classification"
    model = build_tiny_model(tokenizer, kind, seed=0)
    args = ERPRMConfig(
        output_dir=str(tmp_path / "out"),
        head=head,
        bf16=True,
        per_device_train_batch_size=8,
        num_train_epochs=4,
        learning_rate=3e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = ERPRMTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    assert trainer.args.device.type == "cuda"
    trainer.train()
    assert next(trainer.model.parameters()).device.type == "cuda"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    trainer.save_model(str(tmp_path / "prm"))
    tokenizer.save_pretrained(str(tmp_path / "prm"))

    steps = [r["completions"] for r in rows[:4]]
    prompts = [r["prompt"] for r in rows[:4]]
    on_cpu = load_scorer(str(tmp_path / "prm"), device="cpu").score(prompts, steps)
    on_gpu = load_scorer(str(tmp_path / "prm"), device="cuda").score(prompts, steps)
    for cpu, gpu in zip(on_cpu, on_gpu):
        torch.testing.assert_close(torch.tensor(gpu), torch.tensor(cpu), atol=2e-3, rtol=1e-3)
    # The trained PRM separates the "good" steps from the "bad" ones it was taught.
    assert all(s[0] > s[1] for s in on_gpu), on_gpu
