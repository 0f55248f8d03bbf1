"""Sandboxed math-verify grading of final answers against gold answers.

math-verify (`parse`, `verify`) hands regex matches to sympy's `parse_expr`, which evaluates code, and its timeouts
rely on `signal.alarm`, which only works in the main thread. Model output is untrusted, so this module never imports
math-verify in the calling process: the calling process only does string work ([`extract_final_answer`], the cache),
and every `parse` / `verify` call (the gold answer's too) runs in a small pool of worker processes that
[`MathVerifyGrader`] manages itself:

- a worker is started with the `"forkserver"` context (`"spawn"` where there is none) and runs this very file with
  `runpy.run_path`, so it imports the standard library and math-verify only, never `trl_erprm` and its torch;
- in the worker, each item runs under a soft timeout (`setitimer`) and the calling process holds a hard deadline: a
  worker that overruns it (for example stuck in a C-level big-integer power that ignores signals) is killed and
  replaced, and the item gets the status `"timeout"`;
- the worker caps its address space (`RLIMIT_AS`) and installs an audit hook that refuses to start processes, write
  files, open sockets or load native libraries, so even an expression that reached `eval` could not act;
- identical (extracted answer, gold) pairs are graded once: duplicates of one call are dispatched once and results
  are cached across calls.

As with any `multiprocessing` code, a script that grades must keep its top-level code under
`if __name__ == "__main__":` (worker processes re-import the main module); a worker that dies before it is ready
raises a `RuntimeError` saying so.

Grading reads only the final answer: the content of the last `\\boxed{...}`, else the text after the last "The answer
is". The worker grades `\\boxed{<answer>}` against the gold answer, itself wrapped in `\\boxed{}` unless it already
holds `\\boxed` or `$` (GSM8K golds are plain numbers, MATH golds are LaTeX).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import runpy
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait


GRADE_STATUSES = ("correct", "incorrect", "no_answer", "timeout", "gold_unparsable", "error")

#: Items sent to a worker in one message (results come back one by one, so a hung item is identified).
MAX_ITEMS_PER_MESSAGE = 32
#: Address-space cap of a worker process, in bytes.
WORKER_MEMORY_LIMIT = 4 * 1024**3
#: Seconds a new worker may take to import math-verify before it counts as failed.
WORKER_START_TIMEOUT = 120.0
_WORKER_RUN_NAME = "__trl_erprm_grading_worker__"
#: Statuses that may come from the machine rather than the answer (load, a killed worker): shared by the duplicates
#: of one call but not cached, so a later call grades the pair again.
_RETRIED_STATUSES = ("timeout", "error")


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one completion.

    Args:
        reward (`float`):
            `1.0` if the completion's final answer is equivalent to the gold answer, else `0.0`.
        status (`str`):
            One of [`GRADE_STATUSES`]: `"correct"`, `"incorrect"` (an answer that is wrong or that math-verify cannot
            parse), `"no_answer"` (no `\\boxed{}` and no "The answer is", or no text), `"timeout"` (parsing or
            verification overran the per-item timeout), `"gold_unparsable"` (math-verify cannot parse the gold
            answer, or it is empty) or `"error"` (the worker raised or died on this item).
    """

    reward: float
    status: str


# ---------------------------------------------------------------------------------------------------------------------
# Answer extraction: string operations only, safe in the calling process
# ---------------------------------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RE = re.compile(r"the answer is", re.IGNORECASE)
# A number followed by plain words ("18 dollars", "3 apples"): the words are units, the number is the answer.
_NUMBER_WITH_UNITS_RE = re.compile(r"^([-+]?(?:\d[\d,]*)?\.?\d+)\s+[A-Za-z][A-Za-z .]*$")


def _last_boxed_content(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) whose braces balance, or `None`."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def _clean_answer_is_tail(tail: str) -> str:
    """Tidy the text after "The answer is": first line, no `:`/`$`/`\\(`/trailing period, units dropped."""
    answer = tail.split("\n", 1)[0].strip().lstrip(":").strip()
    answer = answer.rstrip(".").strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    answer = answer.strip("$").strip()
    if answer.startswith("\\$"):
        answer = answer[2:].strip()
    units = _NUMBER_WITH_UNITS_RE.match(answer)
    return units.group(1) if units else answer


