"""Output paths checked before work starts, and files replaced only when complete.

Every command that writes checks its outputs here first, so a read-only folder, a file where a
folder should be, or an existing result that would be overwritten is one clear line before any
minute of work is spent, and an interrupted write never leaves a half file where a good one was.

One way to write an output:

- `output_file(path, what, force=...)` before any work: not empty, not a folder, not a symbolic
  link (mnas never writes through a link it did not make: the link's target could be anything),
  not a file a run needs (`RUN_FILES`, never replaced, even with --force), not an input of the
  same command, and an existing file only with `force` (the caller offers it as --force).
- `write_bytes` / `write_text` / `replace_when_done` / `write_via` to write it: a temporary file in
  the same folder, renamed over the output only when complete (`os.replace` replaces a link
  itself, never its target). A full disk or any other OSError is one line naming the path and
  saying the previous file was kept. Every file mnas replaces atomically goes through these
  (tables, supernets, model files for measuring, reports, exports); the temporary file is created
  with the ordinary permissions (the umask's), like the file it replaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from mnas.errors import UserError, WriteFailed

#: Files a run needs to go on (resume, report, search): no output ever replaces them.
RUN_FILES = frozenset({"checkpoint.pt", "trials.sqlite", "trials.sqlite-wal", "trials.sqlite-shm", "supernet.pt",
                       "metrics.jsonl", ".writer.lock"})


def writable_dir(path: str | Path, what: str, *, create: bool = True) -> Path:
    """`path` is, or can be made, a folder this process may write into (created if missing,
    unless `create` is False: then only checked)."""
    if str(path) == "":
        raise UserError(f"{what} is empty; give a folder name")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a folder; choose another path")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {p} cannot be made: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p} cannot be written ({parent} is not writable); choose a folder you can write to")
    if not create:
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be created ({exc.strerror or exc}); choose another folder") from None
    return p


def new_dir(path: str | Path, what: str, *, create: bool = True) -> Path:
    """A folder for a new run: writable (as `writable_dir`) and new or empty, so a run never mixes
    its files with what a folder already holds (a typo of --out should not fill ~/Documents)."""
    p = writable_dir(path, what, create=False)
    if p.is_dir():
        held = sorted(c.name for c in p.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise UserError(f"{what} {p} is not empty (it holds {shown}); a new run needs a new or empty folder")
    return writable_dir(p, what) if create else p


def output_file(path: str | Path, what: str, *, force: bool = False, inputs: Iterable[str | Path] = (),
                create_folder: bool = True) -> Path:
    """Check that `path` may be written as a file, before any work (see the module doc).

    `force`: an existing regular file may be replaced (the caller's --force, or a command that
    regenerates its own outputs). `inputs`: files the command reads; the output may not be one.
    `create_folder`: make the missing folders now (else only check that they could be made)."""
    if str(path) == "":
        raise UserError(f"{what} is empty; give a file name")
    p = Path(path).expanduser()
    if p.is_symlink():
        raise UserError(f"{what} {p} is a symbolic link (to {os.readlink(p)}); mnas does not write through links: "
                        "remove the link or choose another name")
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a file name inside it")
    exists = p.exists()
    if exists and not p.is_file():
        raise UserError(f"{what} {p} exists and is not a regular file; choose another name")
    if exists and p.name in RUN_FILES:
        raise UserError(f"{what} {p} is a file the run needs ({p.name}); it is never replaced, not even with --force: "
                        "choose another name")
    for source in inputs:
        with contextlib.suppress(OSError):
            if exists and os.path.samefile(p, source):
                raise UserError(f"{what} {p} is the file this command reads; choose another name")
    if exists and not force:
        raise UserError(f"{what} {p} already exists; pass --force to replace it or choose another name")
    writable_dir(p.parent, f"the folder of {what}", create=create_folder)
    if exists and not os.access(p, os.W_OK):
        raise UserError(f"{what} {p} is read-only; choose another name")
    return p


def _refuse_link(p: Path) -> None:
    """At write time too: a link planted after the check is refused, never written through."""
    if p.is_symlink():
        raise UserError(f"{p} is a symbolic link (to {os.readlink(p)}); mnas does not write through links: "
                        "remove the link and run again")
    if p.is_dir():
        raise UserError(f"{p} is a folder; it was not replaced")


def _write_failed(p: Path, exc: OSError, existed: bool) -> WriteFailed:
    why = exc.strerror or str(exc) or type(exc).__name__
    kept = "the previous file was kept" if existed else "nothing was written"
    return WriteFailed(p, why, kept)


def _tmp_name(p: Path) -> Path:
    """A fresh name beside `p` with the same suffix (writers that pick a format by it see the right one)."""
    return p.with_name(f".{p.stem}.{secrets.token_hex(4)}.tmp{p.suffix}")


@contextlib.contextmanager
def replace_when_done(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temp file beside `path`, then rename it over `path` only if the block succeeds.
    An OSError (a full disk, a vanished folder) is one line; the previous file is kept."""
    p = Path(path)
    _refuse_link(p)
    existed = p.exists()
    tmp = _tmp_name(p)
    try:
        f = open(tmp, mode.replace("w", "x"))  # noqa: SIM115 - closed below, before the rename
    except OSError as exc:
        raise _write_failed(p, exc, existed) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_failed(p, exc, existed) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replace_when_done(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with replace_when_done(path, "w") as f:
        f.write(text)
    return Path(path)


def write_via(path: str | Path, write: Callable[[Path], object]) -> Path:
    """For writers that only take a file name (third-party converters): `write(tmp)` with a temp
    name beside `path` (same suffix), then rename it over `path`. An OSError is one line; the
    previous file is kept and the temp file removed, whatever `write` raised."""
    p = Path(path)
    _refuse_link(p)
    existed = p.exists()
    tmp = _tmp_name(p)
    try:
        write(tmp)
        if not tmp.is_file():
            raise OSError(f"the writer produced no file at {tmp}")
        os.replace(tmp, p)
    except OSError as exc:
        raise _write_failed(p, exc, existed) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return p
