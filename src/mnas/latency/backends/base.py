"""What every local backend provides: export a module to its file format, and load that file in a
measuring process as a zero-argument callable that runs one inference."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:  # keep worker processes free of torch unless the backend needs it
    from torch import nn

    from mnas.latency.target import Target


class Runner:
    """One loaded model with its input bound. `device_ms` is set when the device times itself
    (CUDA events); then the protocol reports device time instead of host wall time."""

    def __init__(self, run: Callable[[], object], device_timer: Callable[[], float] | None = None) -> None:
        self.run = run
        self.device_timer = device_timer


class Backend(Protocol):
    name: str
    suffix: str

    def version(self, target: "Target") -> str: ...

    def unavailable(self) -> str | None:
        """None when this machine can run the backend, else why not (and how to fix it)."""

    def export(self, module: "nn.Module", path: Path, target: "Target") -> Path: ...

    def load(self, path: Path, target: "Target") -> Runner: ...


def dist_version(*names: str) -> str:
    """`name version` of the first installed distribution, or `name missing`."""
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{names[0]} missing"
