"""The labelling and PRM stages: ONE Monte-Carlo labelling job, then an eta sweep of PRMs from its stored outcomes.

The graded outcomes of `num_rollouts` continuations of every step prefix are stored by
[`~trl_erprm.labeling.labeler.ERPRMLabeler`] (a resumable job); each PRM of the sweep is then the same training run
with another `ERPRMConfig.eta` (the label is `er_label(outcomes, eta)` at batch time). A control PRM trains on the
checker's true step labels (the best labels the same data could have), and an implicit PRM on the outcome labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..steps import StepFormat
from .common import STEP_SEPARATOR, compact_progress, quiet_transformers, say, stage_seed, trainer_args
from .config import prm_name
from .policy import STEP_TAG


#: The LM-head PRMs read these two tokens of the policy's own vocabulary at the step tag (ER-PRM's code: " +"/" -").
GOOD_TOKEN, BAD_TOKEN = " +", " -"


def label_quality(labels: list[list[float]], truth: list[list[bool]], first_errors: list[int]) -> dict:
    """Agreement of per-step labels (or PRM probabilities) in [0, 1] with the true step labels, at threshold 0.5.

    Args:
        labels (`list[list[float]]`):
            Per solution, one value per step (fewer when a PRM could not score the last steps).
        truth (`list[list[bool]]`):
            Per solution, the true process label of each step (`True` before the first wrong step).
        first_errors (`list[int]`):
            Per solution, the index of its first wrong step, `-1` if none.

    Returns:
        `dict`: `step_accuracy` (value >= 0.5 agrees with the truth), `mean_on_good_steps`, `mean_on_bad_steps`, and
        the ProcessBench metrics ([`~trl_erprm.evaluation.processbench_metrics`]) of the first step below 0.5.
    """
    from ..evaluation.metrics import first_error_prediction, processbench_metrics

    pairs = [(v, t) for row, truth_row in zip(labels, truth) for v, t in zip(row, truth_row)]
    good = [v for v, t in pairs if t]
    bad = [v for v, t in pairs if not t]
    predictions = [first_error_prediction(row, 0.5) for row in labels]
    return {
        "step_accuracy": sum((v >= 0.5) == t for v, t in pairs) / len(pairs) if pairs else math.nan,
        "mean_on_good_steps": sum(good) / len(good) if good else math.nan,
        "mean_on_bad_steps": sum(bad) / len(bad) if bad else math.nan,
        **processbench_metrics(first_errors, predictions),
    }


def label_training_solutions(config, seed: int, policy_path: str, model, tokenizer, problems, out: Path):
    """Sample the training solutions and label every step of them ONCE with MC rollouts; measure the labels.

    Args:
        config ([`QuickstartConfig`]):
            The settings.
        seed (`int`):
            The run's seed.
        policy_path (`str`):
            The policy's folder.
        model ([`~transformers.PreTrainedModel`]):
            The policy.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        problems (`list[Problem]`):
            The training problems.
        out (`Path`):
            The seed's folder (the labelling job goes to `labels/`).

    Returns:
        `tuple`: The labelled candidates, their stored `step_outcomes`, the quality of each eta's labels against the
        truth, and the data summary.
    """
    from ..labeling.labeler import ERPRMLabeler, labels_from_outcomes
    from ..labeling.labeler_config import ERPRMLabelerConfig
    from .common import sample_candidates

    groups = sample_candidates(
        model, tokenizer, problems, config.samples_per_problem, stage_seed(seed, "train_sampling"),
        config.max_new_tokens,
    )  # fmt: skip
    solutions = [c for group in groups for c in group]
    rows = [
        {"prompt": problems[c.problem].text, "completions": c.steps, "gold_answer": str(problems[c.problem].answer)}
        for c in solutions
    ]
    labeler_config = ERPRMLabelerConfig(
        model_name_or_path=policy_path,
        num_rollouts=config.num_rollouts,
        temperature=1.0,
        max_new_tokens=config.max_new_tokens,
        seed=stage_seed(seed, "rollouts"),
        prefix_placement="assistant",  # the policy continues its own assistant turn
        user_instruction="",  # the policy was trained on the bare problem (and writes \\boxed{} already)
        step_separator=STEP_SEPARATOR,
        eta=config.er_eta,
        output_dir=str(out / "labels"),
        batch_size=16,
        generation_batch_size=128,
        overwrite=True,  # the same job resumes; a different one starts over
    )
    labeler = ERPRMLabeler(labeler_config, model=model, tokenizer=tokenizer)
    try:
        labelled = labeler.label(rows)
    finally:
        labeler.close()
    summary = labeler.summary
    ok = [i for i, status in enumerate(labelled["status"]) if status == "ok"]
    train, outcomes = [solutions[i] for i in ok], [labelled[i]["step_outcomes"] for i in ok]
    truth, first_errors = [c.step_truth for c in train], [c.first_error for c in train]
    quality = {
        prm_name(eta): label_quality([labels_from_outcomes(o, eta) for o in outcomes], truth, first_errors)
        for eta in config.etas
    }
    data = {
        "num_train_problems": len(problems),
        "num_train_solutions": len(solutions),
        "train_answer_accuracy": sum(c.correct for c in solutions) / len(solutions),
        "num_labelled_solutions": len(ok),
        "label_status_counts": summary["status_counts"],
        "num_rollouts": summary["num_rollouts"],
    }
    accuracies = ", ".join(f"{k} {100 * v['step_accuracy']:.1f}%" for k, v in quality.items())
    say(
        f"    {len(ok)} of {len(solutions)} solutions labelled ({100 * data['train_answer_accuracy']:.1f}% right "
        f"answers), {summary['num_rollouts']} rollouts; step accuracy of the labels: {accuracies}"
    )
    return train, outcomes, quality, data


def _prm_args(config, name: str, eta: float, seed: int, out: Path):
    from ..erprm_config import ERPRMConfig

    head = {}
    if config.head == "lm":  # the policy's own head reads " +" / " -" at the tag after each step
        head = {"head": "lm", "step_tag": STEP_TAG, "good_token": GOOD_TOKEN, "bad_token": BAD_TOKEN}
        head["prompt_separator"] = ""  # the chat prompt ends with the assistant header: the steps follow it
    return ERPRMConfig(
        **trainer_args(str(out / "prms" / name), stage_seed(seed, "prm")),
        **head,
        eta=eta,
        step_separator=STEP_SEPARATOR,
        max_length=256,
        num_train_epochs=config.prm_epochs,
        per_device_train_batch_size=config.prm_batch_size,
        learning_rate=config.prm_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=5,
    )


def prm_scorer(config, model, tokenizer):
    """The evaluation scorer of a PRM trained by [`train_prms`] (LM head or token classification).

    Args:
        config ([`QuickstartConfig`]):
            The settings (`head`).
        model ([`~transformers.PreTrainedModel`]):
            The trained PRM.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.

    Returns:
        `LMHeadScorer` or `TokenClassificationScorer`: The scorer.
    """
    from ..evaluation.scorers import LMHeadScorer, TokenClassificationScorer

    if config.head == "lm":
        return LMHeadScorer(
            model, tokenizer, step_tag=STEP_TAG, good_token=GOOD_TOKEN, bad_token=BAD_TOKEN, prompt_separator="",
            step_separator=STEP_SEPARATOR, batch_size=64,
        )  # fmt: skip
    return TokenClassificationScorer(model, tokenizer, step_separator=STEP_SEPARATOR, batch_size=64)


def train_prms(config, seed: int, policy_path: str, tokenizer, prompts, train, outcomes, out: Path) -> tuple:
    """Train one PRM per eta from the stored outcomes, and the control PRM on the true step labels.

    Every PRM starts from the policy (its own LM head with `head="lm"`, a new 2-label head otherwise, the same for
    every PRM), with the same data order: only the labels differ.

    Args:
        config ([`QuickstartConfig`]):
            The settings.
        seed (`int`):
            The run's seed.
        policy_path (`str`):
            The policy's folder.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        prompts (`list[str]`):
            The chat prompt of each training solution.
        train (`list[Candidate]`):
            The labelled solutions.
        outcomes (`list[list[list[float]]]`):
            Their stored rollout outcomes.
        out (`Path`):
            The seed's folder (PRMs go to `prms/<name>`).

    Returns:
        `tuple[dict, dict]`: The scorers and the training summaries, by PRM name.
    """
    from datasets import Dataset

    from ..erprm_trainer import ERPRMTrainer
    from ..models import load_model

    rows = [{"prompt": p, "completions": c.steps, "step_outcomes": o} for p, c, o in zip(prompts, train, outcomes)]
    truth = [
        {"prompt": p, "completions": c.steps, "labels": [float(t) for t in c.step_truth]}
        for p, c in zip(prompts, train)
    ]
    runs = {prm_name(eta): (eta, rows) for eta in config.etas}
    runs["control"] = (None, truth)
    scorers, stats = {}, {}
    for name, (eta, data) in runs.items():
        say(f"    {name}: " + (f"ER labels, eta={eta:g}" if eta is not None else "the checker's true step labels"))
        torch.manual_seed(stage_seed(seed, "prm"))  # the same new head (token classification) for every PRM
        with quiet_transformers():
            kind = "causal_lm" if config.head == "lm" else "token_classification"
            model = load_model(policy_path, kind, **({"num_labels": 2} if kind != "causal_lm" else {}))
        args = _prm_args(config, name, 0.0 if eta is None else eta, seed, out)
        trainer = ERPRMTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer
        )
        compact_progress(trainer, ("loss",))
        result = trainer.train()
        trainer.save_model()
        scorers[name] = prm_scorer(config, trainer.model.eval(), tokenizer)
        stats[name] = {"eta": eta, "train_loss": result.training_loss, "folder": args.output_dir}
    return scorers, stats


def train_implicit_prm(config, seed: int, policy_path: str, tokenizer, prompts, train, outcomes, out: Path) -> tuple:
    """Train the implicit PRM (cross-entropy on the outcome labels of the same solutions) from the policy.

    Args:
        config ([`QuickstartConfig`]):
            The settings.
        seed (`int`):
            The run's seed.
        policy_path (`str`):
            The policy's folder (also the frozen reference).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        prompts (`list[str]`):
            The chat prompt of each training solution.
        train (`list[Candidate]`):
            The labelled solutions.
        outcomes (`list[list[list[float]]]`):
            Their stored rollout outcomes (the last step's is the solution's own grade).
        out (`Path`):
            The seed's folder (the PRM goes to `prms/implicit`).

    Returns:
        `tuple[dict, dict]`: The scorers `implicit` (with reference) and `implicit_noref` (`beta * log pi` alone), and
        the training summary.
    """
    from datasets import Dataset

    from ..evaluation.scorers import ImplicitPRMScorer
    from ..implicit_prm import ImplicitPRM
    from ..implicit_prm_config import ImplicitPRMConfig
    from ..implicit_prm_trainer import ImplicitPRMTrainer

    rows = [
        {"prompt": p, "completion": StepFormat(STEP_SEPARATOR).join(c.steps), "label": o[-1][0]}
        for p, c, o in zip(prompts, train, outcomes)
    ]
    args = ImplicitPRMConfig(
        **trainer_args(str(out / "prms" / "implicit"), stage_seed(seed, "implicit_prm")),
        beta=config.implicit_beta,
        loss_type="ce",
        max_length=256,
        num_train_epochs=config.prm_epochs,
        per_device_train_batch_size=config.prm_batch_size,
        learning_rate=config.implicit_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=5,
    )
    dataset = Dataset.from_list(rows)
    with quiet_transformers():
        trainer = ImplicitPRMTrainer(model=policy_path, args=args, train_dataset=dataset, processing_class=tokenizer)
    compact_progress(trainer, ("loss", "accuracy"))
    result = trainer.train()
    trainer.save_model()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    beta = config.implicit_beta
    with_reference = ImplicitPRM(model, trainer.ref_model, tokenizer, beta=beta, step_separator=STEP_SEPARATOR)
    reference_free = ImplicitPRM(model, None, tokenizer, beta=beta, step_separator=STEP_SEPARATOR)
    scorers = {"implicit": ImplicitPRMScorer(with_reference), "implicit_noref": ImplicitPRMScorer(reference_free)}
    return scorers, {"train_loss": result.training_loss, "beta": beta, "folder": args.output_dir}
