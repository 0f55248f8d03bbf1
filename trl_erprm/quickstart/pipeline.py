r"""`trl-erprm quickstart`: the ER-PRM experiment end to end, offline, on a CPU.

The shape of the ER-PRM paper's main table (arXiv 2412.11006: Best-of-N with soft, hard and ER labels), replicated on
the embedded arithmetic task, where the truth of every step is known:

1. train (or reuse) the tiny policy of [`~trl_erprm.quickstart.policy`];
2. sample `samples_per_problem` solutions per training problem;
3. label every step of them ONCE with Monte-Carlo rollouts ([`~trl_erprm.labeling.labeler.ERPRMLabeler`]): the
   graded outcomes of `num_rollouts` continuations per step prefix are stored, not a label; measure the soft
   (`eta=0`), hard (`eta=inf`) and ER (`eta`) labels they give against the ground truth;
4. train three token-classification PRMs with [`~trl_erprm.ERPRMTrainer`] from the same stored outcomes (the label
   kind is only `ERPRMConfig.eta`);
5. train an implicit PRM with [`~trl_erprm.implicit_prm_trainer.ImplicitPRMTrainer`] on the outcome (last-step) labels
   of the same solutions; it scores with its reference (the policy) and without (`log pi` alone);
6. sample `num_candidates` solutions per held-out problem;
7. score them with every PRM: Best-of-N at several N against the first sample, majority vote, PRM-weighted majority
   and pass@N, over random candidate subsets (mean and standard deviation over `num_subset_draws` draws); and the
   ProcessBench-style step F1 of every PRM against the checker's first wrong step, at threshold 0.5 and at the
   threshold that is best on the PRMs' (labelled) training rows;
8. a short GRPO run with [`~trl.GRPOTrainer`] and with [`~trl_erprm.grpo.PRIMETrainer`] from the same start, seed and number of steps,
   then the accuracy of both policies on the held-out problems.

It prints the tables and writes `results.json`, `table.md`, `bon_accuracy_vs_n.png` and `grpo_vs_prime.png` to
`output_dir` (with the labels in `labels/` and the PRMs in `prms/`). Everything is seeded from `seed`; the derived
seeds are in `results.json`. `trl-erprm quickstart --help` lists the options; `--fast` runs the same stages at toy
sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..steps import StepFormat


#: What `--fast` changes (options given explicitly still win).
FAST_SETTINGS = {
    "policy_steps": 500,
    "num_train_problems": 16,
    "num_rollouts": 4,
    "prm_epochs": 1.0,
    "num_test_problems": 16,
    "num_candidates": 4,
    "num_subset_draws": 3,
    "grpo_steps": 2,
    "grpo_repeats": 1,
    "grpo_eval_samples": 2,
}

#: The MC-labelled PRMs: label kind -> eta (`None`: `QuickstartConfig.eta`).
LABEL_KINDS = {"soft": 0.0, "hard": math.inf, "er": None}

#: Every PRM of the experiment, in table order; "oracle" is a control trained on the checker's true step labels.
PRM_NAMES = ("soft", "hard", "er", "oracle", "implicit", "implicit_noref")

#: How the tables name the PRMs.
PRM_LABELS = {
    "soft": "soft-label PRM (eta=0)",
    "hard": "hard-label PRM (eta=inf)",
    "er": "ER-PRM",
    "oracle": "PRM on true step labels (control)",
    "implicit": "implicit PRM",
    "implicit_noref": "implicit PRM without reference",
}

STEP_SEPARATOR = "\n\n"
REWARD_KEY = "rewards/task_answer_reward/mean"  # GRPOTrainer's log of task_answer_reward


@dataclass
class QuickstartConfig:
    r"""Settings of the quickstart experiment. The defaults fit in 10 minutes on 2 CPU cores.

    Args:
        output_dir (`str`, *optional*, defaults to `"erprm-quickstart"`):
            Where the results, plots, labels and PRMs are written.
        policy_dir (`str`, *optional*):
            Cache folder of the tiny policy (reused by runs with the same policy settings). Defaults to
            [`default_policy_dir`].
        seed (`int`, *optional*, defaults to `0`):
            Seed of everything (policy, problems, sampling, rollouts, training, subset draws).
        fast (`bool`, *optional*, defaults to `False`):
            Toy sizes ([`FAST_SETTINGS`]) to check the pipeline end to end in about a minute; the numbers mean
            nothing then.
        num_threads (`int`, *optional*, defaults to `1`):
            Torch threads. One is fastest for these tiny models (a second thread costs more in synchronisation than
            it saves); the math-verify grader runs in its own process.
        policy_steps (`int`, *optional*, defaults to `1000`):
            Training steps of the tiny policy (`PolicyConfig.max_steps`).
        num_train_problems (`int`, *optional*, defaults to `128`):
            Problems whose sampled solutions are labelled and train the PRMs.
        samples_per_problem (`int`, *optional*, defaults to `4`):
            Solutions sampled per training problem.
        num_rollouts (`int`, *optional*, defaults to `8`):
            Monte-Carlo rollouts per step prefix (`N` of the paper, which uses 16).
        eta (`float`, *optional*, defaults to `2.0`):
            ER-PRM coefficient of the ER labels (a number, `"inf"`, `"soft"` or `"hard"`).
        max_new_tokens (`int`, *optional*, defaults to `96`):
            Longest sampled solution or rollout, in tokens.
        prm_epochs (`float`, *optional*, defaults to `3.0`):
            Training epochs of each PRM.
        prm_learning_rate (`float`, *optional*, defaults to `1e-3`):
            Learning rate of the token-classification PRMs.
        prm_batch_size (`int`, *optional*, defaults to `16`):
            Solutions per PRM training step.
        implicit_beta (`float`, *optional*, defaults to `0.1`):
            `beta` of the implicit PRM (`r = beta * log pi / pi_ref`).
        implicit_learning_rate (`float`, *optional*, defaults to `3e-4`):
            Learning rate of the implicit PRM.
        num_test_problems (`int`, *optional*, defaults to `128`):
            Held-out problems of the Best-of-N, step and GRPO evaluations.
        num_candidates (`int`, *optional*, defaults to `16`):
            Candidates sampled per held-out problem (the largest N).
        num_subset_draws (`int`, *optional*, defaults to `10`):
            Random candidate subsets drawn per problem and N (the spread of the Best-of-N table).
        aggregation (`str`, *optional*, defaults to `"min"`):
            Step aggregation of the Best-of-N score: `"min"`, `"last"`, `"prod"`, `"mean"`, ...
            (`functional.STEP_AGGREGATIONS`).
        grpo_steps (`int`, *optional*, defaults to `100`):
            Steps of each GRPO run (with and without PRIME).
        grpo_repeats (`int`, *optional*, defaults to `3`):
            Runs of each (GRPO, GRPO + PRIME), with the same seeds for both; the table shows mean ± std over runs.
        grpo_prompts_per_step (`int`, *optional*, defaults to `4`):
            Prompts per GRPO step.
        grpo_num_generations (`int`, *optional*, defaults to `4`):
            Completions per prompt (PRIME's `K`).
        grpo_learning_rate (`float`, *optional*, defaults to `5e-5`):
            Policy learning rate of both GRPO runs.
        prime_learning_rate (`float`, *optional*, defaults to `1e-4`):
            Learning rate of PRIME's online implicit PRM.
        prime_beta (`float`, *optional*, defaults to `0.05`):
            `beta` of PRIME's implicit PRM.
        grpo_eval_samples (`int`, *optional*, defaults to `4`):
            Samples per held-out problem when measuring the policies before and after GRPO.
        plot (`bool`, *optional*, defaults to `True`):
            Write the PNG plots.
    """

    output_dir: str = field(default="erprm-quickstart", metadata={"help": "Folder of results, plots, labels, PRMs."})
    policy_dir: str | None = field(default=None, metadata={"help": "Cache folder of the tiny policy."})
    seed: int = field(default=0, metadata={"help": "Seed of everything."})
    fast: bool = field(default=False, metadata={"help": "Toy sizes: check the pipeline end to end in a minute."})
    num_threads: int = field(default=1, metadata={"help": "Torch threads (1 is fastest for tiny models)."})
    policy_steps: int = field(default=1000, metadata={"help": "Training steps of the tiny policy."})
    num_train_problems: int = field(default=128, metadata={"help": "Problems whose solutions train the PRMs."})
    samples_per_problem: int = field(default=4, metadata={"help": "Solutions sampled per training problem."})
    num_rollouts: int = field(default=8, metadata={"help": "MC rollouts per step prefix."})
    eta: float = field(default=2.0, metadata={"help": "ER-PRM coefficient of the ER labels."})
    max_new_tokens: int = field(default=96, metadata={"help": "Longest solution or rollout, in tokens."})
    prm_epochs: float = field(default=3.0, metadata={"help": "Training epochs of each PRM."})
    prm_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the token-cls PRMs."})
    prm_batch_size: int = field(default=16, metadata={"help": "Solutions per PRM training step."})
    implicit_beta: float = field(default=0.1, metadata={"help": "beta of the implicit PRM."})
    implicit_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of the implicit PRM."})
    num_test_problems: int = field(default=128, metadata={"help": "Held-out problems."})
    num_candidates: int = field(default=16, metadata={"help": "Candidates per held-out problem (largest N)."})
    num_subset_draws: int = field(default=10, metadata={"help": "Random candidate subsets per problem and N."})
    aggregation: str = field(default="min", metadata={"help": "Step aggregation of the Best-of-N score."})
    grpo_steps: int = field(default=100, metadata={"help": "Steps of each GRPO run."})
    grpo_repeats: int = field(default=3, metadata={"help": "GRPO runs (seeds) with and without PRIME."})
    grpo_prompts_per_step: int = field(default=4, metadata={"help": "Prompts per GRPO step."})
    grpo_num_generations: int = field(default=4, metadata={"help": "Completions per prompt."})
    grpo_learning_rate: float = field(default=5e-5, metadata={"help": "Policy learning rate of GRPO."})
    prime_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of PRIME's online PRM."})
    prime_beta: float = field(default=0.05, metadata={"help": "beta of PRIME's implicit PRM."})
    grpo_eval_samples: int = field(default=4, metadata={"help": "Samples per held-out problem after GRPO."})
    plot: bool = field(default=True, metadata={"help": "Write the PNG plots."})

    def __post_init__(self):
        from ..functional import STEP_AGGREGATIONS, resolve_eta

        self.eta = resolve_eta(self.eta)
        if self.aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: choose one of {sorted(STEP_AGGREGATIONS)}.")
        counts = [f.name for f in dataclasses.fields(self) if f.type == "int" and f.name != "seed"]
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"QuickstartConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.grpo_num_generations < 2:
            raise ValueError(
                f"grpo_num_generations must be >= 2 (GRPO and PRIME compare completions of one prompt), got "
                f"{self.grpo_num_generations}."
            )
        for name in ("prm_epochs", "prm_learning_rate", "implicit_beta", "implicit_learning_rate", "prime_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"QuickstartConfig.{name} must be > 0, got {getattr(self, name)}.")


def quickstart_config(fast: bool = False, **overrides) -> QuickstartConfig:
    """Build a [`QuickstartConfig`]: the defaults, then [`FAST_SETTINGS`] if `fast`, then `overrides`.

    Args:
        fast (`bool`, *optional*, defaults to `False`):
            Start from the toy sizes.
        **overrides:
            Fields of [`QuickstartConfig`].

    Returns:
        [`QuickstartConfig`]: The settings.
    """
    return QuickstartConfig(**{**(FAST_SETTINGS if fast else {}), **overrides, "fast": fast})


def default_policy_dir() -> str:
    """Cache folder of the quickstart policy: `$TRL_ERPRM_CACHE/quickstart`, else `$XDG_CACHE_HOME/trl-erprm/quickstart`,
    else `~/.cache/trl-erprm/quickstart`.

    Returns:
        `str`: The folder (not created).
    """
    if os.environ.get("TRL_ERPRM_CACHE"):
        return os.path.join(os.environ["TRL_ERPRM_CACHE"], "quickstart")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "trl-erprm", "quickstart")


def stage_seed(seed: int, name: str) -> int:
    """The seed of one stage, derived from the run's seed and the stage's name (31 bits, so numpy accepts it).

    Args:
        seed (`int`):
            The run's seed.
        name (`str`):
            The stage.

    Returns:
        `int`: The stage's seed.
    """
    from ..labeling.backends import derive_seed

    return derive_seed(seed, name) % 2**31


# ---------------------------------------------------------------------------------------------------------------------
# Progress, timing, trainer settings
# ---------------------------------------------------------------------------------------------------------------------

STAGES = (
    "policy",
    "held-out and training problems",
    "training solutions and their MC-rollout labels",
    "PRMs on soft / hard / ER labels",
    "implicit PRM",
    "held-out candidates",
    "scores, Best-of-N and step F1",
    "GRPO vs GRPO + PRIME",
    "report",
)


def _say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _stage(name: str, timings: dict):
    """Announce a stage, then store its wall and CPU seconds (of this process) in `timings`."""
    _say(f"\n==> [{STAGES.index(name) + 1}/{len(STAGES)}] {name}")
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    timings[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    _say(f"    done in {timings[name]['wall_s']:.1f} s (cpu {timings[name]['cpu_s']:.1f} s)")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' info and warning messages (such as the expected "newly initialised head" report)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _compact_progress(trainer, keys: tuple[str, ...]) -> None:
    """Keep the trainer's progress bar, showing `keys` on it instead of printing every log dict."""
    from transformers.trainer_callback import ProgressCallback

    class _Progress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k.split("/")[-2] if k.endswith("/mean") else k: v for k, v in (logs or {}).items() if k in keys}
            if self.training_bar is not None and shown:
                self.training_bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_Progress())


