"""Sandboxed math-verify grading: extraction, verdicts, equivalences, hostile inputs, the cache and real data."""

import ast
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from trl_erprm.labeling.grading import GRADE_STATUSES, GradeResult, MathVerifyGrader, extract_final_answer


GRADING_FILE = Path(__file__).resolve().parents[1] / "trl_erprm" / "labeling" / "grading.py"


@pytest.fixture(scope="module")
def grader():
    with MathVerifyGrader(num_workers=2, timeout=5.0) as g:
        yield g


@pytest.fixture(scope="module")
def short_grader():
    """A grader with a short timeout, for inputs that are meant to time out."""
    with MathVerifyGrader(num_workers=2, timeout=1.0) as g:
        yield g


# ---------------------------------------------------------------------------------------------------------------------
# extract_final_answer (pure string operations)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"first \boxed{1} then \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"nested \boxed{\{1, \sqrt{2}\}} end", r"\{1, \sqrt{2}\}"),
        (r"\fbox{7}", "7"),
        ("Step 2: 3 * 4 = 12.\nThe answer is: 12", "12"),
        ("the answer is $\\frac{3}{4}$.\nThanks", "\\frac{3}{4}"),
        ("The answer is 18 dollars.", "18"),
        ("The answer is \\$1,250.", "1,250"),
        ("The answer is 5. Later the answer is 6", "6"),
        (r"unbalanced \boxed{12 and then the answer is 4", "4"),
        (r"empty \boxed{} but the answer is 9", "9"),
        ("no final answer here", None),
        ("The answer is", None),
        (None, None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_grading_module_never_imports_math_verify_in_the_calling_process():
    """math_verify is imported only inside `_worker_main`, the function that runs in worker processes."""
    tree = ast.parse(GRADING_FILE.read_text())
    importers = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(("math_verify", "sympy")):
                    importers.append(node.name)
    top_level = [
        n
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        and any(a.name.startswith(("math_verify", "sympy")) for a in n.names)
        or (isinstance(n, ast.ImportFrom) and (n.module or "").startswith(("math_verify", "sympy")))
    ]
    assert importers == ["_worker_main"] and top_level == []


def test_calling_process_does_not_load_math_verify(tmp_path):
    script = tmp_path / "grade.py"
    script.write_text(  # grading.py needs only the standard library: import it alone, without torch
        "import sys\n"
        f"sys.path.insert(0, {str(GRADING_FILE.parent)!r})\n"
        "from grading import MathVerifyGrader\n"
        "if __name__ == '__main__':\n"
        "    with MathVerifyGrader() as g:\n"
        "        r = g.grade(['The answer is 4'], ['4'])\n"
        "    print(r[0].status, 'math_verify' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["correct", "False"]


def test_unguarded_script_gets_a_clear_error(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(GRADING_FILE.parent)!r})\n"
        "from grading import MathVerifyGrader\n"
        "MathVerifyGrader().grade(['The answer is 4'], ['4'])\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "if __name__ == '__main__':" in out.stderr and "RuntimeError" in out.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------------------------


def test_correct_incorrect_no_answer(grader):
    results = grader.grade(
        ["So we get \\boxed{42}.", "So we get \\boxed{41}.", "I am not sure.", None, "The answer is: 42"],
        ["42", "42", "42", "42", "42"],
    )
    assert [r.status for r in results] == ["correct", "incorrect", "no_answer", "no_answer", "correct"]
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert all(isinstance(r, GradeResult) and r.status in GRADE_STATUSES for r in results)


@pytest.mark.parametrize(
    "completion, gold",
    [
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac12}", r"\frac{1}{2}"),
        ("The answer is 1,000", "1000"),
        (r"\boxed{1000}", "1,000"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{2\sqrt{3}+1}", r"1+2\sqrt{3}"),
        (r"\boxed{10\%}", "10"),
    ],
)
def test_equivalent_forms(grader, completion, gold):
    assert grader.grade([completion], [gold])[0].status == "correct"


def test_gold_unparsable(grader):
    results = grader.grade(["\\boxed{3}", "\\boxed{3}", "\\boxed{3}", "\\boxed{3}"], ["}{", "\\text{}", "", None])
    assert [r.status for r in results] == ["gold_unparsable"] * 4
    assert [r.reward for r in results] == [0.0] * 4


def test_length_mismatch_and_bad_arguments(grader):
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        grader.grade(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="num_workers"):
        MathVerifyGrader(num_workers=0)
    with pytest.raises(ValueError, match="timeout"):
        MathVerifyGrader(timeout=float("nan"))


# ---------------------------------------------------------------------------------------------------------------------
# Hostile inputs
# ---------------------------------------------------------------------------------------------------------------------


def test_hostile_inputs_return_and_execute_nothing(short_grader, tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    hostile = [
        "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
        "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",
        r"\boxed{9^{9^{9^{9^{9}}}}}",
        r"\boxed{10^{10^{10^{10}}}!}",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"The answer is __import__('os').system('touch {marker}')",
        f"The answer is eval(\"__import__('os').system('touch {marker}')\")",
        f"\\boxed{{(lambda: __import__('subprocess').run(['touch', '{marker}']))()}}",
        f"\\boxed{{open('{marker}', 'w').write('x')}}",
        "\\boxed{x.__class__.__base__.__subclasses__()}",
        "\\boxed{Symbol('x').__reduce__()}",
    ]
    results = short_grader.grade(hostile, ["1"] * len(hostile))
    assert len(results) == len(hostile)
    assert all(r.status in ("timeout", "incorrect", "error") and r.reward == 0.0 for r in results), results
    assert not marker.exists()
    # The pool is still usable afterwards.
    assert short_grader.grade(["\\boxed{3}"], ["3"])[0].status == "correct"


def test_worker_hardening_refuses_side_effects(tmp_path):
    """The audit hook a worker installs refuses to start processes and to write files (checked in a subprocess,
    since an audit hook cannot be removed)."""
    marker = tmp_path / "marker"
    code = (
        "import os, subprocess, sys\n"
        f"sys.path.insert(0, {str(GRADING_FILE.parent)!r})\n"
        "from grading import _harden_worker\n"
        "_harden_worker(2**33)\n"
        "refused = []\n"
        f"for attempt in (lambda: os.system('touch {marker}'), lambda: subprocess.run(['touch', {str(marker)!r}]),\n"
        f"                lambda: open({str(marker)!r}, 'w'), lambda: os.remove({str(GRADING_FILE)!r})):\n"
        "    try:\n"
        "        attempt()\n"
        "    except PermissionError:\n"
        "        refused.append(True)\n"
        "print(len(refused), open(os.devnull).read() == '')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "True"]  # all four refused; reading still works
    assert not marker.exists() and GRADING_FILE.exists()


def test_hung_worker_is_killed_and_replaced(short_grader):
    short_grader.grade(["\\boxed{1}"], ["1"])  # make sure the workers exist
    victim = short_grader._workers[0].process
    os.kill(victim.pid, signal.SIGSTOP)  # a worker that stops answering, like one stuck in C code
    try:
        before = short_grader.stats()["worker_restarts"]
        values = [str(i) for i in range(5000, 5040)]
        results = short_grader.grade([f"\\boxed{{{v}}}" for v in values], values)
    finally:
        if victim.is_alive():
            os.kill(victim.pid, signal.SIGKILL)
    statuses = [r.status for r in results]
    assert statuses.count("timeout") == 1 and statuses.count("correct") == 39
    assert short_grader.stats()["worker_restarts"] == before + 1
    assert not victim.is_alive()
    # A timeout is not cached: the same pair is graded again, now correctly.
    timed_out = statuses.index("timeout")
    assert short_grader.grade([f"\\boxed{{{values[timed_out]}}}"], [values[timed_out]])[0].status == "correct"


# ---------------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------------


def test_repeated_answers_are_graded_once():
    completions = ["so \\boxed{7}", "The answer is 7", "\\boxed{8}", "\\boxed{7}", "no answer"] * 20
    golds = ["7"] * len(completions)
    with MathVerifyGrader(num_workers=1) as g:
        first = g.grade(completions, golds)
        stats = g.stats()
        assert stats["graded"] == 2  # ("7", "7") and ("8", "7")
        assert stats["cache_hits"] == 80 - 2 and stats["no_answer"] == 20 and stats["requests"] == 100
        second = g.grade(completions, golds)
        assert g.stats()["graded"] == 2 and g.stats()["cache_hits"] == 80 - 2 + 80
        assert first == second
        assert [r.status for r in first[:5]] == ["correct", "correct", "incorrect", "correct", "no_answer"]
    with MathVerifyGrader(num_workers=1, cache=False) as g:
        assert g.grade(completions, golds) == first
        assert g.stats()["graded"] == 80 and g.stats()["cache_hits"] == 0


# ---------------------------------------------------------------------------------------------------------------------
# Real data: every reference solution graded against its own gold answer
# ---------------------------------------------------------------------------------------------------------------------


def _reference_solutions(sample_data):
    completions, golds, sources = [], [], []
    for i, line in enumerate((sample_data / "gsm8k_test.jsonl").read_text().splitlines()):
        row = json.loads(line)
        solution, gold = row["answer"].split("####")
        ending = f"The answer is {gold.strip()}" if i % 2 == 0 else f"So the answer is $\\boxed{{{gold.strip()}}}$."
        completions.append(solution.strip() + "\n" + ending)
        golds.append(gold.strip())
        sources.append("gsm8k")
    for line in (sample_data / "math500_test.jsonl").read_text().splitlines():
        row = json.loads(line)
        completions.append(row["solution"])
        golds.append(row["answer"])
        sources.append("math500")
    return completions, golds, sources


def test_reference_solutions_agree_with_their_gold(grader, sample_data):
    completions, golds, sources = _reference_solutions(sample_data)
    results = grader.grade(completions, golds)
    # A grader that says "correct" to everything would pass the check above: shift the golds by one problem.
    shifted = [
        golds[i + 1] if i + 1 < len(golds) and sources[i + 1] == sources[i] else golds[i - 1]
        for i in range(len(golds))
    ]
    shifted_results = grader.grade(completions, shifted)
    for source, floor in (("gsm8k", 0.99), ("math500", 0.99)):
        rows = [i for i, s in enumerate(sources) if s == source]
        failures = [(i, results[i].status, extract_final_answer(completions[i]), golds[i]) for i in rows]
        failures = [f for f in failures if f[1] != "correct"]
        for failure in failures:
            print(f"{source} failure: row {failure[0]} status={failure[1]} answer={failure[2]!r} gold={failure[3]!r}")
        agreement = 1 - len(failures) / len(rows)
        print(f"{source}: agreement {agreement:.4f} over {len(rows)} reference solutions")
        assert agreement >= floor
        false_positive = sum(shifted_results[i].status == "correct" for i in rows) / len(rows)
        print(f"{source}: 'correct' against the neighbouring problem's gold {false_positive:.4f}")
        assert false_positive <= 0.02  # only neighbours that happen to share the answer
