"""Processes and folders that never outlive the command that made them.

- `die_with_parent`: a measuring or converting child asks the kernel for SIGKILL when its parent
  dies (prctl PR_SET_PDEATHSIG), so a killed `mnas search` leaves no worker under PID 1.
- `terminate_as_exit`: SIGTERM unwinds like Ctrl-C (SystemExit 143 instead of an instant death),
  so `with TemporaryDirectory()` blocks remove their folders and `subprocess.run` kills its child.
- `idle_priority`: background conversions yield the CPU to measurements (SCHED_IDLE, else nice 19).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Be killed when the parent process exits; exit now if it already has (`parent` is the pid
    it had, to close the race between fork and this call). Linux only; a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    if name is not None:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Inside: SIGTERM raises SystemExit(143) in the main thread, unless the program installed its
    own handler (kept as is). Outside the main thread (Ray tasks): nothing changes."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def idle_priority() -> None:
    """Run this process only when a core is otherwise idle."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)
