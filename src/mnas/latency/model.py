"""The latency seam the search, the report and the Ray executor use: a `LatencyModel` turns an
architecture as searched into a latency on one target (like nn-Meter's predictor or OFA's
efficiency model).

- `MeasuredLatency`: measured for real on this machine with the protocol (relative to a
  reference network timed in the same processes), through the latency cache. A scheduler must
  run it on the machine the target sits on, one measurement at a time (`LatencyConfig.measured`
  says which targets are measured).
- `TableLatency`: predicted from a lookup table built by `build_lut`; runs anywhere.

Both apply `arch.for_resolution(target.resolution)` themselves: the network that really runs at
that input size. A reward target given as a multiple of a reference (`"1.0 x mobilenet_v2"`) is
resolved with `target_ms(spec, model)` against `model.reference_latency(name)`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.latency.measure.cache import DEFAULT, resolve_cache
from mnas.latency.measure.measuring import measure_many, reference_arch, reference_latency
from mnas.latency.measure.protocol import DEFAULT_PROTOCOL, DEFAULT_REFERENCE, PROCESSES, check_processes
from mnas.latency.measure.protocol import Protocol as MeasureProtocol
from mnas.latency.measure.result import LatencyResult, ReferenceLatency
from mnas.latency.tables.predict import LatencyTable
from mnas.latency.target import Target


@dataclass(frozen=True)
class Estimate:
    """`ms` on the target; `relative` to the reference network (None where not known); `how`:
    "measured" (just now), "cached" (an earlier measurement) or "lut" (a table prediction)."""

    ms: float
    relative: float | None
    how: str


@runtime_checkable
class LatencyModel(Protocol):
    target: Target

    def estimate(self, arch: Architecture) -> Estimate: ...

    def estimate_many(self, archs: Sequence[Architecture]) -> list[Estimate]: ...

    def latency_ms(self, arch: Architecture) -> float: ...

    def reference_latency(self, name: str | None = None) -> ReferenceLatency: ...


class MeasuredLatency:
    """Measured on this machine; `estimate_many` times a whole batch in one measuring session
    (up to `protocol.items_per_process` candidates per process, against the same reference)."""

    def __init__(self, target: Target, processes: int = PROCESSES, reference: str | Architecture = DEFAULT_REFERENCE,
                 cache: Any = DEFAULT, protocol: MeasureProtocol = DEFAULT_PROTOCOL, fresh: bool = False,
                 reference_ms: float | None = None) -> None:
        check_processes(processes, "latency processes")
        self.target = target
        self.processes = processes
        self.reference = reference
        self.cache = resolve_cache(cache)  # a LatencyCache or None: picklable for Ray
        self.protocol = protocol
        self.fresh = fresh
        self._reference: ReferenceLatency | None = None  # pinned at first use: one scale per model
        self.reference_ms = reference_ms  # a scale pinned by the caller (a search's, kept across resume)

    def _pinned(self) -> ReferenceLatency:
        if self._reference is None:
            ref = reference_latency(self.target, self.reference, cache=self.cache, protocol=self.protocol)
            self._reference = ref if self.reference_ms is None else replace(ref, ms=self.reference_ms)
        return self._reference

    def scale_ms(self) -> float:
        """The reference latency this model's ms figures are made of (measured only if not pinned)."""
        return self.reference_ms if self.reference_ms is not None else self._pinned().ms

    def results(self, archs: Sequence[Architecture]) -> list[LatencyResult]:
        """The full measurements (spread, stability, raw ms) of the networks that run at the
        target's resolution."""
        runs = [a.for_resolution(self.target.resolution) for a in archs]
        return measure_many(runs, self.target, processes=self.processes, fresh=self.fresh, cache=self.cache,
                            protocol=self.protocol, reference=self.reference)

    def estimate_many(self, archs: Sequence[Architecture]) -> list[Estimate]:
        """ms = relative x the reference latency this model pinned at its first use (a reference
        measured again meanwhile does not change the scale of a model's estimates, nor of T
        resolved with it: `target_ms`)."""
        results = self.results(archs)
        scale = self.scale_ms() if any(r.relative is not None for r in results) else None
        return [Estimate(r.relative * scale if scale is not None and r.relative is not None else r.median_ms,
                         r.relative, "cached" if r.cached else "measured") for r in results]

    def estimate(self, arch: Architecture) -> Estimate:
        return self.estimate_many([arch])[0]

    def latency_ms(self, arch: Architecture) -> float:
        return self.estimate(arch).ms

    def reference_latency(self, name: str | None = None) -> ReferenceLatency:
        """The reference's latency on this target (measured once with the full protocol, cached);
        this model's own reference is pinned at its first use, like the scale of its estimates."""
        if name is None or name == self.reference or (
                reference_arch(name, self.target)[1].id == reference_arch(self.reference, self.target)[1].id):
            return self._pinned()
        return reference_latency(self.target, name, cache=self.cache, protocol=self.protocol)


