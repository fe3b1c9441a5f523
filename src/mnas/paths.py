"""Output paths checked before work starts, and files replaced only when complete.

Every command that writes checks its outputs here first, so a read-only folder, a file where a
folder should be, or an existing result that would be overwritten is one clear line before any
minute of work is spent, and an interrupted write never leaves a half file where a good one was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mnas.errors import UserError


def writable_dir(path: str | Path, what: str, *, create: bool = True) -> Path:
    """`path` is, or can be made, a folder this process may write into (created if missing,
    unless `create` is False: then only checked)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a folder; choose another path")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p} cannot be written ({parent} is not writable); choose a folder you can write to")
    if not create:
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be created ({exc.strerror or exc}); choose another folder") from None
    return p


def writable_file(path: str | Path, what: str, *, force: bool = False) -> Path:
    """`path` can be written as a file: not a folder, its folder writable, and not an existing
    result unless `force` (which the caller offers as --force)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a file name inside it")
    if p.exists() and not force:
        raise UserError(f"{what} {p} already exists; pass --force to replace it or choose another name")
    writable_dir(p.parent if str(p.parent) else Path("."), f"the folder of {what}")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what} {p} is read-only; choose another name")
    return p


@contextlib.contextmanager
def replace_when_done(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temp file beside `path`, then rename it over `path` only if the block succeeds."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
