"""Measuring with the protocol (`mnas.latency.measure.protocol`): the orchestrating process.

`measure_many` exports the candidates and the reference network (`exporter`), times them in
rounds of measuring processes (`measure_rounds`: each process runs `Backend.measure_files`, by
default the `worker` subprocess pinned to its cores), keeps timing the candidates whose processes
disagree, and summarises each into a `LatencyResult` (`result`), read from and stored to the
cache (`cache`). `reference_latency` measures the reference network itself once with the full
protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnas import zoo
from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.latency.backends.base import Backend, ModelFile, get_backend
from mnas.latency.measure.cache import DEFAULT, resolve_cache
from mnas.latency.measure.exporter import arch_file, export_module, exporter, pool_size
from mnas.latency.measure.lifetime import terminate_as_exit
from mnas.latency.measure.protocol import DEFAULT_PROTOCOL, DEFAULT_REFERENCE, PROCESSES, Protocol, check_processes
from mnas.latency.measure.result import LatencyResult, ReferenceLatency, closest, consensus, summarise
from mnas.latency.measure.sample import ProcessSample
from mnas.latency.target import Target
from mnas.tempdirs import private_tempdir

if TYPE_CHECKING:  # torch only where models are built
    from torch import nn


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def check_threads(threads: int, force: bool = False) -> None:
    """More threads than cores only measures the scheduler (and can make the machine unusable)."""
    have = len(cores())
    if threads > have and not force:
        raise UserError(f"--threads {threads} is more than the {have} cores here; use at most {have} "
                        "(or --force-threads to measure anyway)")


def measure_cpus(threads: int, force: bool = False) -> list[int]:
    """Cores to pin to: $MNAS_LATENCY_CPUS ("3" or "2,3"), else the last `threads` allowed cores
    (core 0 usually takes most interrupts)."""
    env = os.environ.get("MNAS_LATENCY_CPUS")
    if env:
        try:
            return [int(c) for c in env.split(",") if c.strip()]
        except ValueError:
            raise UserError(f"MNAS_LATENCY_CPUS={env!r} is not a comma-separated list of core numbers") from None
    check_threads(threads, force)
    return cores()[-threads:]


def reference_arch(reference: str | Architecture, target: Target) -> tuple[str, Architecture]:
    """(name, the reference network that runs at the target's resolution): a zoo name, an
    architecture string or file, or an Architecture."""

    if isinstance(reference, str):
        arch, label = zoo.resolve(reference)
    else:
        arch, label = reference, reference.name or reference.id
    return label, arch.for_resolution(target.resolution)


def _files(items: Sequence[Any], todo: Sequence[int], target: Target, backend: Backend, keep: Path,
           tmp: Path) -> dict[int, Path]:
    """Export every item to do (architectures into `keep`, reused; modules into `tmp`)."""
    archs = [i for i in todo if isinstance(items[i], Architecture)]
    out: dict[int, Path] = {}
    measuring = measure_cpus(target.threads, True) if backend.local else []
    with exporter(target, pool_size(len(archs), backend), measuring) as ex:
        jobs = {i: ex.arch(items[i], arch_file(items[i], target, keep, backend)) for i in archs}
        for i in todo:
            if i not in jobs:
                out[i] = export_module(items[i], target, tmp / f"model{i}{backend.suffix}", backend)
        for i, job in jobs.items():
            out[i] = Path(job.result())
    return out


def per_process_value(sample: list[ProcessSample], relative: bool) -> float:
    """What the consensus compares: a model's relative (or ms), a pack's total over its units."""
    if relative:
        return sum(float(s.relative or 0.0) for s in sample)
    return sum(s.median_ms for s in sample)


def agreed(samples: list[list[ProcessSample]], k: int, protocol: Protocol, relative: bool) -> bool:
    values = [per_process_value(s, relative) for s in samples]
    if relative:
        return closest(values, k, protocol.max_relative_spread)[1]
    return consensus(values, k, protocol.max_spread)[1]


def measure_rounds(files: dict[int, ModelFile], reference: Path | None, target: Target, processes: int,
                   protocol: Protocol, backend: Backend | None = None,
                   on_round: Callable[[int], None] | None = None) -> dict[int, list[list[ProcessSample]]]:
    """`processes` rounds over all files (each round: chunks of `items_per_process` files, one
    process per chunk, the order rotated every round), then more rounds over the files whose
    `processes` chosen per-process figures disagree, until they agree or reach `max_processes`.
    Returns per file, per process, one sample per part."""
    backend = backend or get_backend(target.backend)
    cpus = measure_cpus(target.threads, protocol.force_threads) if backend.local else []
    samples: dict[int, list[list[ProcessSample]]] = {i: [] for i in files}
    relative = reference is not None

    def one_round(keys: list[int], p: int) -> None:
        k = p % len(keys)
        order = keys[k:] + keys[:k]  # rotate: no candidate always runs first
        size = protocol.items_per_process
        for c in range(0, len(order), size):
            chunk = order[c:c + size]
            got = backend.measure_files([files[i] for i in chunk], reference, target, protocol, cpus)
            for i, s in zip(chunk, got, strict=True):
                samples[i].append(s)
        if on_round:
            on_round(p)

    keys = list(files)
    for p in range(processes):
        one_round(keys, p)
    p = processes
    while True:
        again = [i for i in keys if len(samples[i]) < protocol.max_processes
                 and not agreed(samples[i], processes, protocol, relative)]
        if not again:
            return samples
        one_round(again, p)
        p += 1


def measure_many(items: Sequence[Architecture | nn.Module], target: Target, *, processes: int = PROCESSES,
                 fresh: bool = False, cache: Any = DEFAULT, protocol: Protocol = DEFAULT_PROTOCOL,
                 reference: str | Architecture | None = DEFAULT_REFERENCE,
                 on_result: Callable[[int, LatencyResult], None] | None = None) -> list[LatencyResult]:
    """Measure every item with the protocol, against `reference` (None: absolute timing only).

    Architectures are measured as given (`MeasuredLatency` applies `for_resolution` first), looked
    up in and stored to the cache; modules are always measured."""
    check_processes(processes)
    backend = get_backend(target.backend)
    db = resolve_cache(cache)
    ref: ReferenceLatency | None = None
    ref_arch = None
    if reference is not None:
        name, ref_arch = reference_arch(reference, target)
        ref = reference_latency(target, ref_arch, cache=db, protocol=protocol, name=name)
    results: list[LatencyResult | None] = [None] * len(items)
    todo: list[int] = []
    for i, item in enumerate(items):
        if db is not None and not fresh and isinstance(item, Architecture):
            hit = db.get(item.id, target, ref.arch_id if ref else "")
            if hit is not None:
                results[i] = hit.rescaled(ref) if ref is not None else hit
                if on_result:
                    on_result(i, results[i])  # type: ignore[arg-type]
                continue
        todo.append(i)
    if todo:
        reason = backend.unavailable()
        if reason:
            raise UserError(f"backend {target.backend} cannot run here: {reason}")
        with terminate_as_exit(), private_tempdir("models") as tmp:
            keep = db.models_dir if db is not None else Path(tmp)  # architectures' files are reused
            paths = _files(items, todo, target, backend, keep, Path(tmp))
            ref_file = _files([ref_arch], [0], target, backend, keep, Path(tmp))[0] if ref_arch is not None else None
            samples = measure_rounds({i: ModelFile(paths[i]) for i in todo}, ref_file, target, processes,
                                     protocol, backend)
        for i in todo:
            item = items[i]
            arch_id = item.id if isinstance(item, Architecture) else None
            res = summarise([s[0] for s in samples[i]], target, arch_id, use=processes,
                            max_spread=protocol.max_spread, max_relative_spread=protocol.max_relative_spread,
                            reference=ref)
            if db is not None and arch_id is not None:
                db.put(arch_id, res)
            results[i] = res
            if on_result:
                on_result(i, res)
    return [r for r in results if r is not None]


def measure(item: Architecture | nn.Module, target: Target | None = None, *, processes: int = PROCESSES,
            fresh: bool = False, cache: Any = DEFAULT, protocol: Protocol = DEFAULT_PROTOCOL,
            reference: str | Architecture | None = DEFAULT_REFERENCE) -> LatencyResult:
    """Latency of one architecture or module on `target` (default: LiteRT, 1 thread, 224)."""
    return measure_many([item], target or Target(), processes=processes, fresh=fresh, cache=cache,
                        protocol=protocol, reference=reference)[0]


def reference_latency(target: Target, reference: str | Architecture = DEFAULT_REFERENCE, *,
                      cache: Any = DEFAULT, processes: int = PROCESSES, protocol: Protocol = DEFAULT_PROTOCOL,
                      fresh: bool = False, name: str | None = None) -> ReferenceLatency:
    """The reference network's absolute latency on `target`: measured once with the full protocol
    (>= 3 processes, the fastest-processes consensus), then read from the cache."""
    if processes < PROCESSES:
        raise UserError(f"the reference latency is measured with the full protocol: processes >= {PROCESSES} "
                        f"(got {processes})")
    label, arch = reference_arch(reference, target)
    label = name or label
    db = resolve_cache(cache)
    if db is not None and not fresh:
        hit = db.get_reference(arch.id, target)
        if hit is not None:
            return hit
    res = measure_many([arch], target, processes=processes, fresh=True, cache=None, protocol=protocol,
                       reference=None)[0]
    ref = ReferenceLatency.from_result(label, res, arch)
    if db is not None:
        db.put_reference(ref)
    return ref

