"""The `mnas` command line: thin, parses arguments, calls the library, prints.

Areas other than the core (latency, training, search) live in their own modules, each with a
`register(app)` function, so this file stays small and every area owns its commands.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from mnas.errors import UserError

app = typer.Typer(
    name="mnas",
    help="Platform-aware neural architecture search (MnasNet): search space, models, latency, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules that add commands to `app`; each exposes register(app).
COMMAND_MODULES = (
    "mnas.cli_core",
    "mnas.latency.cli",
    "mnas.cli_train",
    "mnas.cli_search",
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


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    try:
        result = app(args=argv, standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
