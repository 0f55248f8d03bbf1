"""Sandboxed math-verify grading of final answers against gold answers.

math-verify (`parse`, `verify`) hands regex matches to sympy's `parse_expr`, which evaluates code, and its timeouts
rely on `signal.alarm`, which only works in the main thread. Model output is untrusted, so this module never imports
math-verify in the calling process: the calling process only does bounded string work
([`~trl_erprm.labeling.answers.extract_final_answer`], the cache), and every `parse` / `verify` call (the gold
answer's too) runs in a small pool of worker processes that [`MathVerifyGrader`] manages itself:

- a worker is a fresh interpreter running `_grading_worker.py` (started with `subprocess`, not `multiprocessing`), so
  it imports the standard library and math-verify only: never `trl_erprm`, torch, or the caller's `__main__`. A
  script that grades needs no `if __name__ == "__main__":` guard, and a worker starts as fast from the `trl-erprm`
  command as from a bare script;
- in the worker, each item runs under a soft timeout (`setitimer`) and the calling process holds a hard deadline: a
  worker that overruns it (for example stuck in a C-level big-integer power that ignores signals) is killed and
  replaced. An item that timed out is graded once more with the longer `retry_timeout` before it gets the status
  `"timeout"`, which is never a wrong answer: callers leave it out and count it;
- the worker caps its address space (`RLIMIT_AS`) and installs an audit hook that refuses to start processes, write
  files, open sockets or load native libraries, so even an expression that reached `eval` could not act;
- identical (extracted answer, gold) pairs are graded once: duplicates of one call are dispatched once and results
  are cached across calls.

The worker grades `\\boxed{<answer>}` against the gold answer, itself wrapped in `\\boxed{}` unless it already holds
`\\boxed` or `$` (GSM8K golds are plain numbers, MATH golds are LaTeX).
"""

from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .answers import braces_balanced, extract_final_answer


__all__ = ["GRADE_STATUSES", "GradeResult", "MathVerifyGrader", "extract_final_answer"]

GRADE_STATUSES = ("correct", "incorrect", "no_answer", "timeout", "gold_unparsable", "error")

