"""The one seam every runtime plugs into: `Backend`.

A backend exports a module (or a pack of table units) to its file format, loads that file in a
measuring process as `Runner`s, and says what it can run. `measure_files` times a set of files
once against a reference (one process's view); the default runs the worker subprocess on this
machine (`mnas.latency.measure.worker`), which calls `load` / `load_pack` and the shared timing
routine (`mnas.latency.measure.session`). A backend for another machine (a phone) overrides `measure_files`.

Adding a backend is one module defining a `Backend` subclass as `BACKEND`, plus one line in the
registry (`mnas.latency.backends.registry`), or `register_backend(name, module)` at run time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnas.errors import UserError
from mnas.latency.backends.registry import backend_module, load_backend
from mnas.latency.measure.protocol import Protocol
from mnas.latency.measure.sample import ProcessSample
from mnas.latency.tables.units import Unit
from mnas.latency.target import Target
from mnas.tempdirs import private_tempdir

if TYPE_CHECKING:  # keep worker processes free of torch unless the backend needs it
    from torch import nn


class Runner:
    """One loaded model with its input bound; `run()` is one inference.

    `device_timer`: when the device times itself (CUDA events), one inference that returns its
    device time in ms; the protocol then reports device time instead of host wall time.
    `parts` / `part_times`: a pack of `parts` table units run by one call. `part_times()`, called
    once after the timing, returns for every call of `run` so far (warm-up included, in order)
    the ms of each part (e.g. from a runtime profiler, or timed per part inside `run`)."""

    def __init__(self, run: Callable[[], object], device_timer: Callable[[], float] | None = None,
                 parts: int = 1, part_times: Callable[[], list[list[float]]] | None = None) -> None:
        self.run = run
        self.device_timer = device_timer
        self.parts = parts
        self.part_times = part_times


def timed_parts(runners: Sequence[Runner]) -> Runner:
    """One runner that runs `runners` in turn and times each with the wall clock: a pack whose
    units are separate signatures / modules, measured as one item with one part per unit."""
    calls: list[list[float]] = []
    clock = time.perf_counter_ns

    def run() -> None:
        times = []
        for r in runners:
            t0 = clock()
            r.run()
            times.append((clock() - t0) / 1e6)
        calls.append(times)

    return Runner(run, parts=len(runners), part_times=lambda: calls)


@dataclass(frozen=True)
class ModelFile:
    """A file to time: a whole model (`parts == 0`) or a pack of `parts` table units."""

    path: Path
    parts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "parts": self.parts}


class Backend:
    """Defaults shared by the local runtimes; subclasses set `name`, `suffix` and override what differs."""

    name: str = ""
    suffix: str = ""
    local: bool = True  # measures on this machine (threads are checked against its cores)
    parallel_export: bool = False  # conversion is slow enough to run in a pool of processes
    tables: bool = False  # can build latency tables (implements export_pack / load_pack)
    default_pack_size: int = 32

    @property
    def module(self) -> str:
        """The module that defines this backend (a worker imports it by this name)."""
        return type(self).__module__

    def version(self, target: Target) -> str:
        raise NotImplementedError

    def unavailable(self) -> str | None:
        """None when this machine can run the backend, else why not (and how to fix it)."""
        return None

    def check(self, target: Target) -> str | None:
        """None when this backend can measure `target`, else what is wrong with it."""
        if target.device != "cpu":
            return f"device {target.device} is only measured with --backend torch"
        if target.channels_last:
            return "channels_last applies to --backend torch only"
        return None

    def machine(self, target: Target) -> str:
        """The hardware a number belongs to (part of the target's fingerprint)."""
        return f"{platform.machine()}:{cpu_name()}"

    def note(self) -> str:
        """A line for `mnas latency targets` when available (e.g. the connected device)."""
        return ""

    def describe(self) -> str:
        """The version line `mnas latency targets` prints."""
        return self.version(Target(backend=self.name))

    # ---- files --------------------------------------------------------------------------------
    def export(self, module: nn.Module, path: Path, target: Target) -> Path:
        raise NotImplementedError

    def load(self, path: Path, target: Target) -> Runner:
        raise NotImplementedError

    def export_pack(self, units: Sequence[Unit], path: Path, target: Target) -> Path:
        """One file holding every unit of a latency-table pack (one conversion per pack)."""
        raise UserError(f"latency tables cannot be built for the {self.name} backend")

    def load_pack(self, path: Path, target: Target, count: int) -> Runner:
        """The pack as one runner with `count` parts, in pack order."""
        raise UserError(f"latency tables cannot be built for the {self.name} backend")

    # ---- timing -------------------------------------------------------------------------------
    def measure_files(self, files: Sequence[ModelFile], reference: Path | None, target: Target,
                      protocol: Protocol, cpus: Sequence[int]) -> list[list[ProcessSample]]:
        """One process's view: every file timed in turn with the reference (one inference each,
        in alternation). Returns, per file, one sample per part (one for a whole model)."""
        return run_worker(self, files, reference, target, protocol, cpus)


def get_backend(name: str) -> Backend:
    """The backend object for `name` (see `registry`); imports only that runtime."""
    backend = load_backend(name)
    if not isinstance(backend, Backend):
        raise TypeError(f"{backend_module(name)}.BACKEND is not a mnas.latency.backends.base.Backend")
    return backend


def run_worker(backend: Backend, files: Sequence[ModelFile], reference: Path | None, target: Target,
               protocol: Protocol, cpus: Sequence[int]) -> list[list[ProcessSample]]:
    """Time `files` in a fresh process (python -m mnas.latency.measure.worker), pinned to `cpus`. The
    worker dies with this process (parent-death signal) and keeps its files in a temporary folder
    of ours, removed on any exit."""
    with private_tempdir("lat") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({
            "backend": {"name": backend.name, "module": backend.module}, "target": target.to_dict(),
            "protocol": asdict(protocol), "cpus": list(cpus), "files": [f.to_dict() for f in files],
            "reference": str(reference) if reference is not None else None, "tmp": str(tmp),
            "parent": os.getpid()}))
        names = ", ".join(f.path.name for f in files[:3]) + (" ..." if len(files) > 3 else "")
        try:
            proc = subprocess.run([sys.executable, "-m", "mnas.latency.measure.worker", str(job), str(out)],
                                  capture_output=True, text=True, timeout=protocol.worker_timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UserError(f"measuring {names} took over {protocol.worker_timeout_s:.0f} s; the model "
                            "is too large for this target or the machine is overloaded") from None
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            raise UserError(f"the {backend.name} worker failed on {names}: {why}")
        data = json.loads(out.read_text())
    return [[ProcessSample(**d) for d in item] for item in data]


def dist_version(*names: str) -> str:
    """`name version` of the first installed distribution, or `name missing`."""
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{names[0]} missing"


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"
