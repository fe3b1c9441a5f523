"""The `mnas` command line: thin, parses arguments, calls the library, prints.

This module holds the typer app and `main` (errors to exit codes); every area's commands live in
their own module of `mnas.cli`, each with a `register(app)` function, so this file stays small
and every area owns its commands. Those
modules import the torch-backed parts of the library inside the commands that use them, so
`mnas --help` and a usage error answer at once instead of after loading torch (3 s here).
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import traceback
from typing import NoReturn

import typer

from mnas.errors import Terminated, UserError, WriteFailed, kept, no_space

app = typer.Typer(
    name="mnas",
    help="Platform-aware neural architecture search (MnasNet): search space, models, latency, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules that add commands to `app`; each exposes register(app).
COMMAND_MODULES = (
    "mnas.cli.core",
    "mnas.cli.latency",
    "mnas.cli.train",
    "mnas.cli.search",
    "mnas.cli.supernet",
    "mnas.cli.store",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not built yet
            if exc.name == name:
                continue
            raise
        module.register(app)


_register_all()


def _usage_line(exc: typer.TyperException) -> str:
    """One line for a command-line usage error: what is wrong, and where to read the usage."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "mnas"
    text = " ".join(exc.format_message().split())
    return f"error: {where}: {text} (see '{where} --help')"


#: Set when SIGTERM arrived: typer turns any KeyboardInterrupt (Terminated included) into exit 130,
#: and a command that stopped on a signal exits 130 too, so the exit code is corrected here.
_TERMINATED = [False]


def _terminate(signum: int, frame: object) -> None:
    _TERMINATED[0] = True
    raise Terminated()


def _empty_value(args: list[str]) -> str | None:
    """One rule for every command: no value is empty (`--out ""` or `--out=`). A path option would
    read "" as the current folder (typer makes it `Path(".")`) and write there; no name, string or
    number of mnas is empty either."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and arg.endswith("="):
            return f"{arg[:-1]} was given an empty value; give a value (an empty path would mean the current folder)"
        if arg == "":
            where = f"{args[i - 1]} was given" if i and args[i - 1].startswith("-") else f"argument {i + 1} is"
            return f"{where} an empty value; give a value (an empty path would mean the current folder)"
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: every mistake is one line on stderr and exit code 2, never a traceback.

    typer (bounded in pyproject.toml) raises its own `TyperException` family for usage errors
    (unknown command or option, missing argument or value); `NoArgsIsHelpError` asks for the help.
    Anything else that escapes is a bug: one line naming it, the traceback only with MNAS_DEBUG=1.
    """
    # SIGTERM unwinds like Ctrl-C (stores close, children are stopped, the resume hint is printed);
    # long-running loops that checkpoint between steps install their own handlers on top.
    signal.signal(signal.SIGTERM, _terminate)
    empty = _empty_value(sys.argv[1:] if argv is None else argv)
    if empty:
        print(f"error: {empty}", file=sys.stderr)
        sys.exit(2)
    try:
        result = app(args=argv, prog_name="mnas", standalone_mode=False)
    except UserError as exc:
        after = kept(exc) if isinstance(exc, WriteFailed) else None
        print(f"error: {exc.short}; {after}" if isinstance(exc, WriteFailed) and after else f"error: {exc}",
              file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("terminated" if _TERMINATED[0] else "interrupted", file=sys.stderr)
        sys.exit(143 if _TERMINATED[0] else 130)  # 128 + SIGTERM / SIGINT
    except typer.TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            text = ctx.get_help()  # typer's rich help prints itself and returns ""
            if text.strip():
                print(text)
        else:
            print(_usage_line(exc), file=sys.stderr)
        sys.exit(2 if getattr(exc, "exit_code", 2) in (1, 2) else exc.exit_code)
    except OSError as exc:
        if no_space(exc):
            _no_space(exc)
        if exc.errno != errno.ENAMETOOLONG:
            _internal_error(exc)
        # Any command, any path: a component over the file system's limit (255 bytes on most).
        name = str(exc.filename or "")
        shown = f" ({name[:60]!r}{'...' if len(name) > 60 else ''})" if name else ""
        print(f"error: a file or folder name is too long{shown}: each part of a path may have at most 255 "
              "bytes; use a shorter name", file=sys.stderr)
        sys.exit(2)
    except UnicodeDecodeError as exc:  # a text input read elsewhere than mnas.textfiles
        print(f"error: an input file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8",
              file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a bug, not a user mistake: still no traceback by default
        if no_space(exc):  # SQLite's "database or disk is full"
            _no_space(exc)
        _internal_error(exc)
    code = result if isinstance(result, int) else 0
    sys.exit(143 if code == 130 and _TERMINATED[0] else code)  # 128 + SIGTERM, not SIGINT's 130


def _no_space(exc: BaseException) -> NoReturn:
    """A full disk (or quota, or file size limit) mid-work: one line naming the file and saying
    what the command kept and how to go on (`mnas.errors.keeps`)."""
    name = getattr(exc, "filename", None)
    where = f" (writing {name})" if name else ""
    after = kept(exc) or "free some space and run the command again"
    print(f"error: a write failed: {no_space(exc)}{where}; {after}", file=sys.stderr)
    sys.exit(2)


def _internal_error(exc: BaseException) -> NoReturn:
    if os.environ.get("MNAS_DEBUG"):
        traceback.print_exc()
    text = " ".join(str(exc).split())[:300]
    print(f"error: internal error {type(exc).__name__}: {text} (set MNAS_DEBUG=1 for the traceback "
          "and please report it)", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
