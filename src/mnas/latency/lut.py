"""Layer-level latency lookup table: build it for a target and a space, predict, validate.

Everything is relative to a reference network (default mobilenet_v2 at the target's resolution),
timed in the same processes as the units: an entry is unit / reference, a prediction is the
calibrated sum of the entries (`mnas.latency.calibration`: a scale per op family and per-unit
costs, fitted on a few dozen whole networks measured against the same reference, correct what
runtimes do across layer boundaries: fusion, re-layout, per-call overhead), and
ms = relative x the reference's latency on the target (measured once, recorded in the table with
its date and spread). So a slow period of the machine during the build moves neither the entries
nor the ground truth of `validate_lut`.

An architecture with units the table lacks is an error (the table was built for another space or
target) unless `allow_missing`: then they are predicted by a per-op regression on MACs and counted.

Building measures packs of many units per exported file (one conversion per pack, in background
processes for slow converters; see `exporter`), each pack in >= 3 processes (more while the
processes disagree on the pack's total relative: the protocol's consensus rule; an entry is the
mean over all of them, a disturbed one left out: `pooled`), and saves after
every pack (`OUT.partial`, keyed to the output, the target, the space and the reference), so an
interrupted build resumes. The output is checked writable before any measuring, written to a
temporary file and renamed only on success, and an existing finished table is not overwritten
without `force`. `refine_lut` sharpens a built table in place: it times every layer in more
processes, in new packs, and refits the calibration.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mnas.errors import UserError
from mnas.latency.backends import Backend, ModelFile, backend_names, get_backend
from mnas.latency.calibration import NO_CALIBRATION, Terms, apply, fit_calibration
from mnas.latency.exporter import Exporter, Job, arch_file, exporter, pool_size
from mnas.latency.lifetime import terminate_as_exit
from mnas.latency.protocol import (
    DEFAULT,
    DEFAULT_PROTOCOL,
    DEFAULT_REFERENCE,
    Protocol,
    closest,
    measure_cpus,
    measure_many,
    measure_rounds,
    reference_arch,
    reference_latency,
    resolve_cache,
)
from mnas.latency.result import ReferenceLatency
from mnas.latency.target import Target
from mnas.latency.units import Unit, arch_units, space_units, unit_from_dict, unit_macs, unit_to_dict
from mnas.space import Architecture, SearchSpace

FORMAT_VERSION = 2  # 2: entries relative to a reference; 1 (still read): absolute ms


@dataclass
class LatencyTable:
    target: Target
    entries: dict[str, dict[str, Any]]
    space: dict[str, Any] | None = None
    calibration: dict[str, Any] = field(default_factory=lambda: dict(NO_CALIBRATION))
    build: dict[str, Any] = field(default_factory=dict)
    reference: ReferenceLatency | None = None  # None: an old absolute table (format 1)
    regressed: int = 0  # units predicted by the MACs regression (allow_missing) so far
    built_fingerprint: str | None = None  # the target's fingerprint where it was built (read from the file)
    _fallback: dict[str, list[float]] | None = field(default=None, repr=False)

    @property
    def relative(self) -> bool:
        return self.reference is not None

    # ---- prediction ---------------------------------------------------------------------------
    def units(self, arch: Architecture) -> list[Unit]:
        return arch_units(arch, self.target.resolution, self.target.num_classes)

    def _value(self, entry: dict[str, Any]) -> float:
        return float(entry["relative"] if self.relative else entry["median_ms"])

    def terms(self, arch: Architecture, allow_missing: bool = False) -> Terms:
        """The unit entries of `arch` summed per op family, and unit counts (what the calibration
        needs); relative to the reference for a relative table, ms for an old one. `arch` as it
        runs (see `Architecture.for_resolution`)."""
        units = self.units(arch)
        missing = [u.key for u in units if u.key not in self.entries]
        if missing and not allow_missing:
            raise UserError(f"{len(missing)} of the {len(units)} layers of {arch.id} are not in this latency "
                            f"table (e.g. {missing[0]}): it was built for another space, resolution or class "
                            "count; build one for this space with `mnas latency build-lut`")
        terms = Terms()
        for u in units:
            e = self.entries.get(u.key)
            terms.add(u, self._value(e) if e is not None else self._regress(u))
        self.regressed += len(missing)
        return terms

    def predict_relative(self, arch: Architecture, allow_missing: bool = False) -> float | None:
        """Predicted latency / the reference's (None for an old absolute table)."""
        if not self.relative:
            return None
        return apply(self.calibration, self.terms(arch, allow_missing))

    def predict(self, arch: Architecture, allow_missing: bool = False) -> float:
        """Predicted latency in ms (microseconds of work: dictionary look-ups and a sum)."""
        value = apply(self.calibration, self.terms(arch, allow_missing))
        return value * self.reference.ms if self.reference is not None else value

    def estimate(self, arch: Architecture, allow_missing: bool = False) -> tuple[float, float | None]:
        """(ms, relative) with one look-up."""
        value = apply(self.calibration, self.terms(arch, allow_missing))
        if self.reference is None:
            return value, None
        return value * self.reference.ms, value

    def missing(self, arch: Architecture) -> list[str]:
        return [u.key for u in self.units(arch) if u.key not in self.entries]

    def coverage(self, space: SearchSpace | None = None) -> tuple[int, int]:
        """(units of the space the table holds, units of the space at the table's resolution)."""
        sp = space or self.search_space()
        keys = {u.key for u in space_units(sp, self.target.resolution, self.target.num_classes)}
        return len(keys & set(self.entries)), len(keys)

    def check_target(self, target: Target) -> None:
        """A table predicts for the target it was built for; anything else is an error."""
        diff = self.target.differences(target)
        if diff:
            raise UserError(f"this latency table was built for {self.target.label}, not {target.label} "
                            f"({'; '.join(diff)}); build one for this target with `mnas latency build-lut`")

    def _regress(self, unit: Unit) -> float:
        """value ~ a * MACs + b per op kind, fitted on the table's own entries."""
        if self._fallback is None:
            by_op: dict[str, list[tuple[float, float]]] = {}
            for e in self.entries.values():
                u = unit_from_dict(e["unit"])
                by_op.setdefault(u.op, []).append((unit_macs(u), self._value(e)))
            fits = {}
            for op, pts in by_op.items():
                x = np.array([[m, 1.0] for m, _ in pts])
                y = np.array([t for _, t in pts])
                fits[op] = [float(v) for v in np.linalg.lstsq(x, y, rcond=None)[0]] if len(pts) >= 2 \
                    else [0.0, float(y.mean())]
            self._fallback = fits
        a, b = self._fallback.get(unit.op) or next(iter(self._fallback.values()), [0.0, 0.0])
        return max(0.0, a * unit_macs(unit) + b)

    # ---- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION if self.relative else 1, "target": self.target.to_dict(),
                "fingerprint": self.target.fingerprint, "space": self.space,
                "reference": self.reference.to_dict() if self.reference is not None else None,
                "calibration": self.calibration, "build": self.build, "entries": self.entries}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a temporary file in the same folder, renamed when complete."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a table is an ordinary file
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        p = Path(path)
        what = "is not a latency table written by `mnas latency build-lut`"
        if p.is_dir():
            raise UserError(f"{p} is a directory, not a latency table; pass the table's JSON file")
        try:
            d = json.loads(p.read_text())
            ref = d.get("reference")
            reference = ReferenceLatency.from_dict(ref) if ref else None
            return cls(target=Target.from_dict(d["target"]), entries=_merge_aliases(d["entries"], reference),
                       space=d.get("space"), calibration=d.get("calibration") or dict(NO_CALIBRATION),
                       build=d.get("build") or {}, reference=reference, built_fingerprint=d.get("fingerprint"))
        except FileNotFoundError:
            raise UserError(f"latency table {p} does not exist; build one with `mnas latency build-lut`") from None
        except PermissionError:
            raise UserError(f"cannot read latency table {p}: permission denied") from None
        except UnicodeDecodeError:
            raise UserError(f"{p} {what} (it is a binary file)") from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{p} {what} ({type(exc).__name__}: {str(exc)[:80]})") from None

    def search_space(self) -> SearchSpace:
        if not self.space:
            raise UserError("this latency table does not record its search space; pass --space")
        return SearchSpace.from_dict(self.space)


