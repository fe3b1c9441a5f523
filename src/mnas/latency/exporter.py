"""Model files for measuring: whole networks and table packs, written atomically, optionally by a
pool of background processes.

LiteRT conversion costs seconds of CPU per network (about 1 s per layer), which would dominate a
table build or a batch of candidates; a pool of idle-priority processes (one per core) converts
while the measurements, at normal priority on their pinned core, go on. A measurement disturbed
by a converter on the other core is exactly what the reference interleaving cancels.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

from mnas.latency.backends import Backend, get_backend, register_backend
from mnas.latency.lifetime import die_with_parent, idle_priority
from mnas.latency.target import Target
from mnas.latency.units import Unit, unit_from_dict, unit_to_dict
from mnas.space import Architecture


def arch_file(arch: Architecture, target: Target, folder: Path, backend: Backend) -> Path:
    """Where the file of `arch` for `target` lives (reused once written)."""
    return folder / f"{arch.id}_{backend.name}_r{target.resolution}_b{target.batch}_c{target.num_classes}{backend.suffix}"


def export_arch(arch: Architecture, target: Target, path: Path) -> Path:
    """Build `arch` with the target's class count and write the backend's file (atomically: a
    half-written file never poses as a model)."""
    from mnas.model import build_model  # lazy: measuring processes never build torch models

    if path.exists():
        return path
    backend = get_backend(target.backend)
    module = build_model(arch, num_classes=target.num_classes, dropout=0.0)
    return export_module(module, target, path, backend)


def export_module(module: Any, target: Target, path: Path, backend: Backend) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}_{path.name}")
    try:
        backend.export(module, tmp, target)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_pack(units: Sequence[Unit], target: Target, path: Path) -> Path:
    """One file holding every unit (atomically)."""
    backend = get_backend(target.backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}_{path.name}")
    try:
        backend.export_pack(units, tmp, target)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- the pool ------------------------------------------------------------------------------------
def _init_worker(parent: int, backend: tuple[str, str]) -> None:
    die_with_parent(parent)
    idle_priority()
    register_backend(*backend)


def _timed(fn: Callable[[], Path]) -> tuple[str, float]:
    """(the file, CPU seconds its export took)."""
    c0 = time.process_time()
    return str(fn()), time.process_time() - c0


def _arch_job(arch_json: str, target: dict[str, Any], path: str) -> tuple[str, float]:
    return _timed(lambda: export_arch(Architecture.from_json(arch_json), Target.from_dict(target), Path(path)))


def _pack_job(units: list[dict[str, Any]], target: dict[str, Any], path: str) -> tuple[str, float]:
    return _timed(lambda: export_pack([unit_from_dict(u) for u in units], Target.from_dict(target), Path(path)))


class Job:
    """An export in progress: `result()` waits for it (or runs it here when there is no pool) and
    returns the file; `cpu_seconds` then says what the conversion cost."""

    def __init__(self, fn: Callable[[], tuple[str, float]] | None = None,
                 handle: AsyncResult[tuple[str, float]] | None = None) -> None:
        self._fn, self._handle = fn, handle
        self._value: tuple[str, float] | None = None

    def result(self) -> str:
        if self._value is None:
            self._value = self._handle.get() if self._handle is not None else self._fn() if self._fn else ("", 0.0)
        return self._value[0]

    @property
    def cpu_seconds(self) -> float:
        self.result()
        return self._value[1] if self._value is not None else 0.0


class Exporter:
    """Submit exports; with `workers == 0` they run in this process when their result is asked for."""

    def __init__(self, target: Target, workers: int) -> None:
        self.target = target
        self.pool: Pool | None = None
        if workers > 0:
            backend = get_backend(target.backend)
            self.pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(os.getpid(), (backend.name, backend.module)))

    def arch(self, arch: Architecture, path: Path) -> Job:
        if self.pool is None or path.exists():
            return Job(lambda: _timed(lambda: export_arch(arch, self.target, path)))
        return Job(handle=self.pool.apply_async(_arch_job, (arch.to_json(), self.target.to_dict(), str(path))))

    def pack(self, units: Sequence[Unit], path: Path) -> Job:
        if self.pool is None:
            return Job(lambda: _timed(lambda: export_pack(units, self.target, path)))
        return Job(handle=self.pool.apply_async(_pack_job, ([unit_to_dict(u) for u in units],
                                                            self.target.to_dict(), str(path))))

    def close(self, failed: bool = False) -> None:
        """Wait for the pool's work; on failure (or SIGTERM, Ctrl-C) stop its processes at once."""
        if self.pool is None:
            return
        if failed:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


def pool_size(jobs: int, backend: Backend, many: bool = False) -> int:
    """Background converters for `jobs` exports: one per core for slow converters (or for `many`
    exports, e.g. a table's packs, where the pool's start-up pays off), else none."""
    if not (backend.parallel_export or many) or jobs < 2:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(jobs, cores))


@contextlib.contextmanager
def exporter(target: Target, workers: int) -> Iterator[Exporter]:
    ex = Exporter(target, workers)
    try:
        yield ex
    except BaseException:
        ex.close(failed=True)
        raise
    ex.close()
