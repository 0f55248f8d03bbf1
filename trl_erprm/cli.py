"""The `trl-erprm` command line: `trl-erprm quickstart | label | bon | stepeval | search | raft ...`."""

from __future__ import annotations

import sys


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

    Args:
        argv (`list[str]`, *optional*):
            Arguments (without the program name); defaults to `sys.argv[1:]`.

    Returns:
        `int`: The exit status.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: trl-erprm {{{','.join(COMMANDS)}}} [options]   (trl-erprm <command> --help for details)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from .jobs import JobFolderError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except JobFolderError as error:  # an environment fault (folder held, read-only, full): one line with the fix
        print(f"trl-erprm {argv[0]}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
