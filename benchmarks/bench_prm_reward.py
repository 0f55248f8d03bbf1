"""Throughput of `PRMReward`: completions scored per second against the PRM's raw forward passes on the same batch.

The same completions (a fixed set of multi-step solutions) are scored by `PRMReward.__call__` (steps cut from the
text, rows laid out and tokenized as the PRM was trained, padded batches of the scorer's size, forward passes,
softmax, step scores gathered and aggregated) and by the baseline: only the forward passes of the very same padded
batches, prepared beforehand. The two alternate in one process (one torch thread); the ratio of their throughputs is
taken per repeat. Token-classification and LM-head PRMs, on a Qwen2 large enough for the forward pass to be most of
the work, as it is with real PRMs.

    python benchmarks/bench_prm_reward.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DESCRIPTION = (
    "PRMReward scoring throughput (completions/s: step splitting, layout, tokenization, forward, aggregation) over the "
    "raw forward passes of the PRM on the same padded batches (the baseline), alternating in one process, per repeat."
)


def _completions(num: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(num):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        prompts.append(f"Ann has {a} apples and gets {b} more. How many apples does Ann have now?")
        steps = [
            f"Step {k}: Ann had {a + k} apples and {b - k} more arrive, so {a + k} + {b - k} = {a + b}."
            for k in range(8)
        ]
        completions.append("\n".join(steps + [f"The answer is \\boxed{{{a + b}}}."]))
    return prompts, completions


def run(quick: bool = False) -> dict:
    """Time PRMReward against raw forward passes.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            Fewer repeats and completions.

    Returns:
        `dict`: `settings`, per-repeat throughputs (`<kind>_prm_reward_per_s`, `<kind>_raw_forward_per_s`) and
        `ratios` (PRMReward / raw forward, per repeat) for the token-classification and LM-head PRMs, and a `checks`
        verdict against the goal of 0.9x.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from trl_erprm import PRMReward
    from trl_erprm.evaluation.scorers import LMHeadScorer, TokenClassificationScorer
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    torch.set_num_threads(1)
    repeats, num = (5, 32) if quick else (12, 64)
    size = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
    settings = {"repeats": repeats, "completions": num, "steps_per_completion": 9, "batch_size": 8, **size}
    prompts, completions = _completions(num)
    out = {"settings": settings, "ratios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(os.path.join(tmp, "tokenizer"))
        scorers = {}
        path = os.path.join(tmp, "token_cls")
        build_tiny_model(tokenizer, "token_classification", save_dir=path, **size)
        model = AutoModelForTokenClassification.from_pretrained(path)
        scorers["token_classification"] = TokenClassificationScorer(model, tokenizer, "\n", batch_size=8)
        path = os.path.join(tmp, "lm_head")
        build_tiny_model(tokenizer, save_dir=path, **size)
        model = AutoModelForCausalLM.from_pretrained(path)
        scorers["lm_head"] = LMHeadScorer(model, tokenizer, " ки", " +", " -", step_separator="\n", batch_size=8)
        for kind, scorer in scorers.items():
            reward = PRMReward(scorer, aggregation="min", device="cpu")
            steps = [reward.split(c) for c in completions]
            layouts = [scorer.layout(p, s) for p, s in zip(prompts, steps)]
            order = sorted(range(num), key=lambda i: len(layouts[i][0]))
            batches = []
            for start in range(0, num, 8):
                chunk = [layouts[i][0] for i in order[start : start + 8]]
                width = max(len(ids) for ids in chunk)
                ids = torch.tensor([x + [0] * (width - len(x)) for x in chunk])
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk])
                batches.append((ids, mask))

            def raw(batches=batches, model=scorer.model):
                with torch.no_grad():
                    for ids, mask in batches:
                        model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)

            def ours(reward=reward):
                reward(prompts=prompts, completions=completions)

            ours(), raw()  # warm-up
            timings = {"ours": [], "raw": []}
            for r in range(repeats):
                for name, fn in (("ours", ours), ("raw", raw)) if r % 2 == 0 else (("raw", raw), ("ours", ours)):
                    start = time.perf_counter()
                    fn()
                    timings[name].append(time.perf_counter() - start)
            out[f"{kind}_prm_reward_per_s"] = [num / t for t in timings["ours"]]
            out[f"{kind}_raw_forward_per_s"] = [num / t for t in timings["raw"]]
            out["ratios"][f"PRMReward / raw forward, {kind}, throughput"] = [
                t_raw / t_ours for t_ours, t_raw in zip(timings["ours"], timings["raw"])
            ]
    medians = {k: sorted(v)[len(v) // 2] for k, v in out["ratios"].items()}
    out["checks"] = {f"{k} >= 0.9 (median {m:.2f})": m >= 0.9 for k, m in medians.items()}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and completions")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