#: Items sent to a worker in one message (results come back one by one, so a hung item is identified).
MAX_ITEMS_PER_MESSAGE = 32
#: Address-space cap of a worker process, in bytes.
WORKER_MEMORY_LIMIT = 4 * 1024**3
#: Seconds a new worker may take to import math-verify before it counts as failed.
WORKER_START_TIMEOUT = 120.0
#: Statuses that may come from the machine rather than the answer (load, a killed worker): shared by the duplicates
#: of one call but not cached, so a later call grades the pair again.
_RETRIED_STATUSES = ("timeout", "error")
_WORKER_FILE = str(Path(__file__).with_name("_grading_worker.py"))
# Runs the worker file without putting its folder (or the current one) on sys.path, so nothing shadows a module.
_BOOTSTRAP = "import runpy, sys; del sys.path[0]; runpy.run_path(sys.argv[1], run_name='__trl_erprm_grading_worker__')"


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one completion.

    Args:
        reward (`float`):
            `1.0` if the completion's final answer is equivalent to the gold answer, else `0.0`. Only meaningful for
            `"correct"`, `"incorrect"` and `"no_answer"`; the other statuses are not verdicts on the answer and must
            be left out (counted), never read as a wrong answer.
        status (`str`):
            One of [`GRADE_STATUSES`]: `"correct"`, `"incorrect"` (an answer that is wrong or that math-verify cannot
            parse), `"no_answer"` (no final answer could be extracted, see
            [`~trl_erprm.labeling.answers.extract_final_answer`]), `"timeout"` (parsing or verification overran the
            timeout twice: once with `timeout`, once with `retry_timeout`), `"gold_unparsable"` (the gold answer is
            empty, has unbalanced braces or holds no expression math-verify can parse) or `"error"` (the worker
            raised or died on this item).
    """

    reward: float
    status: str


class _Worker:
    """One worker process, its pipes, and the batch it is working on."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-B", "-c", _BOOTSTRAP, _WORKER_FILE, str(WORKER_MEMORY_LIMIT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        os.set_blocking(self.process.stdout.fileno(), False)
        self.buffer = b""
        self.ready = False
        self.batch: list[int] = []  # indices (into the pending keys) of the items sent, in order
        self.done = 0  # items of `batch` answered so far
        self.hard_timeout = 0.0  # seconds allowed per item of the current batch before the worker is killed
        self.deadline = time.monotonic() + WORKER_START_TIMEOUT

    @property
    def busy(self) -> bool:
        return self.done < len(self.batch)

    def send(self, message) -> None:
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def messages(self) -> list:
        """Every complete message available now; raises `EOFError` when the worker has exited."""
        chunks = []
        while True:
            try:
                data = os.read(self.process.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            if not data:
                raise EOFError
            chunks.append(data)
        self.buffer += b"".join(chunks)
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class MathVerifyGrader:
    """Grade completions against gold answers with math-verify, in sandboxed worker processes, with a cache.

    The calling process extracts each completion's final answer with
    [`~trl_erprm.labeling.answers.extract_final_answer`] (bounded string operations) and never imports math-verify.
    Unique (answer, gold) pairs are sent in batches to `num_workers` worker processes, which parse and verify them
    under a soft per-item timeout; the calling process kills and replaces a worker that overruns `timeout` plus a
    grace period. An item that timed out is graded once more with `retry_timeout`; if it times out again its status
    is `"timeout"` (not a wrong answer). Workers start on [`start`] (in the background: call it before loading a
    model) or on the first call that needs one; they import nothing but math-verify and the standard library.

    Rules: a completion without a final answer is `"no_answer"` (never sent to a worker); an empty, missing or
    unbalanced gold is `"gold_unparsable"`. Duplicates within one call share one grading, whatever its status (so a
    hostile answer repeated across N rollouts costs one timeout); across calls, `"timeout"` and `"error"` are not
    cached (they may come from a loaded machine) and are graded again.

    Thread safety: one grader may be shared by several threads (a thread pool over problems, reward functions run
    concurrently by TRL's async GRPO). Calls to [`grade`], [`start`] and [`close`] are serialised by a lock, so each
    caller gets exactly its own verdicts; concurrent calls wait for each other (for parallel grading, give one grader
    more `num_workers`, or give each thread its own grader).

    Args:
        num_workers (`int`, *optional*, defaults to `1`):
            Number of worker processes.
        timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed per item (parsing the gold and the answer, and verifying). The worker is killed after
            `timeout + max(1, timeout / 2)` seconds on one item.
        cache (`bool`, *optional*, defaults to `True`):
            Whether identical (answer, gold) pairs are graded once, within a call and across calls. With `False`,
            every completion is sent to a worker (useful to measure the cache's effect).
        retry_timeout (`float`, *optional*):
            Seconds allowed on the one retry of an item that timed out; defaults to `4 * timeout`. `0` disables the
            retry.

    Raises:
        `ValueError`: `num_workers < 1`, or a timeout that is not a positive finite number of seconds.
        `RuntimeError`: (from [`grade`]) a worker exited before it was ready, e.g. math-verify is not installed.

    Example:
    ```python
    >>> with MathVerifyGrader(num_workers=2) as grader:
    ...     grader.grade(["so the answer is \\\\boxed{\\\\frac{1}{2}}", "The answer is 3"], ["0.5", "4"])
    [GradeResult(reward=1.0, status='correct'), GradeResult(reward=0.0, status='incorrect')]
    ```
    """

    def __init__(
        self, num_workers: int = 1, timeout: float = 5.0, cache: bool = True, retry_timeout: float | None = None
    ):
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        retry_timeout = 4 * timeout if retry_timeout is None else retry_timeout
        if not (isinstance(retry_timeout, (int, float)) and math.isfinite(retry_timeout) and retry_timeout >= 0):
            raise ValueError(f"retry_timeout must be a number of seconds >= 0, got {retry_timeout!r}.")
        self.num_workers = int(num_workers)
        self.timeout = float(timeout)
        self.retry_timeout = float(retry_timeout)
        self.cache = bool(cache)
        self._cache: dict[tuple[str, str], str] = {}
        self._workers: list[_Worker] = []
        self._owner = os.getpid()  # a forked child must not talk to (or kill) its parent's workers
        self._stats: Counter = Counter()
        self._lock = threading.RLock()

    # -- public API ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker processes now, without waiting for them: they import math-verify in the background
        while the caller does other work (e.g. loads a model). Idempotent.
        """
        with self._lock:
            self._forget_workers_of_parent()
            while len(self._workers) < self.num_workers:
                self._workers.append(_Worker())

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
        answers = [extract_final_answer(completion) for completion in completions]  # no shared state: outside the lock
        with self._lock:
            statuses = self._grade_locked(answers, golds)
        return [GradeResult(1.0 if s == "correct" else 0.0, s) for s in statuses]

    def stats(self) -> dict:
        """Counters since the grader was created.

        Returns:
            `dict`: `requests` (completions passed to `grade`), `graded` (items math-verify actually graded, retries
            included), `cache_hits` (completions answered from the cache or from a duplicate in the same call),
            `retries` (items graded again after a timeout), `timeouts` (items that overran, soft or hard, before any
            retry), `worker_restarts` (workers killed and replaced), `cache_size`, and one count per status of
            [`GRADE_STATUSES`] (final statuses: `timeout` counts the items that timed out on their retry too).
        """
        with self._lock:
            names = ("requests", "graded", "cache_hits", "retries", "timeouts", "worker_restarts")
            out = {name: self._stats[name] for name in names}
            out["cache_size"] = len(self._cache)
            out.update({status: self._stats[status] for status in GRADE_STATUSES})
            return out

    def close(self) -> None:
        """Stop the worker processes (they are restarted by the next call to `grade`)."""
        with self._lock:
            self._forget_workers_of_parent()
            for worker in self._workers:
                try:
                    worker.send(None)
                except (OSError, ValueError):
                    pass
            for worker in self._workers:
                try:
                    worker.process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
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

    # -- grading under the lock ----------------------------------------------------------------------------------

    def _forget_workers_of_parent(self) -> None:
        """In a process forked after the workers started, drop them (they belong to the parent) and start afresh."""
        if self._owner != os.getpid():
            self._workers, self._owner = [], os.getpid()

    def _grade_locked(self, answers: list[str | None], golds: list) -> list[str]:
        statuses: list[str | None] = [None] * len(answers)
        to_send: list[tuple[str, str]] = []  # unique keys to grade (every row's key when the cache is off)
        rows_of: list[list[int]] = []  # rows waiting for each key of `to_send`
        position: dict[tuple[str, str], int] = {}
        for row, (answer, gold) in enumerate(zip(answers, golds)):
            self._stats["requests"] += 1
            if not isinstance(gold, str) or not gold.strip() or not braces_balanced(gold):
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
        results = self._dispatch(to_send, self.timeout) if to_send else []
        timed_out = [k for k, status in enumerate(results) if status == "timeout"]
        if timed_out and self.retry_timeout > 0:
            self._stats["retries"] += len(timed_out)
            for k, status in zip(timed_out, self._dispatch([to_send[k] for k in timed_out], self.retry_timeout)):
                results[k] = status
        for key, rows, status in zip(to_send, rows_of, results):
            if self.cache and status not in _RETRIED_STATUSES:
                self._cache[key] = status
            for row in rows:
                statuses[row] = status
        for status in statuses:
            self._stats[status] += 1
        return statuses

    # -- the pool --------------------------------------------------------------------------------------------------

    def _dispatch(self, items: list[tuple[str, str]], timeout: float) -> list[str]:
        """Grade `items` in the workers with a per-item `timeout`; one status per item. Kills and replaces workers
        that overrun."""
        results: list[str | None] = [None] * len(items)
        queue = deque(range(len(items)))
        chunk = max(1, min(MAX_ITEMS_PER_MESSAGE, math.ceil(len(items) / (4 * self.num_workers))))
        hard_timeout = timeout + max(1.0, timeout / 2)
        self.start()
        while queue or any(w.busy for w in self._workers):
            for worker in list(self._workers):
                if not worker.busy and queue:
                    worker.batch = [queue.popleft() for _ in range(min(chunk, len(queue)))]
                    worker.done, worker.hard_timeout = 0, hard_timeout
                    try:
                        worker.send([timeout, [list(items[i]) for i in worker.batch]])
                    except OSError:  # the worker died while idle: fail nothing, retry the batch on a new one
                        queue.extendleft(reversed(worker.batch))
                        worker.batch = []
                        self._restart(worker)
                        continue
                    # A worker still importing math-verify keeps its start deadline, but never less than one item's.
                    now = time.monotonic()
                    worker.deadline = now + hard_timeout if worker.ready else max(worker.deadline, now + hard_timeout)
            busy = [w for w in self._workers if w.busy]
            ready = set()
            with selectors.DefaultSelector() as selector:
                for worker in busy:
                    selector.register(worker.process.stdout, selectors.EVENT_READ, worker)
                wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = {id(key.data) for key, _ in selector.select(timeout=wait)}
            for worker in busy:
                if id(worker) in ready:
                    self._receive(worker, results, queue)
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.busy and now > worker.deadline and id(worker) not in ready:
                    self._replace(worker, "timeout" if worker.ready else "error", results, queue)
        self._stats["graded"] += len(items)
        self._stats["timeouts"] += results.count("timeout")
        return results

    def _receive(self, worker: _Worker, results: list, queue: deque) -> None:
        """Read every message a worker has sent; a worker that died fails its current item with `"error"`."""
        try:
            for message in worker.messages():
                if message == "ready":
                    worker.ready = True
                else:
                    results[worker.batch[worker.done]] = message
                    worker.done += 1
                worker.deadline = time.monotonic() + worker.hard_timeout
        except (EOFError, ValueError):
            if not worker.ready:
                self.close()
                raise RuntimeError(
                    f"A grading worker ({sys.executable} running {_WORKER_FILE}) exited before it was ready: check "
                    "that math-verify is installed in that environment (`pip install math-verify`); the worker's "
                    "error output is above."
                ) from None
            self._replace(worker, "error", results, queue)

    def _replace(self, worker: _Worker, status: str, results: list, queue: deque) -> None:
        """Kill `worker`, give its current item `status`, requeue the rest of its batch, start a new one."""
        results[worker.batch[worker.done]] = status
        queue.extendleft(reversed(worker.batch[worker.done + 1 :]))
        self._restart(worker)

    def _restart(self, worker: _Worker) -> None:
        """Kill `worker` and put a fresh one in its place."""
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker()
        self._stats["worker_restarts"] += 1