def extract_final_answer(text: str) -> str | None:
    """Final answer of a solution, by string operations only (no sympy, no eval).

    The content of the last `\\boxed{...}` with balanced braces, else the text after the last "The answer is" (case
    insensitive; first line only, without a leading `:`, surrounding `$` or a trailing period; "18 dollars" becomes
    "18"), else `None`. The result is what gets graded and the cache key of [`MathVerifyGrader`].

    Args:
        text (`str`):
            A model completion or reference solution. Anything that is not a string gives `None`.

    Returns:
        `str` or `None`: The stripped answer, or `None` when there is none (or it is empty).
    """
    if not isinstance(text, str):
        return None
    boxed = _last_boxed_content(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    matches = list(_ANSWER_IS_RE.finditer(text))
    if matches:
        answer = _clean_answer_is_tail(text[matches[-1].end() :])
        if answer:
            return answer
    return None


def _gold_text(gold: str) -> str:
    """LaTeX text math-verify parses for a gold answer: wrapped in `\\boxed{}` unless already delimited."""
    gold = gold.strip()
    if "\\boxed" in gold or gold.startswith("$"):
        return gold
    return "\\boxed{" + gold + "}"


# ---------------------------------------------------------------------------------------------------------------------
# The worker side: runs only in worker processes (this file executed by `runpy.run_path`)
# ---------------------------------------------------------------------------------------------------------------------


class _SoftTimeout(BaseException):
    """Raised by the worker's interval timer. A BaseException, so math-verify's `except Exception` lets it through."""


_DENIED_AUDIT_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "subprocess.Popen",
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.link",
        "os.symlink",
        "os.truncate",
        "os.putenv",
        "os.unsetenv",
        "shutil.rmtree",
        "shutil.copyfile",
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.call_function",
        "webbrowser.open",
    }
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _deny_side_effects(event: str, args: tuple) -> None:
    """Audit hook of a worker: refuse process creation, file writes, sockets and native calls."""
    if event in _DENIED_AUDIT_EVENTS:
        raise PermissionError(f"grading worker: {event} is not allowed")
    if event == "open" and len(args) >= 3:
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        ):
            raise PermissionError("grading worker: opening files for writing is not allowed")


def _harden_worker(memory_limit: int) -> None:
    """Cap the worker's memory and install the audit hook (after math-verify and sympy are imported)."""
    sys.dont_write_bytecode = True
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):  # no `resource` module (Windows) or a stricter existing limit
        pass
    sys.addaudithook(_deny_side_effects)


def _grade_one_in_worker(answer: str, gold: str, parse, verify, gold_cache: dict) -> str:
    """Status of one (answer, gold) pair, computed with math-verify inside a worker."""
    if gold not in gold_cache:
        if len(gold_cache) > 4096:
            gold_cache.clear()
        gold_cache[gold] = parse(_gold_text(gold), parsing_timeout=None)
    gold_parsed = gold_cache[gold]
    if not gold_parsed:
        return "gold_unparsable"
    predicted = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    if not predicted:
        return "incorrect"
    return "correct" if verify(gold_parsed, predicted, timeout_seconds=None) else "incorrect"


