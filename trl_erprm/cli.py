"""The `trl-erprm` command line: `trl-erprm quickstart | label | bon | stepeval | search | raft ...`."""

from __future__ import annotations

import sys

from .script_utils import DEBUG_ENV, run_command


def _quickstart(argv: list[str]) -> int:
    from .quickstart.pipeline import quickstart_main

    return quickstart_main(argv)


def _bon(argv: list[str]) -> int:
    from .evaluation import bon_main

    bon_main(argv)
    return 0


def _stepeval(argv: list[str]) -> int:
    from .evaluation import stepeval_main

    stepeval_main(argv)
    return 0


def _search(argv: list[str]) -> int:
    from .search import search_main

    search_main(argv)
    return 0


def _raft(argv: list[str]) -> int:
    from .raft import raft_main

    return raft_main(argv)


def _label(argv: list[str]) -> int:
    from .labeling.labeler import cli_main

    return cli_main(argv)


COMMANDS = {
    "quickstart": _quickstart,
    "label": _label,
    "bon": _bon,
    "stepeval": _stepeval,
    "search": _search,
    "raft": _raft,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trl-erprm` command.

    Every subcommand gets the same treatment, whatever its module: its parser's usage line reads `trl-erprm
    <command> ...` (the program name is set while it runs), and an error the user can fix is one line with exit
    status 2 (usage) or 1 (runtime) instead of a traceback (`TRL_ERPRM_DEBUG=1` shows the traceback; see
    [`~trl_erprm.script_utils.run_command`]).

    Args:
        argv (`list[str]`, *optional*):
            Arguments (without the program name); defaults to `sys.argv[1:]`.

    Returns:
        `int`: The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: trl-erprm {{{','.join(COMMANDS)}}} [options]   (trl-erprm <command> --help for details)")
        print(f"Errors are one line; set {DEBUG_ENV}=1 for the traceback.")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"trl-erprm: error: unknown command {argv[0]!r}; choose one of {list(COMMANDS)}.", file=sys.stderr)
            return 2
        return 0
    command, prog = COMMANDS[argv[0]], f"trl-erprm {argv[0]}"
    saved = list(sys.argv)
    # While it runs, the subcommand is the program: argparse names it in the usage line (`usage: trl-erprm label
    # ...`), and a job folder records the command as typed.
    sys.argv[:] = [prog, *argv[1:]]
    try:
        return run_command(lambda: command(argv[1:]), prog=prog)
    finally:
        sys.argv[:] = saved


if __name__ == "__main__":
    sys.exit(main())
