"""Sandboxed math-verify grading: extraction (the forms models write, bounded work), verdicts, equivalences, hostile
inputs, timeouts and their retry, sharing one grader between threads, light workers, the cache and real data."""

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from trl_erprm.labeling.grading import GRADE_STATUSES, GradeResult, MathVerifyGrader, extract_final_answer


REPO = Path(__file__).resolve().parents[1]
LABELING = REPO / "trl_erprm" / "labeling"
GRADING_FILE = LABELING / "grading.py"
WORKER_FILE = LABELING / "_grading_worker.py"


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
        # The survey of final-answer forms (see trl_erprm/labeling/answers.py), the last stated answer winning.
        ("The answer is **73**.", "73"),
        ("The answer is 42, since 6*7=42.", "42"),
        ("That means a pencil costs 29 cents.\n\n# Answer\n\n29", "29"),
        ("# Answer\n\n8, 3, 1", "8, 3, 1"),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18", "18"),
        ("#### 1,000", "1,000"),
        ("**Answer:** 12", "12"),
        ("**Final Answer**: x = 5", "x = 5"),
        ("Answer: (B)", "(B)"),
        ("The answer is \\(\\sqrt{2}\\).", "\\sqrt{2}"),
        ("The answer is:\n\n$$\n\\frac{1}{2}\n$$", "\\frac{1}{2}"),
        ("The correct answer is **$-3$**.", "-3"),
        ("The answer is 1, 2", "1, 2"),
        ("The answer is 2x + 3.", "2x + 3"),
        ("The answer is x = 5. I hope it is correct.", "x = 5"),
        ("The final answer is: $\\boxed{5}$", "5"),
        ("The answer is 5.\n\n#### Verification\nall good", "5"),  # a markdown heading is not GSM8K's ####
        ("First \\boxed{3}. Wait, I made an error: the answer is 4.", "4"),
        ("The answer is 3. Double-checking: \\boxed{4}", "4"),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