def _worker_main(conn, timeout: float, memory_limit: int) -> None:
    """Loop of a worker process: receive lists of (answer, gold), send back one status per item."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # internal timeouts are disabled on purpose

    def on_alarm(signum, frame):
        raise _SoftTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    _harden_worker(memory_limit)
    gold_cache: dict = {}
    conn.send("ready")
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):  # the grader went away
            return
        if items is None:
            return
        for answer, gold in items:
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    status = _grade_one_in_worker(answer, gold, parse, verify, gold_cache)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _SoftTimeout:
                status = "timeout"
            except BaseException:  # RecursionError, MemoryError, PermissionError from the audit hook, ...
                status = "error"
            conn.send(status)


if __name__ == _WORKER_RUN_NAME:  # executed by runpy.run_path in a worker process
    _worker_main(_CONN, _TIMEOUT, _MEMORY_LIMIT)  # noqa: F821 (globals injected by the grader)


# ---------------------------------------------------------------------------------------------------------------------
# The calling side: a pool of workers with hard deadlines, and the cache
# ---------------------------------------------------------------------------------------------------------------------


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class _Worker:
    """One worker process, its pipe, and the batch it is working on."""

    def __init__(self, timeout: float):
        ctx = _mp_context()
        self.conn, child_conn = ctx.Pipe(duplex=True)
        init_globals = {"_CONN": child_conn, "_TIMEOUT": timeout, "_MEMORY_LIMIT": WORKER_MEMORY_LIMIT}
        self.process = ctx.Process(
            target=runpy.run_path,
            args=(os.path.abspath(__file__),),
            kwargs={"init_globals": init_globals, "run_name": _WORKER_RUN_NAME},
            daemon=True,
            name="trl-erprm-grader",
        )
        self.process.start()
        child_conn.close()
        self.ready = False
        self.batch: list[int] = []  # indices (into the pending keys) of the items sent, in order
        self.done = 0  # items of `batch` answered so far
        self.deadline = time.monotonic() + WORKER_START_TIMEOUT

    @property
    def busy(self) -> bool:
        return self.done < len(self.batch)

    def kill(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


class MathVerifyGrader:
    """Grade completions against gold answers with math-verify, in sandboxed worker processes, with a cache.

    The calling process extracts each completion's final answer with [`extract_final_answer`] (string operations
    only) and never imports math-verify. Unique (answer, gold) pairs are sent in batches to `num_workers` worker
    processes, which parse and verify them under a soft per-item timeout; the calling process kills and replaces a
    worker that overruns `timeout` plus a grace period. Workers start on the first call that needs one.

    Rules: a completion without a final answer is `"no_answer"` (never sent to a worker); an empty or missing gold is
    `"gold_unparsable"`. Duplicates within one call share one grading, whatever its status (so a hostile answer
    repeated across N rollouts costs one timeout); across calls, `"timeout"` and `"error"` are not cached (they may
    come from a loaded machine) and are graded again.

    Args:
        num_workers (`int`, *optional*, defaults to `1`):
            Number of worker processes.
        timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed per item (parsing the gold and the answer, and verifying). The worker is killed after
            `timeout + max(1, timeout / 2)` seconds on one item.
        cache (`bool`, *optional*, defaults to `True`):
            Whether identical (answer, gold) pairs are graded once, within a call and across calls. With `False`,
            every completion is sent to a worker (useful to measure the cache's effect).

    Example:
    ```python
    >>> with MathVerifyGrader(num_workers=2) as grader:
    ...     grader.grade(["so the answer is \\\\boxed{\\\\frac{1}{2}}", "The answer is 3"], ["0.5", "4"])
    [GradeResult(reward=1.0, status='correct'), GradeResult(reward=0.0, status='incorrect')]
    ```
    """

    def __init__(self, num_workers: int = 1, timeout: float = 5.0, cache: bool = True):
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self.num_workers = int(num_workers)
        self.timeout = float(timeout)
        self.cache = bool(cache)
        self.hard_timeout = self.timeout + max(1.0, self.timeout / 2)
        self._cache: dict[tuple[str, str], str] = {}
        self._workers: list[_Worker] = []
        self._stats: Counter = Counter()

    # -- public API ----------------------------------------------------------------------------------------------

    def grade(self, completions: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
        """Grade each completion against the gold answer at the same index.

        Args:
            completions (`Sequence[str]`):
                Model completions (or bare final answers). Non-strings (e.g. `None` for a model that returned no
                text) are graded `"no_answer"`.
            golds (`Sequence[str]`):
                Gold answers, same length: plain numbers (GSM8K) or LaTeX (MATH); a `\\boxed{}` or `$...$` gold is
                used as is.

        Returns:
            `list[GradeResult]`: One result per completion, in order.
        """
        completions, golds = list(completions), list(golds)
        if len(completions) != len(golds):
            raise ValueError(
                f"grade() got {len(completions)} completions but {len(golds)} gold answers: pass one gold answer per "
                "completion (repeat a problem's gold for each of its completions)."
            )
        statuses: list[str | None] = [None] * len(completions)
        to_send: list[tuple[str, str]] = []  # unique keys to grade (every row's key when the cache is off)
        rows_of: list[list[int]] = []  # rows waiting for each key of `to_send`
        position: dict[tuple[str, str], int] = {}
        for row, (completion, gold) in enumerate(zip(completions, golds)):
            self._stats["requests"] += 1
            answer = extract_final_answer(completion)
            if not isinstance(gold, str) or not gold.strip():
                statuses[row] = "gold_unparsable"
            elif answer is None:
                statuses[row] = "no_answer"
            if statuses[row] is not None:
                continue
            key = (answer, gold.strip())
            if self.cache and key in self._cache:
                statuses[row] = self._cache[key]
                self._stats["cache_hits"] += 1
            elif self.cache and key in position:
                rows_of[position[key]].append(row)
                self._stats["cache_hits"] += 1
            else:
                position[key] = len(to_send)
                to_send.append(key)
                rows_of.append([row])
        results = self._dispatch(to_send) if to_send else []
        for key, rows, status in zip(to_send, rows_of, results):
            if self.cache and status not in _RETRIED_STATUSES:
                self._cache[key] = status
            for row in rows:
                statuses[row] = status
        for status in statuses:
            self._stats[status] += 1
        return [GradeResult(1.0 if s == "correct" else 0.0, s) for s in statuses]

    def stats(self) -> dict:
        """Counters since the grader was created.

        Returns:
            `dict`: `requests` (completions passed to `grade`), `graded` (items math-verify actually graded),
            `cache_hits` (completions answered from the cache or from a duplicate in the same call), `timeouts`
            (items that overran, soft or hard), `worker_restarts` (workers killed and replaced), `cache_size`, and
            one count per status of [`GRADE_STATUSES`].
        """
        names = ("requests", "graded", "cache_hits", "timeouts", "worker_restarts")
        out = {name: self._stats[name] for name in names}
        out["cache_size"] = len(self._cache)
        out.update({status: self._stats[status] for status in GRADE_STATUSES})
        return out

    def close(self) -> None:
        """Stop the worker processes (they are restarted by the next call to `grade`)."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=2)
            worker.kill()
        self._workers = []

    def __enter__(self) -> MathVerifyGrader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- the pool --------------------------------------------------------------------------------------------------

    def _dispatch(self, items: list[tuple[str, str]]) -> list[str]:
        """Grade `items` in the workers; returns one status per item. Kills and replaces workers that overrun."""
        results: list[str | None] = [None] * len(items)
        queue = deque(range(len(items)))
        chunk = max(1, min(MAX_ITEMS_PER_MESSAGE, math.ceil(len(items) / (4 * self.num_workers))))
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.timeout))
        while queue or any(w.busy for w in self._workers):
            for worker in self._workers:
                if not worker.busy and queue:
                    worker.batch = [queue.popleft() for _ in range(min(chunk, len(queue)))]
                    worker.done = 0
                    try:
                        worker.conn.send([items[i] for i in worker.batch])
                    except OSError:  # the worker died while idle: fail nothing, retry the batch on a new one
                        queue.extendleft(reversed(worker.batch))
                        worker.batch = []
                        self._restart(worker)
                        continue
                    if worker.ready:
                        worker.deadline = time.monotonic() + self.hard_timeout
            busy = [w for w in self._workers if w.busy]
            now = time.monotonic()
            ready = wait([w.conn for w in busy], timeout=max(0.0, min(w.deadline for w in busy) - now))
            for worker in busy:
                if worker.conn in ready:
                    self._receive(worker, items, results, queue)
            now = time.monotonic()
            for i, worker in enumerate(self._workers):
                if worker.busy and now > worker.deadline and worker.conn not in ready:
                    status = "timeout" if worker.ready else "error"
                    self._replace(i, status, results, queue)
        self._stats["graded"] += len(items)
        self._stats["timeouts"] += results.count("timeout")
        return results

    def _receive(self, worker: _Worker, items, results: list, queue: deque) -> None:
        """Read every message a worker has sent; a worker that died fails its current item with `"error"`."""
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message == "ready":
                    worker.ready = True
                else:
                    results[worker.batch[worker.done]] = message
                    worker.done += 1
                worker.deadline = time.monotonic() + self.hard_timeout
        except (EOFError, OSError):
            if not worker.ready:
                self.close()
                raise RuntimeError(
                    "A grading worker exited before it was ready. If this runs in a script, put the script's code under "
                    "`if __name__ == '__main__':` (worker processes re-import the main module, and must not start "
                    "grading themselves); also check that math-verify is installed (`pip install math-verify`)."
                ) from None
            self._replace(self._workers.index(worker), "error", results, queue)

    def _replace(self, index: int, status: str, results: list, queue: deque) -> None:
        """Kill worker `index`, give its current item `status`, requeue the rest of its batch, start a new one."""
        worker = self._workers[index]
        current = worker.batch[worker.done]
        results[current] = status
        queue.extendleft(reversed(worker.batch[worker.done + 1 :]))
        self._restart(worker)

    def _restart(self, worker: _Worker) -> None:
        """Kill `worker` and put a fresh one in its place."""
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self.timeout)
        self._stats["worker_restarts"] += 1
