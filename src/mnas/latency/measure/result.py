"""The outcome of one latency measurement, and how per-process samples become it.

Two consensus rules, one per figure:
- absolute ms (`fastest`): slow periods from outside only ever add time, so the `k` fastest
  per-process medians are the clean ones; they must agree within `max_spread`.
- relative (`closest`): a ratio to a reference timed in alternation cancels slow periods; what is
  left moves both ways (a disturbance may hit the candidate's calls or the reference's), so the
  `k` per-process ratios that lie closest together are used; they must agree within
  `max_relative_spread`.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mnas.architecture import Architecture
from mnas.latency.measure.sample import ProcessSample, quantiles
from mnas.latency.target import Target


@dataclass
class LatencyResult:
    """The headline `median_ms`; with a reference, `median_ms = relative x reference_ms` (the
    reference's latency on this target, measured once with the full protocol) and `raw_ms` is
    the candidate's own absolute timing (which moves with the machine's weather).

    Without a reference: the median of the per-process medians of the `used_processes` fastest,
    with the spread over every process and the share of iterations that looked preempted."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    cv: float
    runs: int
    processes: int
    preempted_fraction: float
    target: Target
    per_process_ms: list[float]
    measured_at: list[float] = field(default_factory=list)
    arch_id: str | None = None
    cached: bool = False
    used_processes: int = 0  # how many processes the consensus uses (0: all; old records)
    stable: bool = True  # the used processes agreed within the protocol's spread
    raw_ms: float | None = None  # absolute, fastest-processes consensus of the candidate's own times
    relative: float | None = None  # candidate / reference, from the same processes
    per_process_relative: list[float] = field(default_factory=list)
    reference: str | None = None  # the reference's name
    reference_id: str | None = None
    reference_ms: float | None = None  # the reference latency `median_ms` was scaled with
    reference_spread: float | None = None
    reference_measured_at: float | None = None

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-process figures the result is made of (relative when
        there is a reference): the between-process repeatability."""
        return _spread(self.per_process_relative or self.per_process_ms)

    @property
    def used_spread(self) -> float:
        """The same for only the processes the headline figure is made of (the closest ratios, or
        the fastest absolute times): what the figure's repeatability is; `spread` also counts the
        processes the protocol measured again and then left out."""
        values = self.per_process_relative or self.per_process_ms
        k = self.used_processes or len(values)
        pick = closest if self.per_process_relative else consensus
        chosen, _ = pick(values, k, math.inf)
        return _spread([values[i] for i in chosen])

    def spread_text(self) -> str:
        return spread_text(self.spread, self.processes, self.used_spread, self.used_processes)

    def rescaled(self, reference: ReferenceLatency) -> LatencyResult:
        """The same relative figure in ms of another measurement of the reference latency."""
        if self.relative is None:
            return self
        scale = reference.ms / self.reference_ms if self.reference_ms else 1.0
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(median_ms=self.relative * reference.ms, p10_ms=self.p10_ms * scale, p90_ms=self.p90_ms * scale,
                 reference_ms=reference.ms, reference_spread=reference.figure_spread,
                 reference_measured_at=reference.measured_at)
        return LatencyResult(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = self.target.to_dict()
        d["fingerprint"] = self.target.fingerprint
        d["spread"] = self.spread
        d["used_spread"] = self.used_spread
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyResult:
        return cls(**_known_fields(cls, d))


@dataclass(frozen=True)
class ReferenceLatency:
    """The reference network's absolute latency on a target: measured once with the full
    protocol (>= 3 processes), cached, and shown with its date and spread."""

    name: str
    arch_id: str
    ms: float
    spread: float
    measured_at: float  # unix time of the last process
    processes: int
    stable: bool
    target: Target
    arch_json: str = ""  # the reference network as it runs on the target
    used_processes: int = 0  # how many of `processes` the figure is made of (0: an old record)
    used_spread: float | None = None  # the spread of those (None: an old record)

    def architecture(self) -> Architecture | str:
        """The reference network (its name where an old record lacks the architecture)."""
        return Architecture.from_json(self.arch_json) if self.arch_json else self.name

    @property
    def date(self) -> str:
        return dt.datetime.fromtimestamp(self.measured_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    @classmethod
    def from_result(cls, name: str, result: LatencyResult, arch: Architecture) -> ReferenceLatency:
        return cls(name=name, arch_id=arch.id, ms=result.median_ms, spread=result.spread,
                   measured_at=max(result.measured_at) if result.measured_at else 0.0,
                   processes=result.processes, stable=result.stable, target=result.target,
                   arch_json=arch.to_json(), used_processes=result.used_processes or result.processes,
                   used_spread=result.used_spread)

    @property
    def figure_spread(self) -> float:
        """The spread of the processes `ms` is made of (of every process on an old record)."""
        return self.spread if self.used_spread is None else self.used_spread

    def spread_text(self) -> str:
        return spread_text(self.spread, self.processes, self.used_spread, self.used_processes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = self.target.to_dict()
        d["date"] = self.date
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceLatency:
        return cls(**_known_fields(cls, d))


def consensus(values: Sequence[float], k: int, max_spread: float) -> tuple[list[int], bool]:
    """Indices of the `k` fastest (smallest) values, and whether they agree within `max_spread`
    ((max - min) / median). Outside slowdowns only add time, so the fastest ones are the clean ones."""
    fastest = sorted(range(len(values)), key=lambda i: values[i])[:max(k, 1)]
    return fastest, _agree([values[i] for i in fastest], max_spread)


def closest(values: Sequence[float], k: int, max_spread: float) -> tuple[list[int], bool]:
    """Indices of the `k` values lying closest together (the narrowest window of `k` sorted
    values; the earliest on a tie), and whether they agree within `max_spread`."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    k = max(1, min(k, len(order)))
    best = min(range(len(order) - k + 1), key=lambda s: values[order[s + k - 1]] - values[order[s]])
    chosen = order[best:best + k]
    return chosen, _agree([values[i] for i in chosen], max_spread)


