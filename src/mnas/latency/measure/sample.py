"""What one measuring process saw of one model (or one unit of a pack)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ProcessSample:
    """Absolute timings of the model in this process and, when a reference network was timed in
    alternation with it, `relative`: the median over the timed calls of (this call's time / the
    mean of the two reference calls around it). `times_ms` / `ratios` hold every used call when
    available (local backends); the android tool reports only summary statistics."""

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
    relative: float | None = None
    reference_ms: float | None = None  # the reference's median in this process
    ratios: list[float] | None = None

    @classmethod
    def from_times(cls, times_ms: Sequence[float], preempted_fraction: float, attempts: int = 1,
                   ratios: Sequence[float] | None = None, reference_ms: float | None = None) -> ProcessSample:
        q = quantiles(times_ms)
        return cls(median_ms=statistics.median(times_ms), p10_ms=q[0], p90_ms=q[1],
                   mean_ms=statistics.fmean(times_ms), std_ms=statistics.pstdev(times_ms),
                   runs=len(times_ms), preempted_fraction=preempted_fraction, attempts=attempts,
                   times_ms=list(times_ms), relative=statistics.median(ratios) if ratios else None,
                   reference_ms=reference_ms, ratios=list(ratios) if ratios else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantiles(values: Sequence[float]) -> tuple[float, float]:
    """(10th, 90th) percentile."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=10, method="inclusive")
    return q[0], q[-1]
