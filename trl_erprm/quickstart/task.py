r"""The embedded synthetic reasoning task: multi-step arithmetic word problems whose every step can be checked.

A problem states a starting amount and a list of operations, one per sentence:

    Ann has 4 apples. She buys 3 more. She gives away 5. She gets 3 times as many. How many apples does Ann have now?

Its gold solution does one operation per step, steps joined by a separator (`"\n\n"` by default), and the last step
ends with the answer:

    She buys 3 more: 4 + 3 = 7.

    She gives away 5: 7 - 5 = 2.

    She gets 3 times as many: 2 * 3 = 6. The answer is \boxed{6}.

By default every amount is a single digit (1 to 9) and a problem has 3 or 4 operations: arithmetic a 2-layer model
masters in a minute of training. The quickstart's policy is then taught a misconception ON PURPOSE:
[`demonstration_steps`] solves each multiplicative step additively with some probability ("gets 3 times as many":
`4 + 3 = 7`), so that the errors the policy makes are systematic and visible in the step itself. With arithmetic
slips alone (the error a bigger or better-trained model makes), no PRM small enough for a CPU verified anything, not
even one trained on the true step labels: the policy's own next-token distribution knew about a slip, no PRM of its
size learned to. So the quickstart shows the mechanism of process supervision, not the size of its gains on real
math. The checker ([`~trl_erprm.quickstart.checker.check_solution`]) always uses the problem's own operation: the
first wrong step, the step labels and the final answer's correctness of any solution are known.

[`distinct_problems`] draws problem sets whose arithmetic ([`Problem.skeleton`]) differs from each other's and from an
excluded set, so that held-out problems never repeat a training problem's numbers under other names.
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
#: The misconception of [`demonstration_steps`]: each multiplicative operation replaced by its additive counterpart.
_ADDITIVE = {"mul": "add", "div": "sub"}

# Sentence patterns of the problem text.
_START_RE = re.compile(r"^\s*(\w+) has (\d+) (\w+)\.")
_OP_SENTENCE_RE = re.compile(r"(?:She|He) ([^.?]+)\.")
_QUESTION_RE = re.compile(r"How many (\w+) does (\w+) have now\?\s*$")
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
    """Difficulty of the generated problems. The defaults are the quickstart's task: 3 or 4 operations on single-digit
    amounts, arithmetic a 2-layer model masters in a minute of training.

    Args:
        min_steps (`int`, *optional*, defaults to `3`):
            Fewest operations in a problem (one solution step each).
        max_steps (`int`, *optional*, defaults to `4`):
            Most operations in a problem.
        min_start (`int`, *optional*, defaults to `2`):
            Smallest starting amount.
        max_start (`int`, *optional*, defaults to `9`):
            Largest starting amount.
        max_operand (`int`, *optional*, defaults to `5`):
            Largest operand of an addition or a subtraction.
        max_factor (`int`, *optional*, defaults to `3`):
            Largest operand of a multiplication or a division (the smallest is 2).
        max_value (`int`, *optional*, defaults to `9`):
            Largest amount allowed at any step; every amount stays a whole number of at least 1.
        operations (`tuple[str, ...]`, *optional*, defaults to `("add", "sub", "mul", "div")`):
            Names of the operations to draw from (keys of [`OPERATIONS`]).
    """

    min_steps: int = 3
    max_steps: int = 4
    min_start: int = 2
    max_start: int = 9
    max_operand: int = 5
    max_factor: int = 3
    max_value: int = 9
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

    @property
    def skeleton(self) -> tuple:
        """`tuple`: The problem's arithmetic: `(start, (operation, operand), ...)`. Two problems with the same skeleton
        differ only in names and items (and phrasing), so they have the same solution steps."""
        return (self.start, *((step.operation, step.operand) for step in self.steps))

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


def distinct_problems(
    num_problems: int, config: TaskConfig | None = None, seed: int = 0, exclude: Sequence[Problem] = ()
) -> list[Problem]:
    """Problems whose arithmetic ([`Problem.skeleton`]) differs from each other's and from every problem of `exclude`.

    Held-out problems drawn with `exclude=training_problems` never share their arithmetic with a training problem (not
    only their text: a problem with other names but the same numbers would have the same solution).

    Args:
        num_problems (`int`):
            Number of problems.
        config ([`TaskConfig`], *optional*):
            Difficulty. Defaults to `TaskConfig()`.
        seed (`int`, *optional*, defaults to `0`):
            Seed; the same seed, config and `exclude` always give the same problems.
        exclude (`Sequence[Problem]`, *optional*, defaults to `()`):
            Problems whose skeletons must not be drawn.

    Returns:
        `list[Problem]`: The problems.

    Raises:
        `ValueError`: If the task has too few distinct skeletons left for `num_problems` (widen the `TaskConfig`).
    """
    seen = {p.skeleton for p in exclude}
    problems, batch, stale = [], 0, 0
    while len(problems) < num_problems:
        found = 0
        for problem in generate_problems(4 * num_problems, config, seed=seed + 7919 * batch):
            if problem.skeleton not in seen and len(problems) < num_problems:
                seen.add(problem.skeleton)
                problems.append(problem)
                found += 1
        batch += 1
        stale = 0 if found else stale + 1
        if stale == 5:
            raise ValueError(
                f"Only {len(problems)} of the {num_problems} problems asked for have an arithmetic different from each "
                f"other's and from the {len(exclude)} excluded problems under {config or TaskConfig()}; ask for fewer "
                "problems or widen the task (max_value, max_start, max_operand, max_factor, max_steps)."
            )
    return problems


def demonstration_steps(problem: Problem, misconception: float = 0.0, rng: random.Random | None = None) -> list[str]:
    """A demonstration of a problem for the policy to imitate: the gold solution, except that each multiplicative step
    is, with probability `misconception`, solved additively.

    This is the quickstart's designed failure mode (the additive-vs-multiplicative confusion of math education): "gets
    3 times as many" written as `4 + 3 = 7` instead of `4 * 3 = 12`, "keeps one of 2 equal shares" as `6 - 2 = 4`
    instead of `6 / 2 = 3`, the wrong amount carried forward (a division that no longer comes out whole is floored).
    A policy trained on such demonstrations is confidently and systematically wrong in a way that is visible in the
    step itself (its phrase says "times", its equation says "+"), which a small PRM can learn from Monte-Carlo labels.
    The checker and every label still use the problem's own operation, so such a step is a `"wrong_operation"`.

    Args:
        problem ([`Problem`]):
            The problem.
        misconception (`float`, *optional*, defaults to `0.0`):
            Probability, per multiplication or division step, of solving it additively; `0` gives the gold solution.
        rng (`random.Random`, *optional*):
            Source of the draws; required when `misconception > 0`.

    Returns:
        `list[str]`: The steps, the answer (of the amounts as computed) closing the last one.

    Raises:
        `ValueError`: If `misconception` is outside `[0, 1]`, or positive without `rng`.
    """
    if not 0.0 <= misconception <= 1.0:
        raise ValueError(f"misconception must be a probability in [0, 1], got {misconception}.")
    if misconception > 0 and rng is None:
        raise ValueError("demonstration_steps needs rng=random.Random(seed) when misconception > 0.")
    value, steps = problem.start, []
    for step in problem.steps:
        name = step.operation
        if name in _ADDITIVE and misconception > 0 and rng.random() < misconception:
            name = _ADDITIVE[name]
        operation = OPERATIONS[name]
        result = operation.apply(value, step.operand)
        result = value // step.operand if result is None else result  # the demonstrator floors a broken division
        steps.append(f"{problem.pronoun} {step.phrase}: {value} {operation.symbol} {step.operand} = {result}.")
        value = result
    steps[-1] += " " + ANSWER_TEMPLATE.format(answer=value)
    return steps


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
