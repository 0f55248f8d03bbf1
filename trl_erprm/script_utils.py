r"""What every `trl-erprm` command and every example script shares: one argument parser, one rule for errors, one
check of the launch.

- [`make_parser`]: TRL's `TrlParser` (dataclass fields as flags, `--config file.yaml`) whose usage line names the
  command (`usage: trl-erprm label ...`), whose help shows a default such as `"\n"` escaped (`'\n'`), and which decodes
  the escapes `\n`, `\t`, `\r` and `\\` in every `*_separator` option: `--step_separator "\n\n"` (backslash-n twice,
  as bash passes it) is two newlines, on the command line and in a `--config` YAML file alike.
- [`run_command`] / [`run_script`]: an error the user can fix (a bad argument, a missing file, split or column, a busy
  job folder) is one line `<prog>: error: <message naming the fix>` with exit status 2 for a usage error (arguments
  that cannot work, [`UsageError`]) and 1 for a runtime one, instead of a traceback. Set `TRL_ERPRM_DEBUG=1` to get
  the traceback. Any other exception (a bug) keeps its traceback.
- [`check_launch`]: several processes launched for training, each of which would train alone (a CPU machine without
  `--use_cpu`): stop with the fix instead of training several models into one folder.

This module imports nothing heavy (TRL is imported when a parser is made), so `trl-erprm --help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any


__all__ = [
    "DEBUG_ENV",
    "UsageError",
    "check_launch",
    "decode_escapes",
    "make_parser",
    "run_command",
    "run_script",
    "shown_default",
]

#: Environment variable that turns the one-line errors of [`run_command`] back into tracebacks.
DEBUG_ENV = "TRL_ERPRM_DEBUG"
#: Options whose values are texts that end or join steps: their escapes are decoded (see [`decode_escapes`]).
ESCAPED_OPTION_SUFFIX = "_separator"
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = re.compile(r"\\([\\nrt])")
ESCAPE_HELP = r"Escapes are decoded: '\n' is a newline, '\t' a tab, '\\' a backslash."


class UsageError(ValueError):
    """Arguments that cannot work (a wrong value, a contradiction, a launch that would do the wrong thing): the
    command exits with status 2 and one line naming the fix."""


def decode_escapes(text: str) -> str:
    r"""Decode the escapes `\n`, `\t`, `\r` and `\\` of a command-line text; any other backslash stays as it is.

    Bash passes `"\n"` (and `'\n'`) as a backslash followed by `n`, so this is how a newline reaches a separator
    option. A text that already holds real newlines (a Python default, a YAML double-quoted `"\n"`) is unchanged.

    Args:
        text (`str`):
            The text as given.

    Returns:
        `str`: The decoded text, e.g. `"\\n\\n"` (4 characters) gives `"\n\n"` (2 characters), `"\\\\n"` gives `"\\n"`
        (a backslash and `n`), `"\\boxed"` stays `"\\boxed"`.
    """
    return _ESCAPE.sub(lambda match: _ESCAPES[match.group(1)], text)


def shown_default(value: Any) -> str:
    r"""How a default is printed in `--help`: a text with invisible characters (a newline, a leading space, an empty
    text) as its Python literal (`'\n'`, `' ки'`, `''`), anything else as `str(value)`.

    Args:
        value (`Any`):
            The default.

    Returns:
        `str`: The printed default.
    """
    if isinstance(value, str) and (not value or not value.isprintable() or value != value.strip()):
        return repr(value)
    return str(value)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`ArgumentDefaultsHelpFormatter` that prints a default with invisible characters escaped ([`shown_default`])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and "%(default)" in text and isinstance(action.default, str):
            text = text.replace("%(default)s", shown_default(action.default).replace("%", "%%"))
        return text


@functools.cache
def _parser_class() -> type:
    """The parser class, built on first use (it imports TRL)."""
    from trl import TrlParser

    class ScriptParser(TrlParser):
        """`TrlParser` with the conventions of this module: escaped separators, escaped defaults in the help, and
        argument validation errors raised as [`UsageError`]."""

        def add_argument(self, *args, **kwargs):
            dest = kwargs.get("dest") or next((a.lstrip("-") for a in args if a.startswith("--")), "")
            if dest.replace("-", "_").endswith(ESCAPED_OPTION_SUFFIX) and "action" not in kwargs:
                kwargs["help"] = f"{kwargs.get('help') or ''} {ESCAPE_HELP}".strip()
            return super().add_argument(*args, **kwargs)

        def parse_known_args(self, args=None, namespace=None):
            namespace, remaining = super().parse_known_args(args, namespace)
            for dest, value in vars(namespace).items():
                if dest.endswith(ESCAPED_OPTION_SUFFIX) and isinstance(value, str):
                    setattr(namespace, dest, decode_escapes(value))
            return namespace, remaining

        def parse_args_and_config(self, *args, **kwargs):
            try:
                return super().parse_args_and_config(*args, **kwargs)
            except UsageError:
                raise
            except ValueError as error:  # a dataclass's __post_init__ or the --config file rejected a value
                raise UsageError(str(error)) from error

    return ScriptParser


def make_parser(dataclass_types: Iterable[type] | type, prog: str | None = None, **kwargs):
    r"""The argument parser of a command or script: a `trl.TrlParser` over `dataclass_types` with this module's
    conventions.

    - Usage line: `prog`, by default the running program (`trl-erprm <command>` under the `trl-erprm` command, whose
      dispatcher sets it for every subcommand; the script's name for an example).
    - Separators: every `*_separator` option decodes `\n`, `\t`, `\r` and `\\` ([`decode_escapes`]), from the
      command line and from `--config` alike; its help says so.
    - Help: defaults are shown, texts with invisible characters escaped (`(default: '\n')`).
    - Errors: a `ValueError` raised while building the dataclasses (their `__post_init__` checks) or reading the
      `--config` file becomes a [`UsageError`] (exit status 2 under [`run_command`]).

    Args:
        dataclass_types (`type` or `Iterable[type]`):
            The dataclasses whose fields are the options (TRL's convention: script arguments, a config, `ModelConfig`).
        prog (`str`, *optional*):
            The program name of the usage line; by default from `sys.argv[0]`.
        **kwargs:
            Passed on to `TrlParser` (`argparse.ArgumentParser` options such as `description`).

    Returns:
        `trl.TrlParser`: The parser; `parse_args_and_config(argv)` returns one instance per dataclass.
    """
    kwargs.setdefault("formatter_class", _HelpFormatter)
    return _parser_class()(dataclass_types, prog=prog, **kwargs)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that carry a message for the user (what to fix), not a bug."""
    from .jobs import JobFolderError

    return (ValueError, OSError, ImportError, FloatingPointError, JobFolderError)


def _report(prog: str, error: BaseException) -> None:
    message = str(error).strip() or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)


def run_command(main: Callable[..., Any], parser=None, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a command's `main` and turn the errors a user can fix into one line and an exit status.

    Args:
        main (`Callable`):
            The command. Called as `main(*parser.parse_args_and_config(argv))` when `parser` is given, else `main()`.
        parser (`trl.TrlParser`, *optional*):
            The parser of `main`'s arguments (from [`make_parser`]); parsing errors are reported like `main`'s own.
        argv (`list[str]`, *optional*):
            Arguments to parse; defaults to `sys.argv[1:]`.
        prog (`str`, *optional*):
            Name printed before an error; defaults to `parser.prog` or the running program.

    Returns:
        `int`: `main`'s return value if it is an `int`, else 0; 2 after a [`UsageError`]; 1 after another error the
        user can fix (`ValueError`, `OSError` such as a missing file, `ImportError` of an optional dependency,
        `FloatingPointError`, [`~trl_erprm.jobs.JobFolderError`]). Other exceptions propagate with their traceback,
        and so does every exception when the environment variable `TRL_ERPRM_DEBUG` is set (to anything but `0`).
    """
    prog = prog or (parser.prog if parser is not None else os.path.basename(sys.argv[0]))
    debug = os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    try:
        result = main() if parser is None else main(*parser.parse_args_and_config(argv))
    except UsageError as error:
        if debug:
            raise
        _report(prog, error)
        return 2
    except Exception as error:
        if debug or not isinstance(error, _user_error_types()):
            raise
        _report(prog, error)
        return 1
    finally:
        _close_process_group()
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _close_process_group() -> None:
    """Destroy the `torch.distributed` process group of an `accelerate launch` run, if one was set up.

    Left to interpreter shutdown, gloo's worker threads are torn down in no particular order and a process can abort
    ("terminate called without an active exception", exit status -6) after its work is done and saved.
    """
    dist = sys.modules.get("torch.distributed")  # never import torch here: a command that did not use it is done
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_script(main: Callable[..., Any], parser=None, argv: list[str] | None = None) -> None:
    """Entry point of an example script: [`run_command`], then exit with its status.

    Args:
        main (`Callable`):
            The script's `main`, called with the parsed dataclasses when `parser` is given.
        parser (`trl.TrlParser`, *optional*):
            The script's parser (from [`make_parser`]).
        argv (`list[str]`, *optional*):
            Arguments; defaults to `sys.argv[1:]`.

    Raises:
        `SystemExit`: Always, with the exit status of [`run_command`].
    """
    sys.exit(run_command(main, parser, argv))


def check_launch(args) -> None:
    """Stop a training launch whose processes would each train alone.

    `accelerate launch --multi_gpu --num_processes 2 script.py ...` on a machine without GPUs, without `--use_cpu`,
    starts two processes that each see a world of one (no process group) and train two separate models into the same
    `output_dir`. With `--use_cpu` (`TrainingArguments.use_cpu`) the same launch trains one data-parallel model over
    gloo. Call this after parsing, before loading anything; it sets up the devices (`args.device`), which the
    trainer would do anyway.

    Args:
        args (`transformers.TrainingArguments`):
            The training arguments (any TRL or trl-erprm config).

    Raises:
        [`UsageError`]: When the launcher started several processes (`WORLD_SIZE > 1`) but the training world has
            one process.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched <= 1:
        return
    args.device  # noqa: B018 - sets up the distributed state, as the trainer does
    if args.world_size > 1:
        return
    reason = "use_cpu is False and no GPU was found" if not args.use_cpu else "no process group could be set up"
    raise UsageError(
        f"{launched} processes were launched (WORLD_SIZE={launched}) but each trains alone ({reason}): they would "
        f"write {launched} separate models to {args.output_dir}. On a machine without GPUs add `--use_cpu` (the "
        f"processes then train one model together over gloo: `accelerate launch --multi_gpu --num_processes "
        f"{launched} <script> ... --use_cpu`), or launch one process (`accelerate launch --config_file "
        "examples/accelerate_configs/cpu.yaml <script> ...`)."
    )
