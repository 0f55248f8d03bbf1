"""The synthetic arithmetic task: generator, distinct problem sets, demonstrations with the designed misconception,
problem parser, step checker and dataset builders."""

import pytest
from math_verify import parse, verify

from trl_erprm.quickstart import (
    OPERATIONS,
    STEP_ERRORS,
    Problem,
    ProblemStep,
    TaskConfig,
    build_problem_dataset,
    build_processbench_dataset,
    build_stepwise_dataset,
    check_solution,
    demonstration_steps,
    distinct_problems,
    generate_problems,
    parse_problem,
    task_corpus,
)
from trl_erprm.steps import StepFormat


# Ann has 7 apples, buys 5 (12), gives away 3 (9), gets 3 times as many (27).
ANN = Problem(
    name="Ann",
    pronoun="She",
    item="apples",
    start=7,
    steps=(
        ProblemStep("add", 5, "buys 5 more"),
        ProblemStep("sub", 3, "gives away 3"),
        ProblemStep("mul", 3, "gets 3 times as many"),
    ),
)
ANN_TEXT = (
    "Ann has 7 apples. She buys 5 more. She gives away 3. She gets 3 times as many. How many apples does Ann have now?"
)
S0 = "She buys 5 more: 7 + 5 = 12."
S1 = "She gives away 3: 12 - 3 = 9."
S2 = "She gets 3 times as many: 9 * 3 = 27."
ANSWER = "The answer is \\boxed{27}."
GOLD = f"{S0}\n\n{S1}\n\n{S2} {ANSWER}"

# Bob has 8 coins and keeps one of 2 equal shares (4).
BOB = Problem("Bob", "He", "coins", 8, (ProblemStep("div", 2, "keeps one of 2 equal shares"),))


def test_problem_text_values_and_gold_solution():
    assert ANN.text == ANN_TEXT
    assert ANN.values == [7, 12, 9, 27]
    assert ANN.answer == 27
    assert ANN.solution_steps() == [S0, S1, f"{S2} {ANSWER}"]
    assert ANN.solution() == GOLD
    assert ANN.solution(separator="\n") == f"{S0}\n{S1}\n{S2} {ANSWER}"
    assert BOB.text == "Bob has 8 coins. He keeps one of 2 equal shares. How many coins does Bob have now?"
    assert BOB.solution() == "He keeps one of 2 equal shares: 8 / 2 = 4. The answer is \\boxed{4}."


def test_parse_problem_inverts_text():
    assert parse_problem(ANN_TEXT) == ANN
    assert parse_problem(BOB.text) == BOB


@pytest.mark.parametrize(
    "text", ["", "What is 2 + 2?", "Ann has 7 apples. She sings 3 songs. How many apples does Ann have now?"]
)
def test_parse_problem_rejects_other_text(text):
    with pytest.raises(ValueError, match="problem"):
        parse_problem(text)


def test_generate_problems_is_deterministic_and_respects_the_config():
    config = TaskConfig(min_steps=2, max_steps=4, max_start=15, max_operand=5, max_factor=3, max_value=40)
    problems = generate_problems(300, config, seed=3)
    assert problems == generate_problems(300, config, seed=3)
    assert problems != generate_problems(300, config, seed=4)
    assert {len(p.steps) for p in problems} == {2, 3, 4}
    assert {s.operation for p in problems for s in p.steps} == set(OPERATIONS)
    for p in problems:
        assert 2 <= p.start <= 15
        assert all(1 <= v <= 40 for v in p.values)
        for step in p.steps:
            limit = 5 if step.operation in ("add", "sub") else 3
            assert 1 <= step.operand <= limit
        assert parse_problem(p.text) == p
        check = check_solution(p.text, p.solution())
        assert check.first_error == -1 and check.answer_correct


def test_generate_problems_restricted_operations():
    problems = generate_problems(50, TaskConfig(operations=("add",), min_steps=3, max_steps=3), seed=0)
    assert all(len(p.steps) == 3 and {s.operation for s in p.steps} == {"add"} for p in problems)
    assert all(p.answer == p.start + sum(s.operand for s in p.steps) for p in problems)


