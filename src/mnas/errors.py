"""One exception type for mistakes a user can fix, and what a full disk leaves behind.

The CLI turns a `UserError` into one line on stderr and exit code 2, never a traceback, so every
library function that validates user input raises it with a message that says what is wrong and
how to fix it.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: a name, a file, a value. The message is shown as is."""


class WriteFailed(UserError):
    """An output could not be written (a full disk, a vanished folder). `path`: the file; `why`:
    the reason; `short` says which file, why and what became of it (`kept`); the message adds the
    generic way on, which the CLI replaces with what the command keeps and how to go on where the
    command says it (`keeps`)."""

    def __init__(self, path: Path, why: str, kept: str) -> None:
        self.path, self.why = path, why
        self.short = f"could not write {path} ({why}); {kept}"
        super().__init__(f"{self.short}: free some space or choose another folder, then run again")


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C so every `finally` runs (the CLI exits with 143)."""


#: The note `keeps` adds to an exception: what the command keeps if it fails (the CLI says it).
KEPT_NOTE = "mnas-kept: "
#: errno values that mean "no room to write": a full disk, a quota, a file size limit.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def keeps(text: str | Callable[[], str]) -> Iterator[None]:
    """While the block runs, a failure carries `text` (or what `text()` says when it fails): what
    is kept and how to go on, for example the resume command, so a full disk mid-search is one
    line with the way back."""
    try:
        yield
    except BaseException as exc:
        if not any(n.startswith(KEPT_NOTE) for n in getattr(exc, "__notes__", ())):
            exc.add_note(KEPT_NOTE + (text if isinstance(text, str) else text()))
        raise


def kept(exc: BaseException) -> str | None:
    """The innermost `keeps` text an exception carries (None if none)."""
    for note in getattr(exc, "__notes__", ()):
        if note.startswith(KEPT_NOTE):
            return note[len(KEPT_NOTE):]
    return None


def no_space(exc: BaseException) -> str | None:
    """Why a write failed, where the disk (or a quota, or a file size limit) is full: an OSError
    with such an errno, SQLite's "database or disk is full", or SQLite's failed write (what a
    size limit looks like to it); None for any other error."""
    if isinstance(exc, OSError):
        if exc.errno == errno.EFBIG:
            return "a file grew past the size limit"
        return "no space left on the device" if exc.errno in NO_SPACE_ERRNOS else None
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name == "SQLITE_FULL":
        return "no space left on the device"
    if name.startswith("SQLITE_IOERR"):
        return f"SQLite could not write ({exc}): is the disk full?"
    return None
