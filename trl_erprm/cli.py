"""The `trl-erprm` command line: `trl-erprm quickstart | label | bon | stepeval ...`."""

from __future__ import annotations

import argparse
import sys


def _quickstart(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trl-erprm quickstart",
        description="Train a tiny ER-PRM on CPU, offline: builds a tiny tokenizer and model, labels toy steps with "
        "er_label from simulated rollout outcomes, trains ERPRMTrainer and prints its metrics.",
    )
    parser.add_argument("--output_dir", default="erprm-quickstart", help="Where to write the model and metrics.")
    parser.add_argument("--max_steps", type=int, default=60, help="Training steps.")
    parser.add_argument("--eta", default="2.0", help="Entropy-regularization coefficient (a number, 'soft', 'hard').")
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    args = parser.parse_args(argv)

    import json
    import os
    import random

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset

    from . import ERPRMConfig, ERPRMTrainer, er_label
    from .tiny import build_tiny_model, build_tokenizer

    rng = random.Random(args.seed)
    rows = []
    for _ in range(96):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        wrong = rng.random() < 0.5
        result = a + b + (rng.randint(1, 3) if wrong else 0)
        # Simulated rollouts: after a right step most completions reach the answer, after a wrong one few do.
        step_outcomes = [[float(rng.random() < (0.1 if wrong else 0.8)) for _ in range(8)], [float(not wrong)]]
        rows.append(
            {
                "prompt": f"What is {a} + {b}?",
                # A toy cue the tiny model can learn in seconds: guessed steps say "is about".
                "completions": [
                    f"{a} + {b} {'is about' if wrong else '='} {result}.",
                    f"The answer is \\boxed{{{result}}}.",
                ],
                "step_outcomes": step_outcomes,
            }
        )
    dataset = Dataset.from_list(rows).train_test_split(test_size=0.25, seed=args.seed)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, "token_classification", seed=args.seed)
    config = ERPRMConfig(
        output_dir=args.output_dir,
        eta=args.eta,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=args.seed,
    )
    trainer = ERPRMTrainer(
        model=model,
        args=config,
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
        processing_class=tokenizer,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    trainer.save_model(args.output_dir)
    example = next(row["step_outcomes"][0] for row in rows if 0 < sum(row["step_outcomes"][0]) < 8)
    print(f"\nER label of outcomes {example} at eta={config.eta}: {er_label(example, config.eta):.3f}")
    print(f"{'metric':<12}{'before':>10}{'after':>10}")
    for key in ("eval_loss", "eval_mae", "eval_brier", "eval_accuracy"):
        print(f"{key[5:]:<12}{before[key]:>10.4f}{after[key]:>10.4f}")
    with open(os.path.join(args.output_dir, "quickstart_metrics.json"), "w") as f:
        json.dump({"before": before, "after": after}, f, indent=2)
    print(f"Model and metrics written to {args.output_dir}")
    return 0


def _bon(argv: list[str]) -> int:
    from .evaluation import bon_main

    bon_main(argv)
    return 0


def _stepeval(argv: list[str]) -> int:
    from .evaluation import stepeval_main

    stepeval_main(argv)
    return 0


def _label(argv: list[str]) -> int:
    from .labeling.labeler import cli_main

    return cli_main(argv)


COMMANDS = {"quickstart": _quickstart, "label": _label, "bon": _bon, "stepeval": _stepeval}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trl-erprm` command.

    Args:
        argv (`list[str]`, *optional*):
            Arguments (without the program name); defaults to `sys.argv[1:]`.

    Returns:
        `int`: The exit status.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: trl-erprm {{{','.join(COMMANDS)}}} [options]   (trl-erprm <command> --help for details)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