def test_generate_problems_rejects_an_impossible_config():
    # Halving 1 twice is impossible: every draw fails.
    config = TaskConfig(operations=("div",), min_start=1, max_start=1, min_steps=2, max_steps=2)
    with pytest.raises(ValueError, match="rarely allows"):
        generate_problems(3, config)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"operations": ("pow",)}, "operations"),
        ({"operations": ()}, "operations"),
        ({"min_steps": 3, "max_steps": 2}, "min_steps"),
        ({"max_start": 100, "max_value": 60}, "max_start"),
        ({"max_factor": 1}, "max_factor"),
    ],
)
def test_task_config_rejects_bad_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TaskConfig(**kwargs)


def test_gold_solution_is_correct_everywhere():
    check = check_solution(ANN, GOLD)
    assert check.steps == [S0, S1, f"{S2} {ANSWER}"]
    assert check.step_errors == [None, None, None]
    assert check.first_error == -1
    assert check.step_labels == [True, True, True]
    assert check.predicted_answer == 27 and check.answer_correct


def test_problem_given_as_text_gives_the_same_verdict():
    wrong = (
        f"{S0}\n\nShe gives away 3: 12 - 3 = 8.\n\nShe gets 3 times as many: 8 * 3 = 24. The answer is \\boxed{{24}}."
    )
    assert check_solution(ANN_TEXT, wrong) == check_solution(ANN, wrong)


def test_swapped_operands_of_commutative_operations_and_answer_in_own_step():
    solution = f"She buys 5 more: 5 + 7 = 12.\n\n{S1}\n\nShe gets 3 times as many: 3 * 9 = 27.\n\n{ANSWER}"
    check = check_solution(ANN, solution)
    assert check.step_errors == [None, None, None, None]
    assert check.answer_correct
    # Subtraction and division are not commutative.
    assert check_solution(ANN, f"{S0}\n\nShe gives away 3: 3 - 12 = 9.").step_errors[1] == "wrong_operand"
    assert check_solution(BOB, "8 / 2 = 4. The answer is \\boxed{4}.").step_errors == [None]
    assert check_solution(BOB, "2 / 8 = 4. The answer is \\boxed{4}.").step_errors == ["wrong_operand"]


def test_wrong_arithmetic_at_step_1_is_carried_forward():
    solution = (
        f"{S0}\n\nShe gives away 3: 12 - 3 = 8.\n\nShe gets 3 times as many: 8 * 3 = 24. The answer is \\boxed{{24}}."
    )
    check = check_solution(ANN, solution)
    # Step 2 computes 8 * 3 right, but 8 is not the true amount: the error carried forward is wrong again.
    assert check.step_errors == [None, "arithmetic", "wrong_operand"]
    assert check.first_error == 1
    assert check.step_labels == [True, False, False]
    assert check.predicted_answer == 24 and not check.answer_correct


def test_wrong_operand_at_step_2():
    solution = f"{S0}\n\n{S1}\n\nShe gets 3 times as many: 9 * 2 = 18. The answer is \\boxed{{18}}."
    check = check_solution(ANN, solution)
    assert check.step_errors == [None, None, "wrong_operand"]
    assert check.first_error == 2 and check.step_labels == [True, True, False]
    assert not check.answer_correct


def test_wrong_operation_and_multiple_equations():
    assert check_solution(ANN, f"{S0}\n\nShe gives away 3: 12 + 3 = 15.").step_errors[1] == "wrong_operation"
    check = check_solution(ANN, "7 + 5 = 12 and 12 - 3 = 9.")
    assert check.step_errors == ["multiple_equations"]


def test_errors_that_cancel_give_a_right_answer_with_a_wrong_step():
    solution = f"{S0}\n\nShe gives away 3: 12 - 3 = 10.\n\nShe gets 3 times as many: 9 * 3 = 27. {ANSWER}"
    check = check_solution(ANN, solution)
    assert check.answer_correct
    assert check.first_error == 1
    assert check.step_errors == [None, "arithmetic", None]


@pytest.mark.parametrize("garbage", ["blah blah", "", "   \n\n  ", "__import__('os').system('echo pwned')"])
def test_garbage_text_is_wrong_at_step_0(garbage):
    check = check_solution(ANN, garbage)
    assert check.first_error == 0
    assert check.step_errors[0] == "no_equation"
    assert check.predicted_answer is None and not check.answer_correct
    assert check.step_labels == [False] * len(check.steps)


