"""Temporary folders that a killed mnas does not leave behind for good.

`with private_tempdir("lat") as tmp:` makes `<tmp>/mnas-lat-<pid>-<8 hex>` (private to this
user, mode 0700) and removes it when the block ends in any way Python sees: a return, an
exception, Ctrl-C or SIGTERM (the CLI turns SIGTERM into `mnas.errors.Terminated`, a
KeyboardInterrupt, so `finally` runs). SIGKILL (the OOM killer, `kill -9`, a lost session) runs
nothing, and a salvage copy of a store can be hundreds of MB, so the first `private_tempdir` of
every process also removes the folders of earlier processes that are gone (`clean_stale`). A
folder is removed only when all of these hold: its name is exactly mnas's pattern, its pid is
not a running process, it is a real folder (never a symbolic link) owned by this user, and no
process holds its lock (the owner keeps an exclusive flock on the folder while it is in use, so
a live owner in another pid namespace sharing this temp folder keeps its folder too).

`building_dir(final)` is the same idea for an output folder: it is built as
`.NAME.partial-<pid>` beside `final` and renamed to `final` only when complete, so a killed
process never leaves a `final` that looks whole; stale partial folders of `final` are removed
the next time one is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mnas.errors import UserError

#: What mnas makes temporary folders for: salvage copies of stores, latency workers' job folders,
#: model files for measuring, lookup-table builds, scoring exports.
KINDS = ("salvage", "lat", "models", "lut", "score")
_NAME = re.compile(r"mnas-(" + "|".join(KINDS) + r")-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{8}")
_cleaned_in: int | None = None  # the pid that has run `clean_stale` (a forked child runs it again)


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a process on this machine (another user's counts: it is alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's process; anything else: assume alive
        return True
    return True


def _lock(fd: int, *, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_if_stale(path: Path, pid: int) -> bool:
    """Remove the folder `path` left by process `pid` if that process is gone (see the module
    doc for every condition); True if it was removed."""
    if pid_alive(pid):
        return False
    try:
        before = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(before.st_mode) or before.st_uid != os.getuid():
        return False  # a symbolic link, a file, or someone else's folder: never ours to remove
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or not _lock(fd, wait=False):
            return False  # replaced under us, or its owner is alive somewhere we cannot see
        shutil.rmtree(path, ignore_errors=True)  # never follows links inside (fd-based on Linux)
    finally:
        os.close(fd)
    return not path.exists()


def _remove_stale(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the folders in `folder` named as `pattern` says (its group `pid`: the process that
    made one) whose process is gone (`remove_if_stale`). One listdir, and a folder that cannot be
    read is left as it is; returns what went."""
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in list(os.scandir(folder)):
            match = pattern.fullmatch(entry.name)
            if match is not None and remove_if_stale(Path(entry.path), int(match["pid"])):
                removed.append(Path(entry.path))
    return removed


def clean_stale(folder: str | Path | None = None) -> list[Path]:
    """Remove the temporary folders that processes which no longer run left in `folder` (default:
    the system temp folder); returns what went."""
    return _remove_stale(Path(folder) if folder is not None else Path(tempfile.gettempdir()), _NAME)


def _clean_once() -> None:
    global _cleaned_in
    if _cleaned_in != os.getpid():
        _cleaned_in = os.getpid()
        clean_stale()


@contextlib.contextmanager
def private_tempdir(kind: str) -> Iterator[Path]:
    """A new folder `<tmp>/mnas-<kind>-<pid>-<random>`, removed when the block ends (see the
    module doc); the first call in a process removes what dead processes left."""
    if kind not in KINDS:
        raise ValueError(f"unknown temporary folder kind {kind!r}; known: {', '.join(KINDS)}")
    _clean_once()
    base, owner = Path(tempfile.gettempdir()), os.getpid()
    while True:
        path = base / f"mnas-{kind}-{owner}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    with _held(path):
        yield path


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """Hold the lock of the folder `path`, just made by this process, while the block runs, and
    remove the folder when it ends however it ends (unless the block renamed it away). A forked
    child leaving the block does not remove its parent's folder."""
    owner = os.getpid()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _lock(fd, wait=True)
        yield
    finally:
        try:
            if os.getpid() == owner and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _partial_name(final: Path, pid: int) -> Path:
    return final.with_name(f".{final.name}.partial-{pid}")


def clean_partials(final: Path) -> list[Path]:
    """Remove the `.NAME.partial-<pid>` folders beside `final` of processes that are gone."""
    return _remove_stale(final.parent, re.compile(re.escape(f".{final.name}.partial-") + r"(?P<pid>[1-9][0-9]{0,9})"))


@contextlib.contextmanager
def building_dir(final: str | Path, what: str = "the output folder") -> Iterator[Path]:
    """Build a folder under a temporary name beside `final` and rename it to `final` only when the
    block completes (`final` must not exist, or be an empty folder); on any failure, or if the
    process is killed, `final` is not made. The caller checks `final` first (mnas.paths)."""
    final = Path(final)
    clean_partials(final)
    partial = _partial_name(final, os.getpid())
    if partial.is_dir() and not partial.is_symlink():  # this pid's, from an earlier process that had it
        shutil.rmtree(partial, ignore_errors=True)
    try:
        os.mkdir(partial)
    except OSError as exc:
        raise UserError(f"cannot create {partial} ({exc.strerror or exc}); choose another folder for {what}") from None
    with _held(partial):
        yield partial
        try:
            os.rename(partial, final)  # atomic; replaces only an empty folder, never a link's target
        except OSError as exc:
            raise UserError(f"cannot create {what} {final} ({exc.strerror or exc}); nothing was written there: "
                            "choose a new folder") from None
        with contextlib.suppress(OSError):  # the rename itself on disk, not only in the cache
            dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