class TableLatency:
    """Predicted from a lookup table; refuses a table built for another target than asked, and
    architectures with layers the table lacks (unless `allow_missing`: then they are predicted by
    a per-op MACs regression and counted in `regressed`)."""

    def __init__(self, table: LatencyTable | str | os.PathLike[str], target: Target | None = None,
                 allow_missing: bool = False) -> None:
        self.table = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
        if target is not None:
            self.table.check_target(target)
        self.target = self.table.target
        self.allow_missing = allow_missing

    @property
    def regressed(self) -> int:
        """Units predicted by the regression so far (only with `allow_missing`)."""
        return self.table.regressed

    def estimate(self, arch: Architecture) -> Estimate:
        ms, relative = self.table.estimate(arch.for_resolution(self.target.resolution), self.allow_missing)
        return Estimate(ms, relative, "lut")

    def estimate_many(self, archs: Sequence[Architecture]) -> list[Estimate]:
        return [self.estimate(a) for a in archs]

    def latency_ms(self, arch: Architecture) -> float:
        return self.estimate(arch).ms

    def reference_latency(self, name: str | None = None) -> ReferenceLatency:
        """The reference latency the table was built against (recorded in it)."""
        ref = self.table.reference
        if ref is None:
            raise UserError("this latency table was built without a reference network (an old table); "
                            "rebuild it with `mnas latency build-lut`")
        if name is not None and name != ref.name:
            _, arch = reference_arch(name, self.target)
            if arch.id != ref.arch_id:
                raise UserError(f"this latency table was built against {ref.name}, not {name}")
        return ref


def latency_model(target: Target, *, lut: str | os.PathLike[str] | None = None, processes: int = PROCESSES,
                  reference: str = DEFAULT_REFERENCE, cache: Any = DEFAULT,
                  protocol: MeasureProtocol = DEFAULT_PROTOCOL, reference_ms: float | None = None) -> LatencyModel:
    """The model a config names: a table when `lut` is given (checked against `target`), else
    measurements (scaled with `reference_ms` where the caller pinned it)."""
    if lut is not None:
        return TableLatency(lut, target)
    return MeasuredLatency(target, processes=processes, reference=reference, cache=cache, protocol=protocol,
                           reference_ms=reference_ms)


_MULTIPLE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:x|\*|×)\s*(\S+)\s*$")


def parse_multiple(text: str) -> tuple[float, str]:
    """`"1.0 x mobilenet_v2"` (also `1.0x mobilenet_v2`, `1.0 * mobilenet_v2`) -> (1.0, "mobilenet_v2")."""
    m = _MULTIPLE.match(text)
    if m is None:
        raise UserError(f"latency target {text!r} is neither a number of ms nor a multiple like '1.0 x mobilenet_v2'")
    factor = float(m.group(1))
    if factor <= 0:
        raise UserError(f"latency target {text!r}: the factor must be > 0")
    return factor, m.group(2)


def target_ms(spec: float | str, model: LatencyModel) -> float:
    """A reward target in ms: a number as is, or a multiple of a reference's latency on the
    model's target (with the model's own reference, LAT / T then is relative / factor: the
    machine's weather cancels from the reward)."""
    if isinstance(spec, (int, float)):
        if spec <= 0:
            raise UserError(f"latency target must be > 0 ms (got {spec})")
        return float(spec)
    try:
        return target_ms(float(spec), model)
    except ValueError:
        factor, name = parse_multiple(spec)
        return factor * model.reference_latency(name).ms