def test_answer_errors():
    missing = f"{S0}\n\n{S1}\n\n{S2}"
    assert check_solution(ANN, missing).step_errors == [None, None, "missing_answer"]
    wrong = f"{S0}\n\n{S1}\n\n{S2} The answer is \\boxed{{26}}."
    check = check_solution(ANN, wrong)
    assert check.step_errors == [None, None, "wrong_answer"] and check.predicted_answer == 26
    not_a_number = f"{S0}\n\n{S1}\n\n{S2} The answer is \\boxed{{twenty}}."
    check = check_solution(ANN, not_a_number)
    assert check.step_errors[2] == "wrong_answer" and check.predicted_answer is None
    early = f"{S0} The answer is \\boxed{{12}}.\n\n{S1}"
    assert check_solution(ANN, early).step_errors == ["early_answer", "extra_step"]
    early_alone = f"{S0}\n\nThe answer is \\boxed{{12}}."
    assert check_solution(ANN, early_alone).step_errors == [None, "early_answer"]


def test_steps_after_the_answer_are_extra():
    check = check_solution(ANN, GOLD + "\n\nShe is happy.")
    assert check.step_errors == [None, None, None, "extra_step"]
    assert check.first_error == 3 and check.answer_correct
    check = check_solution(ANN, GOLD + "\n\n27 * 1 = 27.")
    assert check.step_errors[3] == "extra_step"


def test_huge_numbers_do_not_crash():
    check = check_solution(
        ANN, "She buys 5 more: 7 + 5 = " + "9" * 5000 + ". The answer is \\boxed{" + "1" * 5000 + "}."
    )
    assert check.step_errors == ["arithmetic"]
    assert check.predicted_answer is None


def test_separator_is_a_parameter():
    solution = ANN.solution(separator="\n")
    assert check_solution(ANN, solution, separator="\n").first_error == -1
    # Read with the default "\n\n" it is a single step holding three equations.
    assert check_solution(ANN, solution).step_errors == ["multiple_equations"]
    assert check_solution(ANN, "").steps == [""]  # a solution with no text is one empty step
    with pytest.raises(ValueError, match="separator"):
        check_solution(ANN, solution, separator="")
    assert set(STEP_ERRORS) >= {"arithmetic", "wrong_operand", "no_equation", "missing_answer"}


def test_problem_dataset_and_math_verify_gold():
    ds = build_problem_dataset([ANN, BOB])
    assert ds.column_names == ["problem", "prompt", "answer", "solution"]
    assert ds[0]["problem"] == ANN_TEXT
    assert ds[0]["prompt"] == [{"role": "user", "content": ANN_TEXT}]
    assert ds["answer"] == ["27", "4"]
    assert ds[0]["solution"] == GOLD
    for row in ds:
        assert verify(parse(row["answer"]), parse(row["solution"]))
        assert verify(parse(f"\\boxed{{{row['answer']}}}"), parse(row["solution"]))
    assert not verify(parse(ds[0]["answer"]), parse("The answer is \\boxed{26}."))


def test_processbench_and_stepwise_datasets():
    wrong_at_1 = (
        f"{S0}\n\nShe gives away 3: 12 - 3 = 8.\n\nShe gets 3 times as many: 8 * 3 = 24. The answer is \\boxed{{24}}."
    )
    solutions = [[GOLD, wrong_at_1, "garbage"], [BOB.solution()]]
    bench = build_processbench_dataset([ANN, BOB], solutions)
    assert bench["id"] == ["0-0", "0-1", "0-2", "1-0"]
    assert bench["label"] == [-1, 1, 0, -1]
    assert bench["final_answer_correct"] == [True, False, False, True]
    assert bench[1]["steps"] == StepFormat("\n\n").split(wrong_at_1)
    assert bench["answer"] == ["27", "27", "27", "4"]
    stepwise = build_stepwise_dataset([ANN, BOB], solutions)
    assert stepwise["labels"] == [[True, True, True], [True, False, False], [False], [True]]
    assert stepwise["first_error"] == [-1, 1, 0, -1]
    assert stepwise[0]["prompt"] == ANN_TEXT and stepwise[0]["completions"] == [S0, S1, f"{S2} {ANSWER}"]


def test_dataset_builders_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="one list of solutions per problem"):
        build_processbench_dataset([ANN, BOB], [[GOLD]])
    with pytest.raises(TypeError, match=r"solutions\[0\]"):
        build_stepwise_dataset([ANN], [GOLD])