def _trainer_args(output_dir: str, seed: int) -> dict:
    """`TrainingArguments` shared by every trainer here: CPU, float32, no checkpoints, no reporting, seeded."""
    from transformers import TrainingArguments

    # transformers 5.20 renamed gradient_checkpointing (TRL configs default it to True) to activation_checkpointing.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {
        "output_dir": output_dir,
        "use_cpu": True,
        "bf16": False,
        checkpointing: False,
        "report_to": "none",
        "save_strategy": "no",
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": False,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    """A sampled solution with the checker's verdict."""

    problem: int
    steps: list[str]
    correct: bool
    answer_key: str | None
    first_error: int
    step_truth: list[bool]


def _check(problems, solutions) -> list[list[_Candidate]]:
    from .task import check_solution

    out = []
    for p, (problem, group) in enumerate(zip(problems, solutions)):
        row = []
        for text in group:
            check = check_solution(problem, text, STEP_SEPARATOR)
            key = None if check.predicted_answer is None else str(check.predicted_answer)
            steps = [s for s in check.steps if s]  # an empty solution has no step
            row.append(_Candidate(p, steps, check.answer_correct, key, check.first_error, check.step_labels))
        out.append(row)
    return out


def _distinct_problems(num: int, seed: int, exclude: set[str]) -> list:
    """`num` problems whose statements differ from each other and from `exclude`, deterministically from `seed`."""
    from .task import generate_problems

    problems, seen, batch = [], set(exclude), 0
    while len(problems) < num:
        for problem in generate_problems(4 * num, seed=seed + batch):
            if problem.text not in seen and len(problems) < num:
                seen.add(problem.text)
                problems.append(problem)
        batch += 1
    return problems


