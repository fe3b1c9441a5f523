"""Building a latency lookup table for a target and a space (`build_lut`), and sharpening a built
one (`refine_lut`).

Building measures packs of many units per exported file (one conversion per pack, in background
processes for slow converters; see `mnas.latency.measure.exporter`), each pack in >= 3 processes
(more while the processes disagree on the pack's total relative: the protocol's consensus rule; an
entry is the mean over all of them, a disturbed one left out: `predict.pooled`), and saves after
every pack (`OUT.partial`, keyed to the output, the target, the space and the reference), so an
interrupted build resumes. The calibration is then fitted on whole networks measured against the
same reference (`calibrate`). The output is checked writable before any measuring, written to a
temporary file and renamed only on success, and an existing finished table is not overwritten
without `force`. `refine_lut` sharpens a built table in place: it times every layer in more
processes, in new packs, and refits the calibration.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mnas.architecture import Architecture, whole_number
from mnas.errors import UserError
from mnas.latency.backends.base import Backend, ModelFile, get_backend
from mnas.latency.backends.registry import backend_names
from mnas.latency.measure.cache import DEFAULT, resolve_cache
from mnas.latency.measure.exporter import Exporter, Job, arch_file, exporter, pool_size
from mnas.latency.measure.lifetime import terminate_as_exit
from mnas.latency.measure.measuring import measure_cpus, measure_many, measure_rounds, reference_arch, reference_latency
from mnas.latency.measure.protocol import DEFAULT_PROTOCOL, DEFAULT_REFERENCE, PROCESSES, Protocol, check_processes
from mnas.latency.measure.result import ReferenceLatency, closest
from mnas.latency.tables.calibration import apply, fit_calibration
from mnas.latency.tables.predict import LatencyTable, add_processes, pool_entry
from mnas.latency.tables.units import Unit, space_units, unit_from_dict, unit_to_dict
from mnas.latency.target import Target
from mnas.paths import output_file
from mnas.space import SearchSpace
from mnas.tempdirs import private_tempdir


def calibrate(table: LatencyTable, archs: Sequence[Architecture], measured: Sequence[float]) -> dict[str, Any]:
    """Fit the table's calibration on whole networks measured in its terms (relative to its
    reference; ms for an old table) and record how well it fits them."""
    terms = [table.terms(a, allow_missing=True) for a in archs]
    table.calibration = fit_calibration(terms, measured)
    table.calibration["samples"] = len(measured)
    if measured:
        pred = [apply(table.calibration, t) for t in terms]
        table.calibration["fit_mape"] = 100 * statistics.fmean(abs(p - m) / m for p, m in zip(pred, measured, strict=True))
    return table.calibration


def calibration_archs(space: SearchSpace, n: int, seed: int = 0, resolution: int | None = None) -> list[Architecture]:
    """The architectures whose whole-model latency fits the calibration (deterministic), as they
    run at `resolution` (default: the space's)."""
    res = resolution or space.resolution
    return [space.sample(random.Random(seed * 100003 + i)).for_resolution(res) for i in range(n)]


def check_tables(backend_name: str) -> Backend:
    """The backend, if it can build latency tables."""
    backend = get_backend(backend_name)
    if not backend.tables:
        able = [n for n in backend_names() if get_backend(n).tables]
        raise UserError(f"latency tables cannot be built for the {backend.name} backend; use {', '.join(able)}")
    return backend


def check_output(out: Path, force: bool) -> None:
    """Before any measuring: `out` may be written as the table (`mnas.paths.output_file`: not a
    folder, a link or a file a run needs; a finished table there only replaced with `force`)."""
    output_file(out, "--out", force=force, create_folder=False)


def partial_path(out: Path) -> Path:
    """Where a build of `out` keeps the packs measured so far (`OUT.partial`), until it finishes."""
    return out.with_name(out.name + ".partial")


def _partial_key(out: Path, target: Target, space: dict[str, Any], reference: ReferenceLatency) -> dict[str, Any]:
    return {"out": str(out.resolve()), "fingerprint": target.fingerprint, "space": space,
            "reference_id": reference.arch_id}


def _resume(partial: Path, key: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], float]:
    """The entries and seconds of an interrupted build of the same output, target, space, reference."""
    if not partial.is_file():
        return {}, 0.0
    try:
        prev = LatencyTable.load(partial)
    except UserError:
        return {}, 0.0
    if prev.build.get("resume_key") != key:
        return {}, 0.0
    return prev.entries, float(prev.build.get("seconds", 0.0))


