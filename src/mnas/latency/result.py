"""The outcome of one latency measurement, and how per-process samples become it."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from mnas.latency.target import Target


@dataclass
class ProcessSample:
    """What one measuring process saw. `times_ms` holds every timed iteration when available
    (local backends); the android tool reports only summary statistics."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    preempted_fraction: float = 0.0
    attempts: int = 1
    times_ms: list[float] | None = None
    finished_at: float = field(default_factory=time.time)

    @classmethod
    def from_times(cls, times_ms: list[float], preempted_fraction: float, attempts: int = 1) -> "ProcessSample":
        q = _quantiles(times_ms)
        return cls(median_ms=statistics.median(times_ms), p10_ms=q[0], p90_ms=q[1],
                   mean_ms=statistics.fmean(times_ms), std_ms=statistics.pstdev(times_ms),
                   runs=len(times_ms), preempted_fraction=preempted_fraction, attempts=attempts,
                   times_ms=list(times_ms))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatencyResult:
    """Median of per-process medians (of the `used_processes` fastest, see `consensus`), with the
    spread over every process and the share of iterations that looked preempted (a clean-looking
    low CV does not prove a clean measurement)."""

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
    used_processes: int = 0  # how many of the fastest processes the median uses (0: all; old records)
    stable: bool = True  # the fastest processes agreed within the protocol's max_spread

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-process medians: the between-process repeatability."""
        if len(self.per_process_ms) < 2 or self.median_ms <= 0:
            return 0.0
        return (max(self.per_process_ms) - min(self.per_process_ms)) / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = self.target.to_dict()
        d["fingerprint"] = self.target.fingerprint
        d["spread"] = self.spread
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyResult":
        d = dict(d)
        d.pop("fingerprint", None)
        d.pop("spread", None)
        d["target"] = Target.from_dict(d["target"])
        return cls(**d)


def consensus(medians: Sequence[float], k: int, max_spread: float) -> tuple[list[int], bool]:
    """Indices of the `k` fastest processes, and whether they agree within `max_spread`
    ((max - min) / median). Outside slowdowns only add time, so the fastest ones are the clean ones."""
    fastest = sorted(range(len(medians)), key=lambda i: medians[i])[:max(k, 1)]
    vals = [medians[i] for i in fastest]
    mid = statistics.median(vals)
    agree = len(vals) < 2 or mid <= 0 or (max(vals) - min(vals)) / mid <= max_spread
    return fastest, agree


def summarise(samples: list[ProcessSample], target: Target, arch_id: str | None = None,
              use: int | None = None, max_spread: float = 0.05) -> LatencyResult:
    """The median of the per-process medians of the `use` fastest processes (all by default)."""
    medians = [s.median_ms for s in samples]
    chosen, stable = consensus(medians, use or len(samples), max_spread)
    used = [samples[i] for i in sorted(chosen)]
    pooled = [t for s in used for t in (s.times_ms or [])]
    if pooled:
        p10, p90 = _quantiles(pooled)
        mean = statistics.fmean(pooled)
        cv = statistics.pstdev(pooled) / mean if mean > 0 else 0.0
    else:
        p10 = statistics.median(s.p10_ms for s in used)
        p90 = statistics.median(s.p90_ms for s in used)
        mean = statistics.fmean(s.mean_ms for s in used)
        cv = statistics.fmean(s.std_ms for s in used) / mean if mean > 0 else 0.0
    return LatencyResult(
        median_ms=statistics.median(s.median_ms for s in used), p10_ms=p10, p90_ms=p90, cv=cv,
        runs=sum(s.runs for s in samples), processes=len(samples),
        preempted_fraction=statistics.fmean(s.preempted_fraction for s in samples),
        target=target, per_process_ms=medians, measured_at=[s.finished_at for s in samples],
        arch_id=arch_id, used_processes=len(used), stable=stable,
    )


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=10, method="inclusive")
    return q[0], q[-1]
