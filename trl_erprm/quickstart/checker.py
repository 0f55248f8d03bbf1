r"""The checker of the quickstart's task: the truth of every step of a (model-written) solution.

[`check_solution`] reads a solution with plain string parsing (never `eval`: model output is untrusted) and decides
for EACH step whether it is correct given the problem: step `k` must state the `k`-th operation applied to the true
amount before it, as `a op b = c` with the right result (`a` and `b` may be swapped for `+` and `*`). The answer may
close the last computing step or stand alone in one more step. So the first wrong step, the ground-truth step labels
and the final answer's correctness are all known, and labels or PRMs can be scored against the truth. The checker
always uses the problem's own operation: a multiplicative step solved additively (the misconception the quickstart's
demonstrations teach, [`~trl_erprm.quickstart.task.demonstration_steps`]) is a `"wrong_operation"`.

[`build_processbench_dataset`] and [`build_stepwise_dataset`] turn checked solutions into the library's evaluation and
training formats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from ..steps import StepFormat
from .task import OPERATIONS, Problem, parse_problem


# Equation and answer patterns of a solution step.
_EQUATION_RE = re.compile(r"(\d+)\s*([-+*/×x÷])\s*(\d+)\s*=\s*(-?\d+)")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_MAX_DIGITS = 18

# ---------------------------------------------------------------------------------------------------------------------
# Checking solutions
# ---------------------------------------------------------------------------------------------------------------------

#: Kinds of step errors reported by [`check_solution`], in the order they are tested.
STEP_ERRORS = (
    "extra_step",  # a step after the answer, or an equation after all operations are done
    "no_equation",  # neither an equation nor an answer (garbage, narration)
    "multiple_equations",  # more than one `a op b = c` in one step
    "wrong_operation",  # the operator is not the one of this step
    "wrong_operand",  # the operands are not (true amount before the step, the problem's operand)
    "arithmetic",  # the operands are right but the result is not
    "early_answer",  # an answer before all operations are done
    "wrong_answer",  # an answer that is not the true final amount (or not a number)
    "missing_answer",  # the solution ends without an answer
)


@dataclass
class SolutionCheck:
    """Verdict of [`check_solution`] on one solution.

    Args:
        steps (`list[str]`):
            The solution's steps (split on the separator, stripped, empty pieces dropped). A solution with no text is
            one empty step.
        step_errors (`list[str | None]`):
            Per step, `None` if the step is correct given the problem and the true amounts before it, else the kind
            of error (one of [`STEP_ERRORS`]).
        predicted_answer (`int`, *optional*):
            Integer in the last `\\boxed{}` of the solution, `None` if there is none or it is not an integer.
        answer (`int`):
            True answer of the problem.
    """

    steps: list[str]
    step_errors: list[str | None]
    predicted_answer: int | None
    answer: int

    @property
    def step_correct(self) -> list[bool]:
        """`list[bool]`: Whether each step, on its own, is correct."""
        return [error is None for error in self.step_errors]

    @property
    def first_error(self) -> int:
        """`int`: Index of the first wrong step, `-1` if every step is correct (the ProcessBench label)."""
        return next((k for k, error in enumerate(self.step_errors) if error is not None), -1)

    @property
    def step_labels(self) -> list[bool]:
        """`list[bool]`: Ground-truth process labels: `True` for the steps before the first error, `False` from it on."""
        first = self.first_error
        return [first == -1 or k < first for k in range(len(self.steps))]

    @property
    def answer_correct(self) -> bool:
        """`bool`: Whether the final answer equals the true answer."""
        return self.predicted_answer == self.answer


def _to_int(text: str) -> int | None:
    text = text.strip()
    if not re.fullmatch(rf"-?\d{{1,{_MAX_DIGITS}}}", text):
        return None
    return int(text)


def _equation_error(equation: tuple[str, str, str, str], problem: Problem, k: int) -> str | None:
    """Error kind of the equation `(a, symbol, b, c)` written at step `k`, `None` if it is right."""
    step = problem.steps[k]
    operation = OPERATIONS[step.operation]
    a, b, c = (_to_int(x) for x in (equation[0], equation[2], equation[3]))
    symbol = {"×": "*", "x": "*", "÷": "/"}.get(equation[1], equation[1])
    if symbol != operation.symbol:
        return "wrong_operation"
    expected = (problem.values[k], step.operand)
    if (a, b) != expected and not (operation.commutative and (b, a) == expected):
        return "wrong_operand"
    if c is None or c != operation.apply(*expected):
        return "arithmetic"
    return None


def _step_error(text: str, k: int, problem: Problem, answered: bool, is_last: bool) -> str | None:
    """Error kind of step `k` (see [`STEP_ERRORS`]); `answered` says whether an earlier step gave an answer."""
    num_ops = len(problem.steps)
    equations = _EQUATION_RE.findall(text)
    boxes = _BOXED_RE.findall(text)
    if answered or (equations and k >= num_ops) or (not equations and boxes and k > num_ops):
        return "extra_step"
    if not equations and not boxes:
        return "no_equation"
    if len(equations) > 1:
        return "multiple_equations"
    if equations and (error := _equation_error(equations[0], problem, k)):
        return error
    if boxes:
        if (equations and k != num_ops - 1) or (not equations and k != num_ops):
            return "early_answer"
        if len(boxes) > 1 or _to_int(boxes[0]) != problem.answer:
            return "wrong_answer"
    elif is_last:
        return "missing_answer"
    return None


def check_solution(problem: Problem | str, solution: str, separator: str = "\n\n") -> SolutionCheck:
    """Check every step of a solution against a problem, by string parsing only (the text is never evaluated).

    Step `k` is correct when it writes one equation `a op b = c` for the problem's `k`-th operation, with `a` the
    true amount before it, `b` the problem's operand (swapped allowed for `+` and `*`) and `c` the right result. The
    answer `\\boxed{N}` must close the last computing step or be alone in the next step, hold the true answer, and
    end the solution. Later steps are judged against the true amounts, so an error carried forward is wrong again.

    Args:
        problem ([`Problem`] or `str`):
            The problem, or its statement (parsed with [`parse_problem`]).
        solution (`str`):
            The solution text, untrusted (e.g. sampled from a model).
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text between two steps.

    Returns:
        [`SolutionCheck`]: Per-step errors, first wrong step, predicted and true answers.
    """
    if isinstance(problem, str):
        problem = parse_problem(problem)
    if not isinstance(solution, str):
        raise TypeError(f"solution must be a str, got {type(solution).__name__}.")
    steps = StepFormat(separator).split(solution) or [""]
    errors, answered = [], False
    for k, text in enumerate(steps):
        errors.append(_step_error(text, k, problem, answered, is_last=k == len(steps) - 1))
        answered = answered or bool(_BOXED_RE.search(text))
    boxes = _BOXED_RE.findall(solution)
    predicted = _to_int(boxes[-1]) if boxes else None
    return SolutionCheck(steps=steps, step_errors=errors, predicted_answer=predicted, answer=problem.answer)


def _checked_rows(problems: Sequence[Problem], solutions: Sequence[Sequence[str]], separator: str):
    if len(problems) != len(solutions):
        raise ValueError(
            f"Got {len(problems)} problems but {len(solutions)} lists of solutions: pass one list of solutions per "
            "problem (e.g. the output of sample_solutions)."
        )
    for i, (problem, group) in enumerate(zip(problems, solutions)):
        if isinstance(group, str):
            raise TypeError(f"solutions[{i}] is a str: pass a list of solutions per problem, e.g. [[s1, s2], ...].")
        for j, solution in enumerate(group):
            yield i, j, problem, check_solution(problem, solution, separator)


def build_processbench_dataset(
    problems: Sequence[Problem], solutions: Sequence[Sequence[str]], separator: str = "\n\n"
) -> Dataset:
    """ProcessBench-style items with the true index of the first wrong step.

    Columns: `id` (`str`, `"<problem>-<sample>"`), `problem` (`str`), `steps` (`list[str]`), `label` (`int`, first
    wrong step, `-1` if none), `final_answer_correct` (`bool`), `answer` (`str`).

    Args:
        problems (`Sequence[Problem]`):
            The problems.
        solutions (`Sequence[Sequence[str]]`):
            For each problem, its solutions (e.g. from [`~trl_erprm.quickstart.sample_solutions`]).
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text between two steps.

    Returns:
        [`~datasets.Dataset`]: One row per solution.
    """
    rows = [
        {
            "id": f"{i}-{j}",
            "problem": problem.text,
            "steps": check.steps,
            "label": check.first_error,
            "final_answer_correct": check.answer_correct,
            "answer": str(problem.answer),
        }
        for i, j, problem, check in _checked_rows(problems, solutions, separator)
    ]
    return Dataset.from_list(rows)


def build_stepwise_dataset(
    problems: Sequence[Problem], solutions: Sequence[Sequence[str]], separator: str = "\n\n"
) -> Dataset:
    """Stepwise-supervision rows (TRL's format) with ground-truth step labels.

    Columns: `prompt` (`str`, the problem), `completions` (`list[str]`, the steps), `labels` (`list[bool]`, `True`
    before the first wrong step and `False` from it on), `first_error` (`int`), `final_answer_correct` (`bool`),
    `answer` (`str`).

    Args:
        problems (`Sequence[Problem]`):
            The problems.
        solutions (`Sequence[Sequence[str]]`):
            For each problem, its solutions.
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text between two steps.

    Returns:
        [`~datasets.Dataset`]: One row per solution.
    """
    rows = [
        {
            "prompt": problem.text,
            "completions": check.steps,
            "labels": check.step_labels,
            "first_error": check.first_error,
            "final_answer_correct": check.answer_correct,
            "answer": str(problem.answer),
        }
        for _, _, problem, check in _checked_rows(problems, solutions, separator)
    ]
    return Dataset.from_list(rows)
