"""The grading worker: a separate Python process that parses and verifies answers with math-verify, sandboxed.

[`~trl_erprm.labeling.grading.MathVerifyGrader`] starts this file as a fresh interpreter
(`python -B -c <bootstrap> <this file>`), not through `multiprocessing`, so a worker never re-imports the caller's
`__main__` (a script, or the `trl-erprm` command with torch, transformers and TRL behind it): it imports the standard
library and math-verify, nothing else, and a grading script needs no `if __name__ == "__main__":` guard.

Protocol, one JSON value per line: the worker writes `"ready"` once math-verify is imported, then reads messages
`[timeout_seconds, [[answer, gold], ...]]` from its stdin and writes one status per item (see `GRADE_STATUSES` in
`grading.py`), in order; `null` or the end of stdin stops it. Its own stdout is redirected to stderr, so nothing
math-verify or sympy prints can corrupt the protocol.

Sandbox: each item runs under a soft timeout (`setitimer`, the message's `timeout_seconds`); the worker caps its
address space (`RLIMIT_AS`) and installs an audit hook that refuses to start processes, write files, open sockets or
load native libraries, so even an expression that reached `eval` could not act. The calling process also holds a
hard deadline and kills a worker that overruns it.

This module imports only the standard library at the top (math-verify is imported in [`worker_main`]).
"""

from __future__ import annotations

import json
import os
import signal
import sys


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


class _SoftTimeout(BaseException):
    """Raised by the worker's interval timer. A BaseException, so math-verify's `except Exception` lets it through."""


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


def gold_text(gold: str) -> str:
    """LaTeX text math-verify parses for a gold answer: wrapped in `\\boxed{}` unless already delimited.

    Args:
        gold (`str`):
            A gold answer: a plain number (GSM8K) or LaTeX (MATH).

    Returns:
        `str`: The text to parse.
    """
    gold = gold.strip()
    if "\\boxed" in gold or gold.startswith("$"):
        return gold
    return "\\boxed{" + gold + "}"


def grade_pair(answer: str, gold: str, parse, verify, gold_cache: dict) -> str:
    """Status of one (answer, gold) pair with math-verify's `parse` and `verify` (timeouts disabled: the caller's).

    A gold answer whose parse holds no mathematical expression (only the raw string math-verify falls back to, as
    for `x^2+`) is `"gold_unparsable"`: comparing strings to it would grade every answer `"incorrect"`.

    Args:
        answer (`str`):
            The extracted final answer.
        gold (`str`):
            The gold answer.
        parse (`callable`):
            `math_verify.parse`.
        verify (`callable`):
            `math_verify.verify`.
        gold_cache (`dict`):
            Parsed golds by text, shared across calls of this worker.

    Returns:
        `str`: `"correct"`, `"incorrect"` or `"gold_unparsable"`.
    """
    if gold not in gold_cache:
        if len(gold_cache) > 4096:
            gold_cache.clear()
        gold_cache[gold] = parse(gold_text(gold), parsing_timeout=None)
    gold_parsed = gold_cache[gold]
    if not any(not isinstance(value, str) for value in gold_parsed):
        return "gold_unparsable"
    predicted = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    if not predicted:
        return "incorrect"
    return "correct" if verify(gold_parsed, predicted, timeout_seconds=None) else "incorrect"


def worker_main(memory_limit: int) -> None:
    """Loop of a worker process: read `[timeout, items]` messages from stdin, write one status line per item.

    Args:
        memory_limit (`int`):
            Address-space cap in bytes.
    """
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed from here on goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer

    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # internal timeouts are disabled on purpose

    def on_alarm(signum, frame):
        raise _SoftTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    _harden_worker(memory_limit)
    gold_cache: dict = {}
    protocol.write(b'"ready"\n')
    while True:
        try:
            line = requests.readline()
        except (OSError, ValueError):  # the grader went away
            return
        message = json.loads(line) if line.strip() else None
        if message is None:
            return
        timeout, items = message
        for answer, gold in items:
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    status = grade_pair(answer, gold, parse, verify, gold_cache)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _SoftTimeout:
                status = "timeout"
            except BaseException:  # RecursionError, MemoryError, PermissionError from the audit hook, ...
                status = "error"
            try:
                protocol.write(json.dumps(status).encode() + b"\n")
            except OSError:  # the grader went away
                return


if __name__ == "__trl_erprm_grading_worker__":  # run by the grader's bootstrap; see the module docstring
    worker_main(int(sys.argv[2]))