#: The most layers per exported model, and calibration networks, a table build takes: a typo past
#: these is one line instead of hours of measuring.
MAX_COUNT = 10_000


def check_sizes(processes: int, pack_size: int | None = None, calibration: int = 0) -> None:
    """The bounds on a build's or refine's counts, wherever they come from (the CLI's flags)."""
    check_processes(processes, "--processes")
    if pack_size is not None:
        whole_number(pack_size, "--pack-size", 1, MAX_COUNT)
    whole_number(calibration, "--calibration", 0, MAX_COUNT)


def build_lut(space: SearchSpace, target: Target, out: str | os.PathLike[str], *, processes: int = PROCESSES,
              calibration: int = 64, pack_size: int | None = None, seed: int = 0, cache: Any = DEFAULT,
              protocol: Protocol = DEFAULT_PROTOCOL, progress: bool = True, units: Sequence[Unit] | None = None,
              reference: str | Architecture = DEFAULT_REFERENCE, force: bool = False,
              export_workers: int | None = None) -> LatencyTable:
    """Measure every unit the space can produce at the target's resolution against the reference,
    fit the calibration, save to `out`. `export_workers`: background converters (default: one
    per core for slow converters, none otherwise)."""
    check_sizes(processes, pack_size, calibration)
    backend = check_tables(target.backend)
    reason = backend.unavailable()
    if reason:
        raise UserError(f"backend {target.backend} cannot run here: {reason}")
    out = Path(out)
    check_output(out, force)
    db = resolve_cache(cache)
    started = time.time()
    t0 = time.time()
    ref_name, ref_arch = reference_arch(reference, target)
    ref = reference_latency(target, ref_arch, cache=db, protocol=protocol, name=ref_name)
    all_units = list(units) if units is not None else space_units(space, target.resolution, target.num_classes)
    table = LatencyTable(target=target, entries={}, space=space.to_dict(), reference=ref)
    partial = partial_path(out)
    key = _partial_key(out, target, table.space or {}, ref)
    table.entries, spent = _resume(partial, key)
    todo = [u for u in all_units if u.key not in table.entries]
    size = pack_size or backend.default_pack_size
    packs = [todo[i:i + size] for i in range(0, len(todo), size)]
    workers = export_workers if export_workers is not None else pool_size(len(packs), backend, many=len(packs) >= 4)
    measuring = measure_cpus(target.threads, protocol.force_threads) if backend.local else []
    pack_processes: list[int] = []
    archs = calibration_archs(space, calibration, seed, target.resolution)
    with terminate_as_exit(), private_tempdir("lut") as tmp, \
            exporter(target, workers, measuring) as ex, _progress(progress) as bar:
        keep = db.models_dir if db is not None else Path(tmp)
        ref_file = Path(ex.arch(ref_arch, arch_file(ref_arch, target, keep, backend)).result())
        task = bar.add_task("layers", total=len(all_units), completed=len(all_units) - len(todo))
        timing = {"wait_s": 0.0, "export_cpu_s": 0.0, "measure_s": 0.0}
        calibration_jobs: list[Job] = []

        def convert_calibration() -> None:  # while the last packs are timed
            if db is not None:
                calibration_jobs.extend(ex.arch(a, arch_file(a, target, keep, backend)) for a in archs)

        for pack, per_proc in _timed_packs(ex, packs, processes, Path(tmp), ref_file, target,
                                           protocol, backend, max(2, 2 * workers), timing, convert_calibration):
            pack_processes.append(len(per_proc))
            table.entries.update(_entries(pack, per_proc, processes, protocol, ref))
            table.build = {"seconds": spent + time.time() - t0, "units": len(table.entries), "resume_key": key}
            table.save(partial)
            bar.advance(task, len(pack))
        layers_s = spent + time.time() - t0
        w = time.time()
        timing["calibration_export_cpu_s"] = sum(job.cpu_seconds for job in calibration_jobs)
        timing["calibration_wait_s"] = time.time() - w
        measured: list[float] = []
        c = time.time()
        if archs:
            ctask = bar.add_task("calibration", total=len(archs))
            res = measure_many(archs, target, processes=processes, cache=db, protocol=protocol, reference=ref_arch,
                               on_result=lambda i, r: bar.advance(ctask, 1))
            measured = [float(r.relative or r.median_ms) for r in res]
            before = table.regressed  # a partial table (`units`): count what the regression filled
            calibrate(table, archs, measured)
            timing["calibration_regressed_units"] = table.regressed - before
        timing["calibration_s"] = time.time() - c
    table.calibration["samples"] = len(measured)
    table.build = {"seconds": spent + time.time() - t0, "layer_seconds": layers_s,
                   "units": len(table.entries), "pack_size": size, "processes": processes,
                   "calibration_archs": len(archs), "calibration_seed": seed, "started_at": started, "finished_at": time.time(),
                   "pack_processes": pack_processes, "export_workers": workers, **timing,
                   "unstable_units": sum(not e.get("stable", True) for e in table.entries.values())}
    table.save(out)
    partial.unlink(missing_ok=True)
    return table