def _merge_aliases(entries: dict[str, dict[str, Any]], ref: ReferenceLatency | None) -> dict[str, dict[str, Any]]:
    """Entries of a table built before a skip that adds no shortcut was keyed as "none": each is
    the same layer as its "none" entry, measured in other processes, so their per-process figures
    are pooled into it (or it becomes that entry, where the table has none)."""
    out: dict[str, dict[str, Any]] = {}
    aliases = []
    for key, e in entries.items():
        unit = e.get("unit")
        canonical = unit_from_dict(unit).key if isinstance(unit, dict) and unit.get("skip") not in (None, "none") else key
        if canonical == key:
            out[key] = e
        else:
            aliases.append((canonical, e))
    for key, e in aliases:
        e["unit"] = {**e["unit"], "skip": "none"}
        if key not in out:
            out[key] = e
        elif ref is not None and "per_process_relative" in e and "per_process_relative" in out[key]:
            add_processes(out[key], e["per_process_relative"], e["per_process_ms"], int(e.get("count", 0)), ref)
    return out


# ---- calibration --------------------------------------------------------------------------------
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


def validation_archs(space: SearchSpace, n: int, seed: int = 777, resolution: int | None = None) -> list[Architecture]:
    """The random architectures validate_lut measures (deterministic; disjoint seeds from the
    calibration's in practice), as they run at `resolution`."""
    rng = random.Random(seed)
    res = resolution or space.resolution
    return [space.sample(rng).for_resolution(res) for _ in range(n)]


