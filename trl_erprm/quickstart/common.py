"""What the quickstart's stages share: checked candidates, sampling, stage timing, trainer settings, JSON output."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time
from dataclasses import dataclass

import torch


__all__ = [
    "STEP_SEPARATOR",
    "Candidate",
    "check_candidates",
    "environment",
    "load_average",
    "sample_candidates",
    "stage_seed",
]

#: The text between two steps of the task's solutions.
STEP_SEPARATOR = "\n\n"


def say(text: str) -> None:
    """Print a progress line at once (the stages' own bars are tqdm's)."""
    print(text, flush=True)


@contextlib.contextmanager
def stage(name: str, number: int, total: int, timings: dict):
    """Announce stage `number` of `total`, then store its wall and CPU seconds (of this process) in `timings`."""
    say(f"\n==> [{number}/{total}] {name}")
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    timings[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    say(f"    done in {timings[name]['wall_s']:.1f} s (cpu {timings[name]['cpu_s']:.1f} s)")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' info and warning messages (such as the expected "newly initialised head" report)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def compact_progress(trainer, keys: tuple[str, ...]) -> None:
    """Keep the trainer's progress bar, showing `keys` on it instead of printing every log dict."""
    from transformers.trainer_callback import ProgressCallback

    class _Progress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: v for k, v in (logs or {}).items() if k in keys}
            if self.training_bar is not None and shown:
                self.training_bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_Progress())


def trainer_args(output_dir: str, seed: int) -> dict:
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


@dataclass
class Candidate:
    """A sampled solution with the checker's verdict.

    Args:
        problem (`int`):
            Index of its problem.
        text (`str`):
            The solution as sampled.
        steps (`list[str]`):
            Its steps (none for an empty solution).
        correct (`bool`):
            Whether its final answer is right.
        answer_key (`str`, *optional*):
            Its final answer (the voting key), `None` without one.
        first_error (`int`):
            Its first wrong step, `-1` if none.
        step_truth (`list[bool]`):
            The true process label of each step.
    """

    problem: int
    text: str
    steps: list[str]
    correct: bool
    answer_key: str | None
    first_error: int
    step_truth: list[bool]


def check_candidates(problems, solutions) -> list[list[Candidate]]:
    """Check the solutions of each problem with the task's checker.

    Args:
        problems (`list[Problem]`):
            The problems.
        solutions (`list[list[str]]`):
            Per problem, its sampled solutions.

    Returns:
        `list[list[Candidate]]`: Per problem, its checked candidates.
    """
    from .checker import check_solution

    out = []
    for p, (problem, group) in enumerate(zip(problems, solutions)):
        row = []
        for text in group:
            check = check_solution(problem, text, STEP_SEPARATOR)
            key = None if check.predicted_answer is None else str(check.predicted_answer)
            steps = [s for s in check.steps if s]  # an empty solution has no step
            row.append(Candidate(p, text, steps, check.answer_correct, key, check.first_error, check.step_labels))
        out.append(row)
    return out


def sample_candidates(model, tokenizer, problems, n: int, seed: int, max_new_tokens: int) -> list[list[Candidate]]:
    """Sample `n` solutions per problem at temperature 1 (seeded, with a progress bar) and check them.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The policy.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        problems (`list[Problem]`):
            The problems.
        n (`int`):
            Solutions per problem.
        seed (`int`):
            Seed of the sampling.
        max_new_tokens (`int`):
            Longest solution, in tokens.

    Returns:
        `list[list[Candidate]]`: Per problem, its checked candidates.
    """
    from .policy import sample_solutions

    texts = sample_solutions(
        model, problems, n=n, seed=seed, tokenizer=tokenizer, max_new_tokens=max_new_tokens, batch_size=128,
        show_progress=True,
    )  # fmt: skip
    return check_candidates(problems, texts)


def pct(value) -> str:
    """A fraction as a percentage with one decimal, `"n/a"` for a missing value."""
    return "n/a" if value is None or isinstance(value, str) or math.isnan(value) else f"{100 * value:.1f}"


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def environment() -> dict:
    """Versions, CPU count, torch threads and the load average at the start."""
    import transformers
    import trl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
    }


def json_safe(value):
    """Infinite and NaN floats as strings, keys as strings: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