def task_answer_reward(prompts, completions, problem, **kwargs) -> list[float]:
    """GRPO reward of the arithmetic task: 1.0 if the completion's last `\\boxed{}` holds the true answer, else 0.0.

    It reads the `problem` column with the task's checker (string parsing only: model output is never evaluated).

    Args:
        prompts (`list`):
            The prompts (unused: the `problem` column holds the statement).
        completions (`list`):
            Completions, as strings or as lists holding one assistant message.
        problem (`list[str]`):
            The problem statement of each completion (a dataset column).
        **kwargs:
            Other columns and GRPOTrainer's extras, ignored.

    Returns:
        `list[float]`: One reward per completion.
    """
    from .task import check_solution

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(check_solution(p, t, STEP_SEPARATOR).answer_correct) for p, t in zip(problem, texts)]


# ---------------------------------------------------------------------------------------------------------------------
# Labels and PRM step scores against the truth
# ---------------------------------------------------------------------------------------------------------------------


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


def step_f1(test_scores, test_first_errors, calib_scores, calib_first_errors, probabilities: bool) -> dict:
    """ProcessBench metrics of PRM step scores, at threshold 0.5 and at the threshold that is best on other solutions.

    Args:
        test_scores (`list[list[float]]`):
            Step scores of the evaluated solutions.
        test_first_errors (`list[int]`):
            Their true first wrong step (`-1` if none).
        calib_scores (`list[list[float]]`):
            Step scores of the calibration solutions.
        calib_first_errors (`list[int]`):
            Their true first wrong step.
        probabilities (`bool`):
            Whether the scores are probabilities; then the metrics at 0.5 are reported too.

    Returns:
        `dict`: `calibrated` (`threshold`, `calibration_f1` and the metrics on the evaluated solutions; NaN with a
        `note` when the calibration set cannot choose one) and, for probabilities, `at_0.5`.
    """
    from ..evaluation.metrics import choose_threshold, first_error_prediction, processbench_metrics

    out = {}
    if probabilities:
        predictions = [first_error_prediction(s, 0.5) for s in test_scores]
        out["at_0.5"] = processbench_metrics(test_first_errors, predictions)
    try:
        threshold, calibration_f1 = choose_threshold(calib_scores, calib_first_errors)
    except ValueError as error:  # e.g. no error-free calibration solution: say so, invent no threshold
        out["calibrated"] = {"threshold": math.nan, "calibration_f1": math.nan, "f1": math.nan, "note": str(error)}
        return out
    predictions = [first_error_prediction(s, threshold) for s in test_scores]
    metrics = processbench_metrics(test_first_errors, predictions)
    out["calibrated"] = {"threshold": threshold, "calibration_f1": calibration_f1, **metrics}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------------