def _entries(pack: Sequence[Unit], per_proc: list[list[Any]], processes: int, protocol: Protocol,
             ref: ReferenceLatency) -> dict[str, dict[str, Any]]:
    """One entry per unit, pooled over every process (`pooled`). `stable`: whether the pack's
    `processes` closest totals agreed (a slow period moves every unit of a process alike, so the
    check is made on the whole pack)."""
    totals = [sum(float(s.relative or 0.0) for s in proc) for proc in per_proc]
    _, stable = closest(totals, processes, protocol.max_relative_spread)
    out = {}
    for i, u in enumerate(pack):
        samples = [proc[i] for proc in per_proc]
        times = [t for s in samples for t in (s.times_ms or [])]
        out[u.key] = pool_entry({
            "std_ms": statistics.pstdev(times) if times else 0.0,
            "count": len(times),
            "per_process_relative": [float(s.relative or 0.0) for s in samples],
            "per_process_ms": [s.median_ms for s in samples],
            "stable": stable,
            "preempted_fraction": statistics.fmean(s.preempted_fraction for s in samples),
            "unit": unit_to_dict(u),
        }, ref)
    return out


def _timed_packs(ex: Exporter, packs: Sequence[Sequence[Unit]], processes: int, folder: Path,
                 ref_file: Path, target: Target, protocol: Protocol, backend: Backend, lookahead: int,
                 timing: dict[str, float], when_queued: Callable[[], None] | None = None,
                 ) -> Iterator[tuple[Sequence[Unit], list[list[Any]]]]:
    """Export packs ahead (`lookahead` in the converters) and time each in `processes` processes
    (more while they disagree, up to the protocol's maximum); yields (pack, per-process samples).
    `when_queued` runs once when every pack is queued (to convert something else meanwhile)."""
    def submit(k: int) -> Job:
        return ex.pack(packs[k], folder / f"pack{k}{backend.suffix}")

    jobs = {k: submit(k) for k in range(min(lookahead, len(packs)))}
    queued = False
    for k, pack in enumerate(packs):
        if k + lookahead < len(packs):
            jobs[k + lookahead] = submit(k + lookahead)
        elif not queued and when_queued is not None:
            when_queued()
            queued = True
        w = time.time()
        job = jobs.pop(k)
        path = Path(job.result())
        timing["wait_s"] += time.time() - w
        timing["export_cpu_s"] += job.cpu_seconds
        m = time.time()
        per_proc = measure_rounds({0: ModelFile(path, parts=len(pack))}, ref_file, target, processes,
                                  protocol, backend)[0]
        timing["measure_s"] += time.time() - m
        path.unlink(missing_ok=True)
        yield pack, per_proc
    if not queued and when_queued is not None:
        when_queued()


