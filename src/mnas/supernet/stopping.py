"""SIGINT / SIGTERM honoured within about a second while a supernet trains, not only between steps.

The training engine checks a flag between steps (`mnas.train.fit.stop_on_signals`), which keeps
the checkpoint consistent; but one path of a sandwich step can take many seconds on a CPU (the
largest path of the CIFAR space at batch 256: about 16 s forward and backward here), a step trains
several paths, and each epoch ends with the largest path scored (BN re-estimation, then the held-out
split). So inside `interruptible()` (the whole of `fit_supernet`) the signal handlers in place are
chained (`watch`): a signal also sets this module's flag, and

- a training step in progress is dropped: the supernet checks the flag between its layers on the
  way forward and (through a gradient hook) on the way back, and `SupernetStep` then discards the
  step's gradients, so the weights and the optimiser's state stay those after the previous step
  (the batch is skipped); the engine stops right after it and saves the checkpoint. One process
  only: DDP ranks must run the same backwards, so there the step finishes;
- a scoring loop stops at its next batch or layer (`Stopped`), and the epoch's score is left
  unmeasured (NaN); the epoch's training is saved as usual.

Outside `interruptible()` nothing changes (a scoring run is stopped by the CLI's own handler).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

_flag = threading.Event()
_active = [0]
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """A signal arrived inside `interruptible()`: the step or the scoring in progress is dropped."""


ScoringStopped = Stopped
_in_step = [False]


def _chained(previous: Any) -> Any:
    def handler(signum: int, frame: Any) -> None:
        _flag.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:  # what the signal would have done: do it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    handler.mnas_chained = True  # type: ignore[attr-defined]
    return handler


def watch() -> None:
    """Chain the current SIGINT / SIGTERM handlers so they also set the flag (main thread only;
    cheap when already chained). The handlers restored when a `stop_on_signals` block ends drop
    the chain by themselves."""
    if not _active[0] or threading.current_thread() is not threading.main_thread():
        return
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if not getattr(current, "mnas_chained", False) and current is not signal.SIG_IGN:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, _chained(current))


def active() -> bool:
    """Inside `interruptible()`."""
    return bool(_active[0])


def requested() -> bool:
    """A signal arrived inside `interruptible()`."""
    return bool(_active[0]) and _flag.is_set()


def check() -> None:
    """In a loop over batches or layers: raise `Stopped` once a signal arrived."""
    if requested():
        raise Stopped


def check_step() -> None:
    """Between the layers of a training step: raise `Stopped` once a signal arrived, inside
    `in_step()` only (a step that may be dropped)."""
    if _in_step[0] and requested():
        raise Stopped


def in_step_hook(grad: Any) -> Any:
    """A gradient hook: stops the backward pass of a step that may be dropped."""
    check_step()
    return grad


def step_abortable() -> bool:
    return _in_step[0] and bool(_active[0])


@contextlib.contextmanager
def in_step(enabled: bool = True) -> Iterator[None]:
    """Inside, a training step may be stopped midway (`check_step`); the caller drops it."""
    before = _in_step[0]
    _in_step[0] = enabled
    try:
        yield
    finally:
        _in_step[0] = before


@contextlib.contextmanager
def interruptible() -> Iterator[list[bool]]:
    """Inside, signals are noticed within steps and scoring loops. Yields a one-item list that
    says afterwards whether a signal arrived."""
    _flag.clear()
    _active[0] += 1
    seen = [False]
    try:
        yield seen
    finally:
        seen[0] = _flag.is_set()
        _active[0] -= 1
        if not _active[0]:
            _flag.clear()
