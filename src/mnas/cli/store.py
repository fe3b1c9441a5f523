"""Store commands: `mnas store check RUN` and `mnas store recover RUN [--out NEW_RUN]`.

A run store damaged on disk (truncated, zeroed, overwritten in places) makes `mnas search
--resume`, `mnas report` and `mnas best` stop with one line and leave the file as it is; these
commands say what is still readable and copy it into a new run. `check` runs the readers' own
validation on every row, so it calls damaged whatever one of them would refuse.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from mnas.errors import UserError
from mnas.search.config import load_config

console = Console(stderr=True)
store_app = typer.Typer(help="Check a run's trial store, or salvage a damaged one into a new run.",
                        no_args_is_help=True)


@store_app.command("check")
def check(run_dir: Path = typer.Argument(..., help="A search run directory.")) -> None:
    """Say whether RUN's trials.sqlite is intact and how many trials can be read (exit 1 if damaged:
    whatever `mnas report` or `mnas search --resume` would refuse)."""
    from mnas.search.salvage import salvage  # lazy: torch (see mnas.cli)
    from mnas.search.store import DB_NAME

    path = run_dir / DB_NAME
    if not path.is_file():
        raise UserError(f"{run_dir} holds no search run (no {DB_NAME})")
    found = salvage(path)
    if found.damaged:
        how = ("Read it with the mnas that wrote it" if found.newer
               else f"Salvage it with: mnas store recover {run_dir}")
        typer.echo(f"{path}: DAMAGED ({'; '.join(found.reasons())}); {found.summary()}. {how}")
        raise typer.Exit(1)
    typer.echo(f"{path}: intact; {found.summary()}")


@store_app.command("recover")
def recover(
    run_dir: Path = typer.Argument(..., help="The run whose store is damaged (it is only read)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="New run directory (default RUN-recovered)."),
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="The search YAML, used only when the stored config is unreadable "
                                            "(refused if it searches another space than the stored one)."),
) -> None:
    """Copy every readable trial of RUN into a new run that `mnas report` and `mnas best` can read
    (built beside NEW_RUN and renamed into place when complete)."""
    from mnas.search.salvage import recover_store  # lazy: torch (see mnas.cli)
    from mnas.search.store import DB_NAME

    stored = load_config(config).model_dump(mode="json") if config is not None else None
    result = recover_store(run_dir, out, stored)
    resume = (f"it can be resumed: mnas search --resume {result.out_dir}" if result.resumable
              else "its strategy state did not survive whole, so it can be reported but not resumed")
    typer.echo(f"recovered into {result.out_dir / DB_NAME}: {result.salvage.summary()}; {resume}")
    console.print(f"next: mnas report {result.out_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
