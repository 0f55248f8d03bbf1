"""The `trl-erprm` command line: `trl-erprm quickstart | label | bon | stepeval | search ...`."""

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


def _label(argv: list[str]) -> int:
    from .labeling.labeler import cli_main

    return cli_main(argv)


COMMANDS = {"quickstart": _quickstart, "label": _label, "bon": _bon, "stepeval": _stepeval, "search": _search}


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
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: trl-erprm {{{','.join(COMMANDS)}}} [options]   (trl-erprm <command> --help for details)")
        print(f"Errors are one line; set {DEBUG_ENV}=1 for the traceback.")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    command, prog = COMMANDS[argv[0]], f"trl-erprm {argv[0]}"
    program = sys.argv[0] if sys.argv else None
    sys.argv[:1] = [prog]  # argparse names the program after sys.argv[0]: `usage: trl-erprm label ...`
    try:
        return run_command(lambda: command(argv[1:]), prog=prog)
    finally:
        sys.argv[:1] = [] if program is None else [program]


if __name__ == "__main__":
    sys.exit(main())