def refine_lut(path: str | os.PathLike[str], processes: int = 6, *, pack_size: int | None = None,
               cache: Any = DEFAULT, protocol: Protocol = DEFAULT_PROTOCOL, progress: bool = True,
               export_workers: int | None = None) -> LatencyTable:
    """Time every unit of a built table that has fewer than `processes` per-process figures again,
    in new packs (other neighbours than at the build, so a unit's pack context averages out too),
    until it has `processes`; pool each entry over all its processes, refit the calibration on the
    table's calibration networks (measured once, then cached) and save. The table is saved after
    every pack, so an interrupted refine loses nothing and a second call goes on where it stopped.
    Measured on the onnxruntime table (docs/benchmarks/latency.md): see the refine rows there."""
    check_sizes(processes, pack_size)
    out = Path(path)
    table = LatencyTable.load(out)
    ref = table.reference
    if ref is None:
        raise UserError(f"{out} is an absolute (format 1) table; build a new one with `mnas latency build-lut`")
    if table.built_fingerprint and table.built_fingerprint != table.target.fingerprint:
        raise UserError(f"{out} was built on another machine or runtime (fingerprint {table.built_fingerprint}, "
                        f"here {table.target.fingerprint}); refine it where it was built, or build a table here")
    target = table.target
    backend = check_tables(target.backend)
    reason = backend.unavailable()
    if reason:
        raise UserError(f"backend {target.backend} cannot run here: {reason}")
    space = table.search_space()
    samples = int(table.calibration.get("samples") or table.build.get("calibration_archs") or 0)
    archs = calibration_archs(space, samples, int(table.build.get("calibration_seed", 0)), target.resolution)
    for e in table.entries.values():  # every entry by the same rule (a table may predate `pooled`)
        if e.get("per_process_relative"):
            pool_entry(e, ref)
    need = {k: processes - len(e.get("per_process_relative") or []) for k, e in table.entries.items()}
    todo = sorted((k for k, n in need.items() if n > 0), key=lambda k: (-need[k], k))  # alike needs share packs
    size = pack_size or backend.default_pack_size
    packs = [[unit_from_dict(table.entries[k]["unit"]) for k in todo[i:i + size]] for i in range(0, len(todo), size)]
    plan = [max(need[u.key] for u in pack) for pack in packs]
    db = resolve_cache(cache)
    workers = export_workers if export_workers is not None else pool_size(len(packs), backend, many=len(packs) >= 4)
    measuring = measure_cpus(target.threads, protocol.force_threads) if backend.local else []
    t0 = time.time()
    timing = {"wait_s": 0.0, "export_cpu_s": 0.0, "measure_s": 0.0}
    with terminate_as_exit(), private_tempdir("lut") as tmp, \
            exporter(target, workers, measuring) as ex, _progress(progress) as bar:
        _, ref_arch = reference_arch(ref.architecture(), target)
        keep = db.models_dir if db is not None else Path(tmp)
        ref_file = Path(ex.arch(ref_arch, arch_file(ref_arch, target, keep, backend)).result())
        task = bar.add_task("layers", total=len(todo))
        for n in sorted(set(plan)):  # exactly n more processes: the pooling, not consensus, handles spread
            exact = replace(protocol, max_processes=n)
            idx = [k for k, m in enumerate(plan) if m == n]
            for pack, per_proc in _timed_packs(ex, [packs[k] for k in idx], n, Path(tmp), ref_file,
                                               target, exact, backend, max(2, 2 * workers), timing):
                for i, u in enumerate(pack):
                    add_processes(table.entries[u.key], [float(proc[i].relative or 0.0) for proc in per_proc],
                                  [proc[i].median_ms for proc in per_proc],
                                  sum(len(proc[i].times_ms or []) for proc in per_proc), ref)
                table.save(out)
                bar.advance(task, len(pack))
        if archs:
            ctask = bar.add_task("calibration", total=len(archs))
            res = measure_many(archs, target, processes=int(table.build.get("processes", PROCESSES)), cache=db,
                               protocol=protocol, reference=ref_arch,
                               on_result=lambda i, r: bar.advance(ctask, 1))
            calibrate(table, archs, [float(r.relative or 0.0) for r in res])
    runs = table.build.setdefault("refined", [])
    runs.append({"processes": processes, "units": len(todo), "packs": len(packs), "seconds": time.time() - t0,
                 "finished_at": time.time(), **timing})
    table.save(out)
    return table


class _NoProgress:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield _NoProgress()
        return

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), transient=False) as bar:
        yield bar