def spread_text(spread: float, processes: int, used_spread: float | None, used: int) -> str:
    """'spread 1.2% over the 3 processes used of 5, 29.9% over all': the figure's own
    repeatability first, then with the processes the protocol measured again and left out."""
    if used_spread is None or not 0 < used < processes:
        return f"spread {100 * spread:.1f}% over {processes} processes"
    return (f"spread {100 * used_spread:.1f}% over the {used} processes used of {processes}, "
            f"{100 * spread:.1f}% over all")


def _spread(values: Sequence[float]) -> float:
    """(max - min) / median; 0 for fewer than two values."""
    mid = statistics.median(values) if values else 0.0
    if len(values) < 2 or mid <= 0:
        return 0.0
    return (max(values) - min(values)) / mid


def _agree(vals: list[float], max_spread: float) -> bool:
    mid = statistics.median(vals)
    return len(vals) < 2 or mid <= 0 or (max(vals) - min(vals)) / mid <= max_spread


def summarise(samples: list[ProcessSample], target: Target, arch_id: str | None = None,
              use: int | None = None, max_spread: float = 0.05, max_relative_spread: float = 0.02,
              reference: ReferenceLatency | None = None) -> LatencyResult:
    """Per-process samples -> a result. Absolute: the median of the per-process medians of the
    `use` fastest processes. With a reference (samples carry `relative`): the median of the `use`
    closest per-process ratios, times the reference latency."""
    k = use or len(samples)
    medians = [s.median_ms for s in samples]
    fast, fast_ok = consensus(medians, k, max_spread)
    raw_ms = statistics.median(medians[i] for i in fast)
    rel = [s.relative for s in samples]
    if reference is not None and all(r is not None for r in rel):
        ratios = [float(r) for r in rel if r is not None]
        chosen, stable = closest(ratios, k, max_relative_spread)
        used = [samples[i] for i in sorted(chosen)]
        relative = statistics.median(ratios[i] for i in chosen)
        pooled = [t for s in used for t in (s.ratios or [s.relative or 0.0])]
        scale = reference.ms
        median_ms = relative * scale
    else:
        chosen, stable = fast, fast_ok
        used = [samples[i] for i in sorted(chosen)]
        relative, ratios, scale = None, [], 1.0
        pooled = [t for s in used for t in (s.times_ms or [])]
        median_ms = raw_ms
    if pooled:
        p10, p90 = (q * scale for q in quantiles(pooled))
        mean = statistics.fmean(pooled)
        cv = statistics.pstdev(pooled) / mean if mean > 0 else 0.0
    else:  # summary statistics only (the android tool)
        p10 = statistics.median(s.p10_ms for s in used)
        p90 = statistics.median(s.p90_ms for s in used)
        mean = statistics.fmean(s.mean_ms for s in used)
        cv = statistics.fmean(s.std_ms for s in used) / mean if mean > 0 else 0.0
        if relative is not None:
            p10, p90 = p10 * median_ms / raw_ms, p90 * median_ms / raw_ms
    ref: dict[str, Any] = {}
    if reference is not None and relative is not None:
        ref = {"reference": reference.name, "reference_id": reference.arch_id, "reference_ms": reference.ms,
               "reference_spread": reference.figure_spread, "reference_measured_at": reference.measured_at}
    return LatencyResult(
        median_ms=median_ms, p10_ms=p10, p90_ms=p90, cv=cv,
        runs=sum(s.runs for s in samples), processes=len(samples),
        preempted_fraction=statistics.fmean(s.preempted_fraction for s in samples),
        target=target, per_process_ms=medians, measured_at=[s.finished_at for s in samples],
        arch_id=arch_id, used_processes=len(used), stable=stable, raw_ms=raw_ms, relative=relative,
        per_process_relative=ratios, **ref)


def _known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """A stored record's fields that `cls` has (older and newer records both load), target rebuilt."""
    known = {f.name for f in fields(cls)}
    out = {k: v for k, v in d.items() if k in known}
    out["target"] = Target.from_dict(out["target"])
    return out
