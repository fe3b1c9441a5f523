"""A layer-level latency lookup table, and its predictions: `LatencyTable`.

Everything is relative to a reference network (default mobilenet_v2 at the target's resolution),
timed in the same processes as the units: an entry is unit / reference, a prediction is the
calibrated sum of the entries (`mnas.latency.tables.calibration`: a scale per op family and
per-unit costs, fitted on a few dozen whole networks measured against the same reference, correct
what runtimes do across layer boundaries: fusion, re-layout, per-call overhead), and
ms = relative x the reference's latency on the target (measured once, recorded in the table with
its date and spread). So a slow period of the machine during the build moves neither the entries
nor the ground truth of validation (`mnas.latency.tables.validate`).

An architecture with units the table lacks is an error (the table was built for another space or
target) unless `allow_missing`: then they are predicted by a per-op regression on MACs and counted.
An entry is the mean of all its per-process figures, a disturbed one left out (`pooled`).
A table is saved atomically and read back strictly (`LatencyTable.save` / `load`); building and
refining one is `mnas.latency.tables.build`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.latency.measure.result import ReferenceLatency
from mnas.latency.tables.calibration import NO_CALIBRATION, Terms, apply
from mnas.latency.tables.units import Unit, arch_units, space_units, unit_from_dict, unit_macs
from mnas.latency.target import Target
from mnas.paths import replace_when_done
from mnas.space import SearchSpace

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
        """Write atomically (`mnas.paths.replace_when_done`): renamed over `path` when complete."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with replace_when_done(out) as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        p = Path(path)
        what = "is not a latency table written by `mnas latency build-lut`"
        if p.is_dir():
            raise UserError(f"{p} is a directory, not a latency table; pass the table's JSON file")
        try:
            d = json.loads(p.read_text())
            check_table_dict(d, p)
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


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def check_table_dict(d: Any, p: Path) -> None:
    """Everything a prediction reads, checked when a table is loaded (so every command and the
    search refuse a bad table before any work): a known format, finite positive entries, a sane
    reference and calibration. One line (UserError) naming the first problem and the fix."""
    rebuild = "rebuild it with `mnas latency build-lut`"
    if not isinstance(d, dict) or "entries" not in d or "target" not in d:
        raise UserError(f"{p} is not a latency table written by `mnas latency build-lut` (no entries or target)")
    fmt = d.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt not in (1, FORMAT_VERSION):
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT_VERSION:
            raise UserError(f"{p} is a format {fmt} latency table, newer than this mnas reads (formats 1-"
                            f"{FORMAT_VERSION}); upgrade mnas or {rebuild}")
        raise UserError(f"{p} has an unknown latency table format {fmt!r} (this mnas reads 1-{FORMAT_VERSION}); "
                        f"{rebuild}")
    ref = d.get("reference")
    if fmt == FORMAT_VERSION:
        if not isinstance(ref, dict):
            raise UserError(f"{p} is a format {fmt} table without its reference latency; {rebuild}")
        ms = ref.get("ms")
        if not _positive(ms):
            raise UserError(f"{p}: the reference's latency is {ms!r}, not a positive number of ms; {rebuild}")
        if not isinstance(ref.get("target"), dict) or not isinstance(ref.get("name"), str):
            raise UserError(f"{p}: the reference record lacks its name or target; {rebuild}")
    elif ref is not None:
        raise UserError(f"{p} is a format 1 (absolute) table with a reference; {rebuild}")
    entries = d["entries"]
    if not isinstance(entries, dict) or not entries:
        raise UserError(f"{p} holds no entries; {rebuild}")
    field_name = "relative" if fmt == FORMAT_VERSION else "median_ms"
    bad = []
    for key, e in entries.items():
        v = e.get(field_name) if isinstance(e, dict) else None
        if not isinstance(e, dict) or not isinstance(e.get("unit"), dict) or not _positive(v):
            bad.append((key, "no layer" if isinstance(e, dict) and not isinstance(e.get("unit"), dict) else v))
    if bad:
        key, v = bad[0]
        raise UserError(f"{p}: {len(bad)} of its {len(entries)} entries have no finite positive {field_name} "
                        f"(e.g. {key}: {v!r}); {rebuild}, or refine a good copy")
    cal = d.get("calibration")
    if cal is not None:
        if not isinstance(cal, dict):
            raise UserError(f"{p}: its calibration is not a table of numbers; {rebuild}")
        for name in ("scale", "per_unit", "offset"):
            if not _finite(cal.get(name)):
                raise UserError(f"{p}: calibration {name} is {cal.get(name)!r}, not a finite number; {rebuild}")
        if cal["scale"] <= 0:
            raise UserError(f"{p}: calibration scale is {cal['scale']!r}, not positive; {rebuild}")
        for name in ("per_se_unit", "per_shortcut_unit"):
            if name in cal and not _finite(cal[name]):
                raise UserError(f"{p}: calibration {name} is {cal[name]!r}, not a finite number; {rebuild}")
        scales = cal.get("family_scales")
        if scales is not None and (not isinstance(scales, dict) or not all(_finite(v) for v in scales.values())):
            raise UserError(f"{p}: calibration family_scales are not finite numbers ({scales!r}); {rebuild}")


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