def check_tables(backend_name: str) -> Backend:
    """The backend, if it can build latency tables."""
    backend = get_backend(backend_name)
    if not backend.tables:
        able = [n for n in backend_names() if get_backend(n).tables]
        raise UserError(f"latency tables cannot be built for the {backend.name} backend; use {', '.join(able)}")
    return backend


def check_output(out: Path, force: bool) -> None:
    """Before any measuring: `out` must be a writable file path, and a finished table there is
    only replaced with `force`."""
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; name the table's file, e.g. {out / 'lut.json'}")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it, or choose another --out")
    folder = out.parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: {probe} is not writable")


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


def build_lut(space: SearchSpace, target: Target, out: str | os.PathLike[str], *, processes: int = 3,
              calibration: int = 64, pack_size: int | None = None, seed: int = 0, cache: Any = DEFAULT,
              protocol: Protocol = DEFAULT_PROTOCOL, progress: bool = True, units: Sequence[Unit] | None = None,
              reference: str | Architecture = DEFAULT_REFERENCE, force: bool = False,
              export_workers: int | None = None) -> LatencyTable:
    """Measure every unit the space can produce at the target's resolution against the reference,
    fit the calibration, save to `out`. `export_workers`: background converters (default: one
    per core for slow converters, none otherwise)."""
    if processes < 1:
        raise UserError(f"processes must be >= 1 (got {processes}); the protocol asks for 3")
    if pack_size is not None and pack_size < 1:
        raise UserError(f"--pack-size must be >= 1 (got {pack_size})")
    if calibration < 0:
        raise UserError(f"--calibration must be >= 0 (got {calibration})")
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
    partial = out.with_name(out.name + ".partial")
    key = _partial_key(out, target, table.space or {}, ref)
    table.entries, spent = _resume(partial, key)
    todo = [u for u in all_units if u.key not in table.entries]
    size = pack_size or backend.default_pack_size
    packs = [todo[i:i + size] for i in range(0, len(todo), size)]
    workers = export_workers if export_workers is not None else pool_size(len(packs), backend, many=len(packs) >= 4)
    measuring = measure_cpus(target.threads, protocol.force_threads) if backend.local else []
    pack_processes: list[int] = []
    archs = calibration_archs(space, calibration, seed, target.resolution)
    with terminate_as_exit(), tempfile.TemporaryDirectory(prefix="mnas-lut-") as tmp, \
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


def pooled(values: Sequence[float], mads: float = 3.0) -> tuple[float, list[int]]:
    """The mean of the per-process figures lying within `mads` median absolute deviations of their
    median, and which those are. Every process of a unit carries information (a unit's processes
    differ by ~4% each, so more of them average it out), but one disturbed process should not move
    an entry. Measured on the full onnxruntime table's calibration networks (leave-one-out error):
    the median of the 3 closest processes 1.81%, the mean of all 1.69%, this 1.64%."""
    if not values:
        raise ValueError("no per-process values to pool")
    mid = statistics.median(values)
    mad = statistics.median(abs(v - mid) for v in values)
    used = [i for i, v in enumerate(values) if mad == 0 or abs(v - mid) <= mads * 1.4826 * mad]
    return statistics.fmean(values[i] for i in used), used


def pool_entry(entry: dict[str, Any], ref: ReferenceLatency) -> dict[str, Any]:
    """(Re)compute an entry's figures from its per-process lists (after a build or a refine)."""
    rel, used = pooled(entry["per_process_relative"])
    entry.update(relative=rel, median_ms=rel * ref.ms, used_processes=used,
                 raw_ms=statistics.median(entry["per_process_ms"][i] for i in used))
    return entry