# (completion, gold, expected status): the forms common generators and datasets write, graded end to end.
SURVEY = [
    ("So the answer is \\boxed{73}.", "73", "correct"),
    ("Thus $\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}", "correct"),
    ("\\fbox{12}", "12", "correct"),
    ("The answer is **73**.", "73", "correct"),
    ("The answer is **72**.", "73", "incorrect"),
    ("The answer is 42, since 6*7=42.", "42", "correct"),
    ("The answer is 41, since 6*7=41.", "42", "incorrect"),
    ("That means a pencil costs 29 cents.\n\n# Answer\n\n29", "29", "correct"),
    ("Right. So the number of boys is 9.\n\n# Answer\n\n17", "17", "correct"),
    ("# Answer\n\n16", "17", "incorrect"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75", "correct"),
    ("Final Answer: The final answer is $5$. I hope it is correct.", "6", "incorrect"),
    ("The final answer is $\\boxed{8}$", "8", "correct"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", "correct"),
    ("#### 1,000", "1000", "correct"),
    ("The answer is 1,000.", "1000", "correct"),
    ("The answer is 18 dollars.", "18", "correct"),
    ("The answer is \\$1,250.", "1250", "correct"),
    ("The answer is 10%.", "10", "correct"),
    ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}", "correct"),
    ("The answer is \\(\\sqrt{2}\\).", "\\sqrt{2}", "correct"),
    ("The answer is:\n\n$$\n\\frac{1}{2}\n$$", "0.5", "correct"),
    ("The correct answer is **$-3$**.", "-3", "correct"),
    ("**Answer:** 12", "12", "correct"),
    ("**Final Answer**: x = 5", "5", "correct"),
    ("Answer: 7", "7", "correct"),
    ("The answer is 3.5.", "\\frac{7}{2}", "correct"),
    ("The answer is x = 5. I hope it is correct.", "5", "correct"),
    ("The answer is 5. Wait, the answer is 6.", "6", "correct"),
    ("First \\boxed{3}. Wait, I made an error: the answer is 4.", "4", "correct"),
    ("The answer is 3. Double-checking: \\boxed{4}", "3", "incorrect"),
    ("The answer is 8, 3, 1.", "8, 3, 1", "correct"),
    (
        "So $17^{-1}\\equiv \\boxed{44}$.\n\nWe may check our answer: 17*44 = 748, so our answer is correct.",
        "44",
        "correct",
    ),
    ("The answer is 5. Checking: 2 + 3 = 5, yes, the answer is indeed correct.", "5", "correct"),
    ("I think it is 5 but I am not sure.", "5", "no_answer"),
    ("The answer is", "5", "no_answer"),
    ("", "5", "no_answer"),
]


@pytest.mark.parametrize("completion, gold, expected", SURVEY)
def test_survey_of_final_answer_forms(grader, completion, gold, expected):
    assert grader.grade([completion], [gold])[0].status == expected


def test_extraction_is_linear_on_degenerate_model_output():
    """Collapsed rollouts (a megabyte of digits after "The answer is", 100k unclosed `\\boxed{`, ...) must not stall the
    calling process: every function that reads model output there finishes, at size n and 4n. Run in a subprocess
    with a generous limit (before the fix, 1 MB of digits did not return in 120 s)."""
    code = (
        "from trl_erprm.labeling.answers import extract_final_answer\n"
        "from trl_erprm.evaluation.metrics import normalize_answer\n"
        "for n in (250_000, 1_000_000):\n"
        "    for text in ('The answer is ' + '1' * n, '\\\\boxed{' * (n // 10), 'the answer is ' * (n // 14),\n"
        "                 '{' * n, '#' * n, '$' * n, '*' * n, ' ' * n + 'x', 'Answer:' + '\\n' * n, '# Answer' * (n // 8),\n"
        "                 '\\\\boxed{\\\\boxed{' * (n // 14) + '}' * (n // 7), 'The answer is ' + ' ' * n + '5'):\n"
        "        normalize_answer(extract_final_answer(text))\n"
        "print('returned')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "returned", out.stderr[-2000:]


def test_answers_too_long_or_cut_off_are_no_answer():
    from trl_erprm.labeling.answers import MAX_ANSWER_CHARS

    assert extract_final_answer("The answer is " + "1" * 10_000) is None  # cut off: no final answer
    assert extract_final_answer("\\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}") is None
    assert extract_final_answer("\\boxed{7} and then " + "\\boxed{" * 5000) == "7"


def test_grading_code_in_the_calling_process_never_imports_math_verify():
    """math_verify is imported only by `worker_main`, in the worker file that runs as its own interpreter."""

    def importers(path):
        tree = ast.parse(path.read_text())
        found = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n.startswith(("math_verify", "sympy")) for n in names):
                    found.append(node)
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        return sorted({f.name for f in functions for i in found if i in list(ast.walk(f))}), len(found)

    assert importers(GRADING_FILE) == ([], 0)
    assert importers(LABELING / "answers.py") == ([], 0)
    assert importers(WORKER_FILE) == (["worker_main"], 1)


def test_an_unguarded_script_that_imported_torch_grades_with_light_workers(tmp_path):
    """Workers are fresh interpreters running only the worker file: a script without the `__main__` guard works (it
    is not re-imported), its workers hold no torch, and the calling process never loads math-verify."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "import torch\n"
        "from trl_erprm.labeling.grading import MathVerifyGrader\n"
        "grader = MathVerifyGrader(num_workers=1)\n"
        "result = grader.grade(['The answer is **4**.'], ['4'])[0]\n"
        "maps = open(f'/proc/{grader._workers[0].process.pid}/maps').read()\n"
        "print(result.status, 'math_verify' in sys.modules, 'libtorch' in maps, 'torch' in sys.modules)\n"
        "grader.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["correct", "False", "False", "True"]


def test_a_worker_that_cannot_start_is_a_clear_error(monkeypatch):
    from trl_erprm.labeling import grading

    monkeypatch.setattr(grading, "_WORKER_FILE", str(LABELING / "no_such_worker.py"))
    grader = MathVerifyGrader()
    with pytest.raises(RuntimeError, match="exited before it was ready.*pip install math-verify"):
        grader.grade(["\\boxed{1}"], ["1"])


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
    with pytest.raises(ValueError, match="retry_timeout"):
        MathVerifyGrader(retry_timeout=-1)
    assert MathVerifyGrader(timeout=2).retry_timeout == 8.0


def test_a_gold_that_cannot_be_parsed_is_gold_unparsable_not_incorrect(grader):
    """An unclosed `\\frac{` (or LaTeX math-verify reads as no expression) is the gold's fault: never "incorrect"."""
    results = grader.grade(
        ["\\boxed{\\frac{1}{2}}", "The answer is 3", "\\boxed{2}"], ["\\frac{1", "\\boxed{\\frac{1}", "x^2+"]
    )
    assert [r.status for r in results] == ["gold_unparsable"] * 3


def test_one_grader_shared_by_eight_threads_gives_each_caller_its_verdicts():
    """A thread pool over problems (or TRL's async reward functions) sharing one grader: every call gets exactly its
    own verdicts (before, verdicts crossed between calls and some calls raised OSError)."""
    errors, wrong = [], []
    with MathVerifyGrader(num_workers=2, cache=False) as shared:

        def caller(t):
            try:
                for round_ in range(3):
                    values = [1000 * t + 100 * round_ + k for k in range(12)]
                    right = [(k + t + round_) % 3 != 0 for k in range(12)]
                    completions = [f"The answer is {v if r else v + 1}" for v, r in zip(values, right)]
                    results = shared.grade(completions, [str(v) for v in values])
                    expected = ["correct" if r else "incorrect" for r in right]
                    if [r.status for r in results] != expected:
                        wrong.append((t, round_, [r.status for r in results], expected))
            except Exception as error:  # every failure of a thread is reported
                errors.append(repr(error))

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert shared.stats()["requests"] == 8 * 3 * 12
    assert not errors and not wrong, (errors, wrong[:3])


# ---------------------------------------------------------------------------------------------------------------------
# Hostile inputs
# ---------------------------------------------------------------------------------------------------------------------


def test_hostile_inputs_return_and_execute_nothing(short_grader, tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    hostile = [
        "\\boxed{" + "(" * 450 + "1" + ")" * 450 + "}",  # deep nesting within the answer length cap
        "\\boxed{" + "{" * 450 + "1" + "}" * 450 + "}",
        "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",  # past the cap: no answer, never sent to a worker
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
    assert all(r.status in ("timeout", "incorrect", "error") and r.reward == 0.0 for r in results[:2]), results
    assert results[2].status == "no_answer"
    assert all(r.status in ("timeout", "incorrect", "error") and r.reward == 0.0 for r in results[3:]), results
    assert not marker.exists()
    # The pool is still usable afterwards.
    assert short_grader.grade(["\\boxed{3}"], ["3"])[0].status == "correct"


def test_worker_hardening_refuses_side_effects(tmp_path):
    """The audit hook a worker installs refuses to start processes and to write files (checked in a subprocess,
    since an audit hook cannot be removed)."""
    marker = tmp_path / "marker"
    code = (
        "import os, subprocess, sys\n"
        f"sys.path.insert(0, {str(LABELING)!r})\n"
        "from _grading_worker import _harden_worker\n"
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


def test_hung_worker_is_killed_replaced_and_its_item_retried(short_grader):
    """A worker that stops answering (like one stuck in C code) is killed at the hard deadline; the item it held timed
    out once, which is not a verdict: it is graded again with the longer limit, on a fresh worker, and is correct."""
    short_grader.grade(["\\boxed{1}"], ["1"])  # make sure the workers exist
    victim = short_grader._workers[0].process
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        before = short_grader.stats()
        values = [str(i) for i in range(5000, 5040)]
        results = short_grader.grade([f"\\boxed{{{v}}}" for v in values], values)
    finally:
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
    assert [r.status for r in results] == ["correct"] * 40
    after = short_grader.stats()
    assert after["worker_restarts"] == before["worker_restarts"] + 1
    assert after["timeouts"] == before["timeouts"] + 1 and after["retries"] == before["retries"] + 1
    assert after["timeout"] == before["timeout"]  # no final timeout
    assert victim.poll() is not None


def test_a_timeout_is_kept_apart_from_a_wrong_answer():
    """An answer that times out on both tries is `timeout` (reward 0 but not `incorrect`), counted, and not cached."""
    with MathVerifyGrader(num_workers=1, timeout=0.5, retry_timeout=0.5) as g:
        results = g.grade(["\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{2}", "\\boxed{3}"], ["1", "2", "2"])
        assert [r.status for r in results] == ["timeout", "correct", "incorrect"]
        stats = g.stats()
        assert stats["timeout"] == 1 and stats["incorrect"] == 1 and stats["retries"] == 1 and stats["timeouts"] == 2
        assert stats["cache_size"] == 2  # the timeout is not cached


def test_a_forked_child_grades_with_its_own_workers_and_leaves_the_parents_alone(short_grader):
    short_grader.grade(["\\boxed{1}"], ["1"])
    parent_pids = [w.process.pid for w in short_grader._workers]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: grade, close, report, and leave without running any cleanup of the parent's objects
        try:
            status = short_grader.grade(["The answer is 5"], ["5"])[0].status
            own = all(w.process.pid not in parent_pids for w in short_grader._workers)
            short_grader.close()
            os.write(write_end, b"1" if status == "correct" and own else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"1"
    os.close(read_end)
    os.close(write_end)
    # The parent's next request goes down the same pipes after anything the child sent: had the child told the
    # parent's workers to stop, they would be gone now and replaced.
    assert short_grader.grade(["\\boxed{2}", "\\boxed{3}"], ["2", "3"])[0].status == "correct"
    assert [w.process.pid for w in short_grader._workers] == parent_pids
    assert all(w.process.poll() is None for w in short_grader._workers)


def test_start_launches_workers_in_the_background():
    g = MathVerifyGrader(num_workers=2)
    g.start()  # returns at once: the workers import math-verify while the caller does other work
    assert len(g._workers) == 2 and not any(w.ready for w in g._workers)
    assert g.grade(["The answer is 3"], ["3"])[0].status == "correct"
    g.start()  # idempotent
    assert len(g._workers) == 2
    g.close()


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
