"""The RAFT stage (the ER-PRM paper's policy-improvement experiment): one run of [`~trl_erprm.raft.run_raft`] per
selector, all from the same policy and, in round 1, the same samples.

Round 1 samples `raft_num_samples` solutions per training problem ONCE; each selector (a PRM, `outcome`: a solution
with the right final answer, `majority`: one with the most frequent answer) keeps its best sample per problem and
the policy is fine-tuned on the kept ones with TRL's SFTTrainer; the held-out accuracy of the start and of each
round's policy is measured with `raft_eval_samples` samples per problem at temperature 1 (the start policy once, by
the first run; the others record that measurement). Each run is a resumable job folder (`raft/<selector>/`).
"""

from __future__ import annotations

from pathlib import Path

from .common import STEP_SEPARATOR, quiet_transformers, say, stage_seed, trainer_args


def _problems(problems, tokenizer, repeat: int = 1) -> list[dict]:
    from .policy import format_prompt

    rows = [
        {
            "prompt": [{"role": "user", "content": p.text}],
            "gold": str(p.answer),
            "question": format_prompt(tokenizer, p),
        }
        for p in problems
    ]
    return rows * repeat


def raft_config(config, seed: int, folder: Path):
    """The [`~trl_erprm.raft.RAFTConfig`] of one selector's run.

    Args:
        config ([`QuickstartConfig`]):
            The settings.
        seed (`int`):
            The run's seed (the same RAFT seed for every selector: the same evaluation samples' seeds).
        folder (`Path`):
            The run's folder.

    Returns:
        [`~trl_erprm.raft.RAFTConfig`]: The configuration.
    """
    from ..raft import RAFTConfig

    return RAFTConfig(
        **trainer_args(str(folder), stage_seed(seed, "raft")),
        num_rounds=config.raft_rounds,
        num_samples=config.raft_num_samples,
        temperature=1.0,
        max_new_tokens=config.max_new_tokens,
        generation_batch_size=256,
        selection="best_of_n",
        aggregation=config.aggregation,
        prm_step_separator=STEP_SEPARATOR,
        eval_temperature=1.0,
        chunk_size=256,
        overwrite=True,  # the same run resumes; another one (other settings or samples) starts over
        plot=False,
        learning_rate=config.raft_learning_rate,
        num_train_epochs=config.raft_epochs,
        per_device_train_batch_size=16,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0.1,
        logging_steps=5,
    )


def run_raft_stage(config, seed: int, policy_path: str, model, tokenizer, train_problems, test_problems, scorers, out):
    """RAFT with every selector of `config.raft_selectors`, round 1 on one shared sampling pass.

    Args:
        config ([`QuickstartConfig`]):
            The settings.
        seed (`int`):
            The run's seed.
        policy_path (`str`):
            The start policy's folder.
        model ([`~transformers.PreTrainedModel`]):
            The start policy (samples round 1 once).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        train_problems (`list[Problem]`):
            The problems RAFT fine-tunes on.
        test_problems (`list[Problem]`):
            The held-out problems.
        scorers (`dict`):
            The PRM scorers, by name.
        out (`Path`):
            The seed's folder (runs go to `raft/<selector>/`).

    Returns:
        `dict`: `start` (held-out accuracy of the start policy), `selectors` (per selector: `accuracy` per round,
        round 0 the start, and `rounds`, the run's per-round summaries), `shared_samples` (samples of round 1 and
        the fraction with a right answer), `eval_samples_per_problem`.
    """
    from ..labeling.grading import MathVerifyGrader
    from ..raft import run_raft
    from .common import sample_candidates

    groups = sample_candidates(
        model, tokenizer, train_problems, config.raft_num_samples, stage_seed(seed, "raft_samples"),
        config.max_new_tokens,
    )  # fmt: skip
    samples = [[c.text for c in group] for group in groups]
    train_rows = _problems(train_problems, tokenizer)
    eval_rows = _problems(test_problems, tokenizer, config.raft_eval_samples)  # k samples per problem, seeds differ
    grader = MathVerifyGrader(num_workers=1)
    results, start = {}, None
    try:
        for name in config.raft_selectors:
            say(f"    RAFT with {name} selection, {config.raft_rounds} round(s)")
            scorer = scorers[name] if name in scorers else name
            with quiet_transformers():
                report = run_raft(
                    raft_config(config, seed, Path(out) / "raft" / name), policy=policy_path, tokenizer=tokenizer,
                    train_problems=train_rows, eval_problems=eval_rows, scorer=scorer, grader=grader, samples=samples,
                    start_eval=start,
                )  # fmt: skip
            start = {
                k: v for k, v in report["rounds"][0].items() if k in ("accuracy", "eval_problems", "eval_not_graded")
            }
            results[name] = {"accuracy": report["accuracy"], "rounds": report["rounds"], "stopped": report["stopped"]}
            say(f"    {name}: held-out accuracy by round {[round(100 * a, 1) for a in report['accuracy']]}")
    finally:
        grader.close()
    flat = [c.correct for group in groups for c in group]
    first = results[config.raft_selectors[0]]["accuracy"][0] if results else None
    return {
        "start": first,
        "selectors": results,
        "shared_samples": {"num_samples": len(flat), "answer_accuracy": sum(flat) / len(flat)},
        "eval_samples_per_problem": config.raft_eval_samples,
    }