def add_processes(entry: dict[str, Any], relatives: Sequence[float], ms: Sequence[float], count: int,
                  ref: ReferenceLatency) -> dict[str, Any]:
    """Append more processes' figures of the same unit to an entry and pool it again."""
    entry["per_process_relative"] = [*entry.get("per_process_relative", []), *relatives]
    entry["per_process_ms"] = [*entry.get("per_process_ms", []), *ms]
    entry["count"] = int(entry.get("count", 0)) + count
    return pool_entry(entry, ref)


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
    if processes < 1:
        raise UserError(f"--processes must be >= 1 (got {processes})")
    if pack_size is not None and pack_size < 1:
        raise UserError(f"--pack-size must be >= 1 (got {pack_size})")
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
    with terminate_as_exit(), tempfile.TemporaryDirectory(prefix="mnas-lut-") as tmp, \
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
            res = measure_many(archs, target, processes=int(table.build.get("processes", 3)), cache=db,
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
    from rich.progress import (  # lazy: terminals only
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), transient=False) as bar:
        yield bar


# ---- validation ---------------------------------------------------------------------------------
@dataclass
class Validation:
    n: int
    mape: float
    rmse_ms: float
    kendall_tau: float
    within_5: float
    within_10: float
    predict_us: float
    predicted_ms: list[float]
    measured_ms: list[float]
    arch_ids: list[str]
    measured_relative: list[float] = field(default_factory=list)
    reference_ms: float | None = None
    coverage: tuple[int, int] = (0, 0)  # (units of the space in the table, units of the space)
    regressed_archs: int = 0  # architectures with units predicted by the regression

    @property
    def meets_bar(self) -> bool:
        """The latency issue's bar: MAPE <= 3%, Kendall tau >= 0.95, 100% within +-10%."""
        return self.mape <= 3.0 and self.kendall_tau >= 0.95 and self.within_10 >= 100.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "meets_bar": self.meets_bar}


def evaluate(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    from scipy.stats import kendalltau  # lazy: scipy is slow to import and needed only here

    err = [(p - m) / m for p, m in zip(predicted, measured, strict=True)]
    tau = kendalltau(predicted, measured).statistic if len(measured) > 1 else float("nan")
    return {
        "mape": 100 * statistics.fmean(abs(e) for e in err),
        "rmse_ms": math.sqrt(statistics.fmean((p - m) ** 2 for p, m in zip(predicted, measured, strict=True))),
        "kendall_tau": float(tau),
        "within_5": 100 * sum(abs(e) <= 0.05 for e in err) / len(err),
        "within_10": 100 * sum(abs(e) <= 0.10 for e in err) / len(err),
    }


def validate_lut(table: LatencyTable, samples: int = 100, *, seed: int = 777, processes: int = 3,
                 cache: Any = DEFAULT, protocol: Protocol = DEFAULT_PROTOCOL, space: SearchSpace | None = None,
                 plot: str | os.PathLike[str] | None = None, fresh: bool = False,
                 on_result: Callable[[int, Any], None] | None = None) -> Validation:
    """Measure `samples` random architectures of the table's space for real, the same way the
    table was built (against its reference), and compare with the predictions. `fresh`: measure
    again even if cached (an independent second ground truth)."""
    if samples < 2:
        raise UserError(f"validate with at least 2 samples (got {samples}; the bar uses 100)")
    sp = space or table.search_space()
    archs = validation_archs(sp, samples, seed, table.target.resolution)
    t = time.perf_counter()
    predicted, regressed = [], 0
    for a in archs:
        n = table.regressed
        predicted.append(table.predict(a, allow_missing=True))
        regressed += table.regressed > n
    predict_us = (time.perf_counter() - t) / len(archs) * 1e6
    ref = table.reference
    res = measure_many(archs, table.target, processes=processes, cache=cache, protocol=protocol, fresh=fresh,
                       reference=ref.architecture() if ref is not None else None, on_result=on_result)
    if ref is not None:  # ground truth in the table's terms: relative x the table's reference latency
        measured = [float(r.relative or 0.0) * ref.ms for r in res]
    else:
        measured = [r.median_ms for r in res]
    v = Validation(n=len(archs), predict_us=predict_us, predicted_ms=predicted, measured_ms=measured,
                   arch_ids=[a.id for a in archs], measured_relative=[float(r.relative or 0.0) for r in res],
                   reference_ms=ref.ms if ref is not None else None, coverage=table.coverage(sp),
                   regressed_archs=regressed, **evaluate(predicted, measured))
    if plot:
        scatter(v, plot, title=f"LUT {table.target.label}")
    return v


def scatter(v: Validation, path: str | os.PathLike[str], title: str = "") -> Path:
    import matplotlib  # lazy: plotting is optional and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(v.measured_ms, v.predicted_ms, s=12)
    lo = min(v.measured_ms + v.predicted_ms) * 0.95
    hi = max(v.measured_ms + v.predicted_ms) * 1.05
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], alpha=0.15, label="±10%")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(f"{title}\nMAPE {v.mape:.1f}%  tau {v.kendall_tau:.2f}  ±10% {v.within_10:.0f}%", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
