r"""The embedded synthetic reasoning task: multi-step arithmetic word problems whose every step can be checked.

A problem states a starting amount and a list of operations, one per sentence:

    Ann has 7 apples. She buys 5 more. She gives away 3. She gets 3 times as many. How many apples does Ann have now?

Its gold solution does one operation per step, steps joined by a separator (`"\n\n"` by default), and the last step
ends with the answer:

    She buys 5 more: 7 + 5 = 12.

    She gives away 3: 12 - 3 = 9.

    She gets 3 times as many: 9 * 3 = 27. The answer is \boxed{27}.

[`check_solution`] reads a (model-written) solution with plain string parsing (never `eval`) and decides for EACH step
whether it is correct given the problem: step `k` must state the `k`-th operation applied to the true amount before
it, as `a op b = c` with the right result (`a` and `b` may be swapped for `+` and `*`). The answer may close the last
computing step or stand alone in one more step. So the first wrong step, the ground-truth step labels and the final
answer's correctness are all known, and labels or PRMs can be scored against the truth.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from datasets import Dataset

from ..steps import StepFormat


# ---------------------------------------------------------------------------------------------------------------------
# Operations: a small registry of plain functions, chosen by name
# ---------------------------------------------------------------------------------------------------------------------


def _add(a: int, b: int) -> int | None:
    return a + b


def _sub(a: int, b: int) -> int | None:
    return a - b


def _mul(a: int, b: int) -> int | None:
    return a * b


def _div(a: int, b: int) -> int | None:
    return a // b if b != 0 and a % b == 0 else None


@dataclass(frozen=True)
class Operation:
    """One kind of step: its symbol in equations, its arithmetic and the phrases that state it in a problem.

    Args:
        symbol (`str`):
            Symbol written in the step's equation (`"+"`, `"-"`, `"*"` or `"/"`).
        apply (`Callable[[int, int], int | None]`):
            Result of `a symbol b`, or `None` when it is not a whole number (division).
        phrases (`tuple[str, ...]`):
            Verb phrases holding `{b}` for the operand, e.g. `"buys {b} more"`.
        commutative (`bool`):
            Whether `b symbol a` is accepted for `a symbol b` in a solution.
    """

    symbol: str
    apply: Callable[[int, int], int | None]
    phrases: tuple[str, ...]
    commutative: bool


#: The operations a problem may use, by name.
OPERATIONS: dict[str, Operation] = {
    "add": Operation("+", _add, ("buys {b} more", "finds {b} more", "gets {b} more"), commutative=True),
    "sub": Operation("-", _sub, ("gives away {b}", "loses {b}", "sells {b}"), commutative=False),
    "mul": Operation("*", _mul, ("gets {b} times as many",), commutative=True),
    "div": Operation("/", _div, ("keeps one of {b} equal shares",), commutative=False),
}

NAMES = (("Ann", "She"), ("Bob", "He"), ("Cara", "She"), ("Dan", "He"), ("Eve", "She"), ("Finn", "He"))
ITEMS = ("apples", "books", "coins", "eggs", "pens", "stamps", "marbles", "cards")
ANSWER_TEMPLATE = "The answer is \\boxed{{{answer}}}."

# Sentence patterns of the problem text, and the equation / answer patterns of a solution step.
_START_RE = re.compile(r"^\s*(\w+) has (\d+) (\w+)\.")
_OP_SENTENCE_RE = re.compile(r"(?:She|He) ([^.?]+)\.")
_QUESTION_RE = re.compile(r"How many (\w+) does (\w+) have now\?\s*$")
_EQUATION_RE = re.compile(r"(\d+)\s*([-+*/×x÷])\s*(\d+)\s*=\s*(-?\d+)")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_MAX_DIGITS = 18
_PHRASE_RES = [
    (name, re.compile("^" + re.escape(phrase).replace(re.escape("{b}"), r"(\d+)") + "$"))
    for name, op in OPERATIONS.items()
    for phrase in op.phrases
]


# ---------------------------------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """Difficulty of the generated problems.

    Args:
        min_steps (`int`, *optional*, defaults to `2`):
            Fewest operations in a problem (one solution step each).
        max_steps (`int`, *optional*, defaults to `3`):
            Most operations in a problem.
        min_start (`int`, *optional*, defaults to `2`):
            Smallest starting amount.
        max_start (`int`, *optional*, defaults to `20`):
            Largest starting amount.
        max_operand (`int`, *optional*, defaults to `9`):
            Largest operand of an addition or a subtraction.
        max_factor (`int`, *optional*, defaults to `3`):
            Largest operand of a multiplication or a division (the smallest is 2).
        max_value (`int`, *optional*, defaults to `60`):
            Largest amount allowed at any step; every amount stays a whole number of at least 1.
        operations (`tuple[str, ...]`, *optional*, defaults to `("add", "sub", "mul", "div")`):
            Names of the operations to draw from (keys of [`OPERATIONS`]).
    """

    min_steps: int = 2
    max_steps: int = 3
    min_start: int = 2
    max_start: int = 20
    max_operand: int = 9
    max_factor: int = 3
    max_value: int = 60
    operations: tuple[str, ...] = field(default_factory=lambda: ("add", "sub", "mul", "div"))

    def __post_init__(self):
        self.operations = tuple(self.operations)
        unknown = [name for name in self.operations if name not in OPERATIONS]
        if unknown or not self.operations:
            raise ValueError(
                f"TaskConfig.operations={self.operations!r}: use a non-empty subset of {list(OPERATIONS)}."
            )
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"TaskConfig needs 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}.")
        if not 1 <= self.min_start <= self.max_start <= self.max_value:
            raise ValueError(
                f"TaskConfig needs 1 <= min_start <= max_start <= max_value, got {self.min_start}, "
                f"{self.max_start}, {self.max_value}."
            )
        if self.max_operand < 1 or self.max_factor < 2:
            raise ValueError(
                f"TaskConfig needs max_operand >= 1 and max_factor >= 2, got {self.max_operand}, {self.max_factor}."
            )


@dataclass(frozen=True)
class ProblemStep:
    """One operation of a problem.

    Args:
        operation (`str`):
            Name of the operation (a key of [`OPERATIONS`]).
        operand (`int`):
            Its second operand `b`.
        phrase (`str`):
            The verb phrase stating it, operand filled in, e.g. `"buys 5 more"`.
    """

    operation: str
    operand: int
    phrase: str


@dataclass(frozen=True)
class Problem:
    """A word problem with its structure, from which its gold solution and every step's truth follow.

    Args:
        name (`str`):
            The person of the problem.
        pronoun (`str`):
            `"She"` or `"He"`, starting every operation sentence.
        item (`str`):
            What is counted (plural noun).
        start (`int`):
            Starting amount.
        steps (`tuple[ProblemStep, ...]`):
            The operations, in order.
    """

    name: str
    pronoun: str
    item: str
    start: int
    steps: tuple[ProblemStep, ...]

    @property
    def text(self) -> str:
        """`str`: The problem statement."""
        sentences = [f"{self.name} has {self.start} {self.item}."]
        sentences += [f"{self.pronoun} {step.phrase}." for step in self.steps]
        sentences.append(f"How many {self.item} does {self.name} have now?")
        return " ".join(sentences)

    @property
    def values(self) -> list[int]:
        """`list[int]`: The true amount before the first step and after each step (length `len(steps) + 1`)."""
        values = [self.start]
        for step in self.steps:
            values.append(OPERATIONS[step.operation].apply(values[-1], step.operand))
        return values

    @property
    def answer(self) -> int:
        """`int`: The true final amount."""
        return self.values[-1]

    def solution_steps(self) -> list[str]:
        """Return the gold solution as a list of steps (one operation each, the answer closing the last one).

        Returns:
            `list[str]`: The steps, without separators.
        """
        values = self.values
        steps = []
        for k, step in enumerate(self.steps):
            symbol = OPERATIONS[step.operation].symbol
            steps.append(f"{self.pronoun} {step.phrase}: {values[k]} {symbol} {step.operand} = {values[k + 1]}.")
        steps[-1] += " " + ANSWER_TEMPLATE.format(answer=self.answer)
        return steps

    def solution(self, separator: str = "\n\n") -> str:
        """Return the gold solution text.

        Args:
            separator (`str`, *optional*, defaults to `"\\n\\n"`):
                Text between two steps.

        Returns:
            `str`: The steps joined by `separator`.
        """
        return StepFormat(separator).join(self.solution_steps())


def _draw_step(rng: random.Random, value: int, config: TaskConfig) -> ProblemStep | None:
    """Draw one operation that keeps the amount a whole number in `[1, config.max_value]`, or `None` if none can."""
    choices = []
    for name in config.operations:
        if name in ("add", "sub"):
            candidates = range(1, config.max_operand + 1)
        else:
            candidates = range(2, config.max_factor + 1)
        operands = [
            b for b in candidates if (r := OPERATIONS[name].apply(value, b)) is not None and 1 <= r <= config.max_value
        ]
        if operands:
            choices.append((name, operands))
    if not choices:
        return None
    name, operands = rng.choice(choices)
    operand = rng.choice(operands)
    phrase = rng.choice(OPERATIONS[name].phrases).format(b=operand)
    return ProblemStep(name, operand, phrase)


def generate_problems(num_problems: int, config: TaskConfig | None = None, seed: int = 0) -> list[Problem]:
    """Generate word problems, deterministically from `seed`.

    Each problem draws its number of steps, its start amount, then each operation uniformly among those that keep the
    amount a whole number in `[1, config.max_value]`, and each operand uniformly among the allowed ones.

    Args:
        num_problems (`int`):
            Number of problems.
        config ([`TaskConfig`], *optional*):
            Difficulty. Defaults to `TaskConfig()`.
        seed (`int`, *optional*, defaults to `0`):
            Seed; the same seed and config always give the same problems.

    Returns:
        `list[Problem]`: The problems.
    """
    config = config if config is not None else TaskConfig()
    rng = random.Random(seed)
    problems, attempts = [], 0
    while len(problems) < num_problems:
        attempts += 1
        if attempts > 1000 + 100 * num_problems:
            raise ValueError(
                f"TaskConfig {config} rarely allows {config.min_steps} operations in a row; widen max_value, "
                "max_operand, max_factor or operations."
            )
        name, pronoun = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        num_steps = rng.randint(config.min_steps, config.max_steps)
        value = rng.randint(config.min_start, config.max_start)
        start, steps = value, []
        for _ in range(num_steps):
            step = _draw_step(rng, value, config)
            if step is None:
                break
            steps.append(step)
            value = OPERATIONS[step.operation].apply(value, step.operand)
        if len(steps) == num_steps:
            problems.append(Problem(name, pronoun, item, start, tuple(steps)))
    return problems


def parse_problem(text: str) -> Problem:
    """Rebuild a [`Problem`] from its statement (as written by [`Problem.text`]).

    Args:
        text (`str`):
            The problem statement.

    Returns:
        [`Problem`]: The problem, with its structure.

    Raises:
        `ValueError`: If the text is not a problem of this task.
    """
    start_match, question_match = _START_RE.match(text), _QUESTION_RE.search(text)
    if start_match is None or question_match is None:
        raise ValueError(
            f"Not a problem of the synthetic task: {text[:80]!r}. It must read '<Name> has <N> <items>. ... How many "
            "<items> does <Name> have now?' as written by generate_problems."
        )
    name, start, item = start_match.group(1), int(start_match.group(2)), start_match.group(3)
    body = text[start_match.end() : question_match.start()]
    pronoun = "He" if body.strip().startswith("He ") else "She"
    steps = []
    for sentence in _OP_SENTENCE_RE.findall(body):
        for op_name, pattern in _PHRASE_RES:
            if match := pattern.match(sentence.strip()):
                steps.append(ProblemStep(op_name, int(match.group(1)), sentence.strip()))
                break
        else:
            raise ValueError(f"Unknown operation sentence {sentence!r} in problem {text[:80]!r}.")
    if not steps:
        raise ValueError(f"Problem {text[:80]!r} has no operation sentence.")
    return Problem(name, pronoun, item, start, tuple(steps))


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


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------


def build_problem_dataset(problems: Sequence[Problem], separator: str = "\n\n") -> Dataset:
    """Problems as a dataset for sampling, GRPO and math-verify grading.

    Columns: `problem` (`str`), `prompt` (conversational: one user message holding the problem), `answer` (`str`,
    the true answer as digits, e.g. `"27"`, which math-verify parses like `"\\boxed{27}"`), `solution` (`str`, the
    gold solution).

    Args:
        problems (`Sequence[Problem]`):
            The problems.
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text between two steps of the gold solutions.

    Returns:
        [`~datasets.Dataset`]: One row per problem.
    """
    return Dataset.from_list(
        [
            {
                "problem": p.text,
                "prompt": [{"role": "user", "content": p.text}],
                "answer": str(p.answer),
                "solution": p.solution(separator),
            }
            for p in problems
        ]
    )


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


def task_corpus(num_problems: int = 2000, config: TaskConfig | None = None, seed: int = 0) -> list[str]:
    """Problems followed by their gold solutions, as text lines to train a tokenizer on.

    Args:
        num_problems (`int`, *optional*, defaults to `2000`):
            Number of problems.
        config ([`TaskConfig`], *optional*):
            Difficulty. Defaults to `TaskConfig()`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the problems.

    Returns:
        `list[str]`: One `"<problem>\\n\\n<solution>"` text per problem.
    """
    return [f"{p.text}\n\n{p.solution()}" for p in generate_problems(num_problems, config, seed)]