def _sample(model, tokenizer, problems, n: int, seed: int, config) -> list[list[_Candidate]]:
    from .policy import sample_solutions

    texts = sample_solutions(
        model,
        problems,
        n=n,
        seed=seed,
        tokenizer=tokenizer,
        max_new_tokens=config.max_new_tokens,
        batch_size=128,
        show_progress=True,
    )
    return _check(problems, texts)


def _label(config, policy_path: str, model, tokenizer, problems, solutions: list[_Candidate], out: Path):
    """Label every training solution once with MC rollouts; return the labelled dataset and the labeler's summary."""
    from ..labeling.labeler import ERPRMLabeler
    from ..labeling.labeler_config import ERPRMLabelerConfig

    rows = [
        {"prompt": problems[c.problem].text, "completions": c.steps, "gold_answer": str(problems[c.problem].answer)}
        for c in solutions
    ]
    labeler_config = ERPRMLabelerConfig(
        model_name_or_path=policy_path,
        num_rollouts=config.num_rollouts,
        temperature=1.0,
        max_new_tokens=config.max_new_tokens,
        seed=stage_seed(config.seed, "rollouts"),
        prefix_placement="assistant",  # the policy continues its own assistant turn
        user_instruction="",  # the policy was trained on the bare problem (and writes \\boxed{} already)
        step_separator=STEP_SEPARATOR,
        eta=config.eta,
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
    return labelled, labeler.summary


def _train_token_prm(config, kind: str, eta: float, policy_path: str, tokenizer, dataset, out: Path):
    """Train one token-classification PRM (initialised from the policy) on the stored outcomes with `eta`."""
    from ..erprm_config import ERPRMConfig
    from ..erprm_trainer import ERPRMTrainer
    from ..models import load_model

    seed = stage_seed(config.seed, "prm")
    torch.manual_seed(seed)  # the same new score head for every label kind: only the labels differ
    with _quiet_transformers():
        model = load_model(policy_path, "token_classification", num_labels=2)
    args = ERPRMConfig(
        **_trainer_args(str(out / "prms" / kind), seed),
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
    trainer = ERPRMTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    _compact_progress(trainer, ("loss",))
    result = trainer.train()
    trainer.save_model()
    return trainer.model.eval(), {"train_loss": result.training_loss}


def _train_implicit_prm(config, policy_path: str, tokenizer, dataset, out: Path):
    """Train the implicit PRM (CE on outcome labels) from the policy, with the frozen policy as reference."""
    from ..implicit_prm import ImplicitPRM
    from ..implicit_prm_config import ImplicitPRMConfig
    from ..implicit_prm_trainer import ImplicitPRMTrainer

    args = ImplicitPRMConfig(
        **_trainer_args(str(out / "prms" / "implicit"), stage_seed(config.seed, "implicit_prm")),
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
    with _quiet_transformers():
        trainer = ImplicitPRMTrainer(model=policy_path, args=args, train_dataset=dataset, processing_class=tokenizer)
    _compact_progress(trainer, ("loss", "accuracy"))
    result = trainer.train()
    trainer.save_model()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    beta = config.implicit_beta
    with_reference = ImplicitPRM(model, trainer.ref_model, tokenizer, beta=beta, step_separator=STEP_SEPARATOR)
    reference_free = ImplicitPRM(model, None, tokenizer, beta=beta, step_separator=STEP_SEPARATOR)
    return with_reference, reference_free, {"train_loss": result.training_loss, "beta": beta}


def _grpo(config, policy_path: str, dataset, use_prime: bool, seed: int, out: Path) -> tuple:
    """One GRPO run from the policy, optionally with PRIME; returns the trained policy, its tokenizer, its step log."""
    from trl import GRPOConfig, GRPOTrainer

    from ..grpo import PRIMEConfig, PRIMETrainer

    config_class, trainer_class = (PRIMEConfig, PRIMETrainer) if use_prime else (GRPOConfig, GRPOTrainer)
    prime = {"prm_beta": config.prime_beta, "prm_learning_rate": config.prime_learning_rate} if use_prime else {}
    args = config_class(
        **_trainer_args(str(out / "grpo" / f"{'prime' if use_prime else 'grpo'}-{seed}"), seed),
        max_steps=config.grpo_steps,
        per_device_train_batch_size=config.grpo_prompts_per_step * config.grpo_num_generations,
        num_generations=config.grpo_num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=1.0,
        beta=0.0,
        learning_rate=config.grpo_learning_rate,
        logging_steps=1,
        **prime,
    )
    with _quiet_transformers():
        trainer = trainer_class(model=policy_path, reward_funcs=[task_answer_reward], args=args, train_dataset=dataset)
    keys = (REWARD_KEY, "prime/kept_fraction", "prime/prm_loss", "prime/prm_accuracy_before")
    _compact_progress(trainer, keys[:2])
    with _quiet_transformers():
        trainer.train()
    log = [{k: h[k] for k in keys if k in h} for h in trainer.state.log_history if keys[0] in h]
    return trainer.accelerator.unwrap_model(trainer.model).eval(), trainer.processing_class, log


def _policy_accuracy(model, tokenizer, problems, config, seed: int) -> dict:
    groups = _sample(model, tokenizer, problems, config.grpo_eval_samples, seed, config)
    flat = [c.correct for group in groups for c in group]
    return {
        "accuracy": sum(flat) / len(flat),
        "pass_at_k": sum(any(c.correct for c in group) for group in groups) / len(groups),
        "samples_per_problem": config.grpo_eval_samples,
    }


def _best_of_n(config, test: list[list[_Candidate]], scores: dict[str, list[list[float]]], seed: int) -> dict:
    """Best-of-N, majority, PRM-weighted majority and pass@N curves over random candidate subsets."""
    from ..evaluation.bon import aggregate_candidate_scores
    from ..evaluation.metrics import selection_curves

    k = config.num_candidates
    per_problem = {}
    for name, step_scores in scores.items():
        flat = aggregate_candidate_scores(step_scores, config.aggregation)
        per_problem[name] = [flat[i : i + k] for i in range(0, len(flat), k)]
    n_values = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n < k] + [k]
    curves = selection_curves(
        [[float(c.correct) for c in group] for group in test],
        [[c.answer_key for c in group] for group in test],
        per_problem,
        n_values=n_values,
        num_seeds=config.num_subset_draws,
        seed=seed,
    )
    return {
        "n_values": n_values,
        "aggregation": config.aggregation,
        "first_sample": sum(group[0].correct for group in test) / len(test),
        "curves": curves,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def _pct(value) -> str:
    return "n/a" if value is None or isinstance(value, str) or math.isnan(value) else f"{100 * value:.1f}"


def _method_names(eta: float) -> dict[str, str]:
    return {
        "majority": "majority vote",
        "bon_soft": "BoN, soft-label PRM (eta=0)",
        "bon_hard": "BoN, hard-label PRM (eta=inf)",
        "bon_er": f"BoN, ER-PRM (eta={eta:g})",
        "bon_oracle": "BoN, PRM on true step labels (control)",
        "bon_implicit": "BoN, implicit PRM",
        "bon_implicit_noref": "BoN, implicit PRM without reference",
        "weighted_majority_soft": "PRM-weighted vote, soft",
        "weighted_majority_hard": "PRM-weighted vote, hard",
        "weighted_majority_er": "PRM-weighted vote, ER",
        "pass@n": "pass@N (oracle)",
    }


def format_report(results: dict) -> str:
    """The printed report: the Best-of-N table, the step-level table and the GRPO table (markdown).

    Args:
        results (`dict`):
            The results of [`run_quickstart`] (the content of `results.json`).

    Returns:
        `str`: The tables.
    """
    from ..evaluation.report import format_table

    bon, cfg, data = results["best_of_n"], results["config"], results["data"]
    names = _method_names(float(cfg["eta"]))
    curves = {"first sample": {n: {"mean": bon["first_sample"], "std": 0.0} for n in bon["n_values"]}}
    curves.update({label: bon["curves"][m] for m, label in names.items() if m in bon["curves"]})
    lines = [
        f"Best-of-N accuracy (%) on {data['num_test_problems']} held-out problems, {cfg['num_candidates']} candidates "
        f"each (mean ± std over {cfg['num_subset_draws']} random subsets per N; PRM score = {cfg['aggregation']} over "
        f"steps). PRMs trained on {data['num_labelled_solutions']} solutions labelled with {data['num_rollouts']} "
        "rollouts.",
        "",
        format_table(curves, bon["n_values"]),
        "",
        "Step level against the checker's truth (%): MC labels of the training solutions; PRMs on the held-out "
        "candidates. F1 = ProcessBench F1 of the first step below the threshold; calibrated = threshold best on the "
        "training solutions.",
        "",
        "| labels / PRM | step accuracy @0.5 | F1 @0.5 | F1 calibrated (threshold) |",
        "|---|---:|---:|---:|",
    ]
    for kind, quality in results["mc_labels"].items():
        lines.append(f"| MC labels, {kind} | {_pct(quality['step_accuracy'])} | {_pct(quality['f1'])} | |")
    lines.append("| (PRMs, on held-out candidates:) | | | |")
    for name, f1 in results["step_f1"].items():
        at, cal = f1.get("at_0.5"), f1["calibrated"]
        accuracy = _pct(f1["step_accuracy"]) if "step_accuracy" in f1 else ""
        threshold = (
            "" if isinstance(cal["threshold"], str) or math.isnan(cal["threshold"]) else f" ({cal['threshold']:.3g})"
        )
        label = PRM_LABELS.get(name, name)
        lines.append(f"| {label} | {accuracy} | {_pct(at['f1']) if at else ''} | {_pct(cal['f1'])}{threshold} |")
    grpo = results["grpo"]
    lines += [
        "",
        f"GRPO from the same start, {grpo['steps']} steps per run, the same {len(grpo['run_seeds'])} seed(s) for both: "
        f"accuracy (%) on the held-out problems ({grpo['start']['samples_per_problem']} samples each), mean ± std over "
        "runs.",
        "",
        "| policy | accuracy | pass@k |",
        "|---|---:|---:|",
    ]
    for name, label in (("start", "start (the tiny policy)"), ("grpo", "GRPO"), ("prime", "GRPO + PRIME")):
        cells = [_pct(grpo[name][key]) for key in ("accuracy", "pass_at_k")]
        if name != "start" and len(grpo["run_seeds"]) > 1:
            cells = [f"{c} ± {_pct(grpo[name][key + '_std'])}" for c, key in zip(cells, ("accuracy", "pass_at_k"))]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _plot_grpo(grpo: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, label), color in zip((("grpo", "GRPO"), ("prime", "GRPO + PRIME")), ("tab:blue", "tab:orange")):
        # Mean over runs, then a trailing 10-step average: one step's 16 completions are too few to read.
        rewards = np.array([[h.get(REWARD_KEY, np.nan) for h in run["log"]] for run in grpo[name]["runs"]])
        per_step = np.nanmean(rewards, axis=0)
        window = min(10, len(per_step))
        smooth = np.convolve(per_step, np.ones(window) / window, mode="valid")
        steps = np.arange(window, len(per_step) + 1)
        ax.plot(steps, 100 * smooth, color=color, label=f"{label}: train reward ({window}-step average)")
        ax.axhline(100 * grpo[name]["accuracy"], linestyle="--", color=color, label=f"{label}: held-out after")
    ax.axhline(100 * grpo["start"]["accuracy"], linestyle=":", color="gray", label="start: held-out")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("GRPO vs GRPO + PRIME from the same start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _environment() -> dict:
    import transformers
    import trl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": _load_average(),
    }


def _json_safe(value):
    """Infinite and NaN floats as strings, keys as strings: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------------


def _policy(config: QuickstartConfig):
    """Train (or reuse) the tiny policy; return its path, the model, the tokenizer and what to report about it."""
    from .policy import PolicyConfig, load_policy, train_policy

    folder = config.policy_dir or default_policy_dir()
    path = train_policy(folder, PolicyConfig(max_steps=config.policy_steps, seed=config.seed))
    model, tokenizer = load_policy(path)
    record = json.loads((Path(path) / "policy_config.json").read_text())
    _say(f"    {path} ({record['num_parameters']} parameters)")
    keys = ("policy_config", "train_seconds", "num_parameters")
    return path, model, tokenizer, {"path": path, **{k: record.get(k) for k in keys}}


def _labels(config, seeds, policy_path, model, tokenizer, train_problems, out: Path):
    """Sample the training solutions and label them once; keep the labelled ones and measure their labels."""
    from ..labeling.labeler import labels_from_outcomes

    solutions = [
        c
        for group in _sample(
            model, tokenizer, train_problems, config.samples_per_problem, seeds["train_sampling"], config
        )
        for c in group
    ]
    labelled, summary = _label(config, policy_path, model, tokenizer, train_problems, solutions, out)
    ok = [i for i, status in enumerate(labelled["status"]) if status == "ok"]
    train, outcomes = [solutions[i] for i in ok], [labelled[i]["step_outcomes"] for i in ok]
    truth, first_errors = [c.step_truth for c in train], [c.first_error for c in train]
    quality = {
        kind: label_quality([labels_from_outcomes(o, eta) for o in outcomes], truth, first_errors)
        for kind, eta in _etas(config).items()
    }
    data = {
        "num_train_problems": len(train_problems),
        "num_train_solutions": len(solutions),
        "train_answer_accuracy": sum(c.correct for c in solutions) / len(solutions),
        "num_labelled_solutions": len(ok),
        "label_status_counts": summary["status_counts"],
        "num_rollouts": summary["num_rollouts"],
    }
    accuracies = ", ".join(f"{k} {_pct(v['step_accuracy'])}%" for k, v in quality.items())
    _say(
        f"    {len(ok)} of {len(solutions)} solutions labelled ({_pct(data['train_answer_accuracy'])}% right answers), "
        f"{summary['num_rollouts']} rollouts; step accuracy of the labels: {accuracies}"
    )
    return train, outcomes, quality, data


def _etas(config: QuickstartConfig) -> dict[str, float]:
    return {kind: config.eta if eta is None else eta for kind, eta in LABEL_KINDS.items()}


def _token_prms(config, policy_path, tokenizer, prompts, train, outcomes, out: Path, stats: dict) -> dict:
    """Train the soft / hard / ER PRMs on the stored outcomes, and the control PRM on the true step labels."""
    from datasets import Dataset

    from ..evaluation.scorers import TokenClassificationScorer

    rows = [{"prompt": p, "completions": c.steps, "step_outcomes": o} for p, c, o in zip(prompts, train, outcomes)]
    datasets = {kind: (eta, Dataset.from_list(rows)) for kind, eta in _etas(config).items()}
    truth = [
        {"prompt": p, "completions": c.steps, "labels": [float(t) for t in c.step_truth]}
        for p, c in zip(prompts, train)
    ]
    datasets["oracle"] = (math.nan, Dataset.from_list(truth))
    scorers = {}
    for kind, (eta, dataset) in datasets.items():
        _say(f"    {kind} labels" + (f" (eta={eta:g})" if kind != "oracle" else " (the checker's truth: a control)"))
        prm, stats[kind] = _train_token_prm(
            config, kind, 0.0 if kind == "oracle" else eta, policy_path, tokenizer, dataset, out
        )
        stats[kind]["eta"] = None if kind == "oracle" else eta
        scorers[kind] = TokenClassificationScorer(prm, tokenizer, step_separator=STEP_SEPARATOR, batch_size=32)
    return scorers


def _implicit_prms(config, policy_path, tokenizer, prompts, train, outcomes, out: Path, stats: dict) -> dict:
    """Train the implicit PRM on the outcome labels (last step) of the same solutions; score with and without reference."""
    from datasets import Dataset

    from ..evaluation.scorers import ImplicitPRMScorer

    rows = [
        {"prompt": p, "completion": StepFormat(STEP_SEPARATOR).join(c.steps), "label": o[-1][0]}
        for p, c, o in zip(prompts, train, outcomes)
    ]
    implicit, reference_free, stats["implicit"] = _train_implicit_prm(
        config, policy_path, tokenizer, Dataset.from_list(rows), out
    )
    return {"implicit": ImplicitPRMScorer(implicit), "implicit_noref": ImplicitPRMScorer(reference_free)}


def _evaluate(config, scorers: dict, test, test_prompts, train, train_prompts, seed: int) -> tuple[dict, dict]:
    """Score the held-out candidates (and, to calibrate thresholds, the training solutions) with every PRM."""
    flat = [c for group in test for c in group]
    scored = [i for i, c in enumerate(flat) if c.steps]
    first_errors, truth = [flat[i].first_error for i in scored], [flat[i].step_truth for i in scored]
    test_scores, f1 = {}, {}
    for name, scorer in scorers.items():
        _say(f"    scoring with the {name} PRM")
        test_scores[name] = scorer.score(test_prompts, [c.steps for c in flat])
        train_scores = scorer.score(train_prompts, [c.steps for c in train])
        mine = [test_scores[name][i] for i in scored]
        probabilities = name not in ("implicit", "implicit_noref")
        f1[name] = step_f1(mine, first_errors, train_scores, [c.first_error for c in train], probabilities)
        if probabilities:
            f1[name]["step_accuracy"] = label_quality(mine, truth, first_errors)["step_accuracy"]
    return _best_of_n(config, test, test_scores, seed), f1


def _grpo_comparison(config, seeds, policy_path, model, tokenizer, train_problems, test_problems, out: Path) -> dict:
    """GRPO and GRPO + PRIME from the same policy, seed and steps; held-out accuracy before and after."""
    from .task import build_problem_dataset

    dataset = build_problem_dataset(train_problems)
    run_seeds = [stage_seed(config.seed, f"grpo-{r}") for r in range(config.grpo_repeats)]
    grpo = {"steps": config.grpo_steps, "run_seeds": run_seeds}
    grpo["start"] = _policy_accuracy(model, tokenizer, test_problems, config, seeds["grpo_eval"])
    for name in ("grpo", "prime"):
        runs = []
        for r, seed in enumerate(run_seeds):
            _say(
                f"    {'GRPO + PRIME' if name == 'prime' else 'GRPO'}, run {r + 1}/{len(run_seeds)}, {config.grpo_steps} steps"
            )
            trained, grpo_tokenizer, log = _grpo(config, policy_path, dataset, name == "prime", seed, out)
            accuracy = _policy_accuracy(trained, grpo_tokenizer, test_problems, config, seeds["grpo_eval"])
            runs.append({**accuracy, "seed": seed, "log": log})
        grpo[name] = {key: float(np.mean([run[key] for run in runs])) for key in ("accuracy", "pass_at_k")} | {
            f"{key}_std": float(np.std([run[key] for run in runs])) for key in ("accuracy", "pass_at_k")
        }
        grpo[name]["runs"] = runs
    return grpo


def _write_reports(config: QuickstartConfig, results: dict, out: Path) -> None:
    results["table"] = format_report(results)
    results["files"] = {"results": str(out / "results.json"), "table": str(out / "table.md")}
    if config.plot:
        from ..evaluation.report import plot_curves

        curves = results["best_of_n"]["curves"]
        shown = {label: curves[m] for m, label in _method_names(config.eta).items() if "weighted" not in m}
        title = f"Best-of-N, arithmetic task, tiny policy ({config.aggregation} over steps)"
        results["files"]["bon_plot"] = plot_curves(shown, out / "bon_accuracy_vs_n.png", title=title)
        results["files"]["grpo_plot"] = _plot_grpo(results["grpo"], out / "grpo_vs_prime.png")
    (out / "table.md").write_text(results["table"] + "\n")


def run_quickstart(config: QuickstartConfig) -> dict:
    """Run the whole experiment and write its reports to `config.output_dir`.

    Args:
        config ([`QuickstartConfig`]):
            The settings.

    Returns:
        `dict`: The results, also written to `output_dir/results.json` (NaN and infinities as strings): `config`,
        `seeds`, `environment`, `policy`, `data`, `mc_labels`, `prms`, `best_of_n`, `step_f1`, `grpo`, `table`,
        `files`, `timings` and `total_wall_s`.
    """
    from .policy import format_prompt

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, timings = time.perf_counter(), {}
    names = ("problems", "train_sampling", "test_sampling", "rollouts", "prm", "implicit_prm", "subsets", "grpo")
    seeds = {"policy": config.seed, **{name: stage_seed(config.seed, name) for name in (*names, "grpo_eval")}}
    results = {"config": dataclasses.asdict(config), "seeds": seeds, "environment": _environment(), "prms": {}}
    _say(
        f"trl-erprm quickstart{' --fast (toy sizes: the numbers mean nothing)' if config.fast else ''}: seed "
        f"{config.seed}, output {out}, {torch.get_num_threads()} torch thread(s), load average "
        f"{results['environment']['load_average_start']}"
    )
    with _stage("policy", timings):
        policy_path, model, tokenizer, results["policy"] = _policy(config)
    with _stage("held-out and training problems", timings):
        train_problems = _distinct_problems(config.num_train_problems, seeds["problems"], set())
        exclude = {p.text for p in train_problems}
        test_problems = _distinct_problems(config.num_test_problems, seeds["problems"] + 1, exclude)
    with _stage("training solutions and their MC-rollout labels", timings):
        train, outcomes, results["mc_labels"], results["data"] = _labels(
            config, seeds, policy_path, model, tokenizer, train_problems, out
        )
    prompts = {p.text: format_prompt(tokenizer, p) for p in train_problems + test_problems}
    train_prompts = [prompts[train_problems[c.problem].text] for c in train]
    prm_args = (config, policy_path, tokenizer, train_prompts, train, outcomes, out, results["prms"])
    with _stage("PRMs on soft / hard / ER labels", timings):
        scorers = _token_prms(*prm_args)
    with _stage("implicit PRM", timings):
        scorers.update(_implicit_prms(*prm_args))
    with _stage("held-out candidates", timings):
        test = _sample(model, tokenizer, test_problems, config.num_candidates, seeds["test_sampling"], config)
        results["data"].update(
            num_test_problems=len(test_problems),
            num_test_candidates=sum(len(group) for group in test),
            num_test_candidates_without_steps=sum(not c.steps for group in test for c in group),
        )
    with _stage("scores, Best-of-N and step F1", timings):
        test_prompts = [prompts[test_problems[c.problem].text] for group in test for c in group]
        results["best_of_n"], results["step_f1"] = _evaluate(
            config, scorers, test, test_prompts, train, train_prompts, seeds["subsets"]
        )
    with _stage("GRPO vs GRPO + PRIME", timings):
        results["grpo"] = _grpo_comparison(
            config, seeds, policy_path, model, tokenizer, train_problems, test_problems, out
        )
    with _stage("report", timings):
        _write_reports(config, results, out)
    results["timings"] = timings
    results["total_wall_s"] = round(time.perf_counter() - started, 2)
    results["environment"]["load_average_end"] = _load_average()
    (out / "results.json").write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    _say("\n" + results["table"])
    _say(f"\nTotal {results['total_wall_s']:.0f} s. Results and plots in {out}/")
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-erprm quickstart",
        description="The ER-PRM experiment end to end, offline, on a CPU: sample solutions with a tiny policy, label "
        "them with MC rollouts, train soft / hard / ER-label PRMs and an implicit PRM, compare them by Best-of-N "
        "and step F1 against the ground truth, and run GRPO with and without PRIME.",
    )
    for f in dataclasses.fields(QuickstartConfig):
        help_text = f"{f.metadata['help']} Default: {f.default}" + (
            f" (--fast: {FAST_SETTINGS[f.name]})." if f.name in FAST_SETTINGS else "."
        )
        if f.type == "bool":
            parser.add_argument(
                f"--{f.name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str) if f.name != "eta" else str
            parser.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS, help=help_text)
    return parser


def quickstart_main(argv: list[str] | None = None) -> int:
    """Entry point of `trl-erprm quickstart`: parse the options, run [`run_quickstart`] with `num_threads` threads.

    Args:
        argv (`list[str]`, *optional*):
            Arguments (without the program name); defaults to `sys.argv[1:]`.

    Returns:
        `int`: The exit status (0).

    Raises:
        [`~trl_erprm.script_utils.UsageError`]: An option value the settings reject (e.g. `--eta -1`).
    """
    from ..script_utils import UsageError

    options = vars(_parser().parse_args(sys.argv[1:] if argv is None else argv))
    try:
        config = quickstart_config(**options)
    except ValueError as error:  # a value the settings reject: a usage error (exit status 2), one line
        raise UsageError(str(error)) from error
    previous = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        run_quickstart(config)
    finally:
        torch.set_num_threads(previous)
    return 0


if __name__ == "__main__":
    sys.exit(quickstart_main())