def test_task_corpus():
    corpus = task_corpus(10, seed=1)
    assert corpus == task_corpus(10, seed=1)
    p = generate_problems(10, seed=1)[0]
    assert corpus[0] == f"{p.text}\n\n{p.solution()}"


def test_default_task_is_single_digit():
    for problem in generate_problems(300, seed=5):
        assert 3 <= len(problem.steps) <= 4
        assert all(1 <= v <= 9 for v in problem.values)


def test_skeleton_is_the_arithmetic():
    assert ANN.skeleton == (7, ("add", 5), ("sub", 3), ("mul", 3))
    renamed = Problem("Dan", "He", "pens", 7, tuple(ProblemStep(s.operation, s.operand, s.phrase) for s in ANN.steps))
    assert renamed.skeleton == ANN.skeleton and renamed.text != ANN.text


def test_distinct_problems_never_share_arithmetic():
    train = distinct_problems(200, seed=1)
    test = distinct_problems(100, seed=2, exclude=train)
    assert len({p.skeleton for p in train}) == 200 and len({p.skeleton for p in test}) == 100
    assert not {p.skeleton for p in train} & {p.skeleton for p in test}
    assert distinct_problems(100, seed=2, exclude=train) == test  # deterministic
    # plain generation repeats skeletons on this small task: the check above is not vacuous
    drawn = generate_problems(300, seed=1)
    assert len({p.skeleton for p in drawn}) < 300
    tiny = TaskConfig(min_steps=1, max_steps=1, max_start=2, max_value=3, operations=("add",), max_operand=1)
    with pytest.raises(ValueError, match="widen the task"):
        distinct_problems(5, tiny, seed=0)


def test_demonstration_steps_gold_and_misconception():
    import random

    assert demonstration_steps(ANN) == ANN.solution_steps()  # no misconception: the gold solution
    # Always additive: "3 times as many" on 9 becomes 9 + 3 = 12, the answer follows the wrong amount.
    wrong = "She gets 3 times as many: 9 + 3 = 12. The answer is \\boxed{12}."
    assert demonstration_steps(ANN, 1.0, random.Random(0)) == [S0, S1, wrong]
    assert demonstration_steps(BOB, 1.0, random.Random(0)) == [
        "He keeps one of 2 equal shares: 8 - 2 = 6. The answer is \\boxed{6}."
    ]
    # A division after a wrong amount that no longer comes out whole is floored by the demonstrator: 3 * 2 done as
    # 3 + 2 = 5 (first draw 0.0 < 0.5), then "one of 2 equal shares" kept (second draw 0.9): 5 / 2 = 2.
    shares = Problem(
        "Eve", "She", "eggs", 3,
        (ProblemStep("mul", 2, "gets 2 times as many"), ProblemStep("div", 2, "keeps one of 2 equal shares")),
    )  # fmt: skip

    class Draws:
        def __init__(self, values):
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    assert demonstration_steps(shares, 0.5, Draws([0.0, 0.9])) == [
        "She gets 2 times as many: 3 + 2 = 5.",
        "She keeps one of 2 equal shares: 5 / 2 = 2. The answer is \\boxed{2}.",
    ]
    # The checker keeps the problem's own operation: the additive step is a wrong operation, carried forward.
    check = check_solution(ANN, "\n\n".join(demonstration_steps(ANN, 1.0, random.Random(0))))
    assert check.step_errors == [None, None, "wrong_operation"] and not check.answer_correct
    # About half of the multiplicative steps are additive with misconception=0.5, never an add/sub step.
    rng, additive, total = random.Random(0), 0, 0
    for problem in generate_problems(400, seed=9):
        for step, text in zip(problem.steps, demonstration_steps(problem, 0.5, rng)):
            if step.operation in ("mul", "div"):
                total += 1
                additive += f" {OPERATIONS[step.operation].symbol} " not in text
            else:
                assert f" {OPERATIONS[step.operation].symbol} " in text
    assert 0.4 < additive / total < 0.6
    with pytest.raises(ValueError, match="probability"):
        demonstration_steps(ANN, 1.5, random.Random(0))
    with pytest.raises(ValueError, match="needs rng"):
        demonstration_steps(ANN, 0.5)
