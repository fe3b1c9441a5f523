"""Parse the output of TFLite's `benchmark_model`, in every form its versions have printed.

- summary line: `Inference timings in us: Init: X, First inference: Y, Warmup (avg): Z, Inference (avg): W`
- stats lines: `count=50 first=... curr=... min=... max=... avg=... std=...` and the newer
  `... p5=... median=... p95=...`; the last such line is the timed run (earlier ones are warm-up)
- the old summary: `Average inference timings in us: Warmup: ..., Init: ..., Inference: ...`
  (older still: `no stats: ...` in place of `Inference:`)
Large values are printed in C++'s default float format, e.g. `1.23457e+06`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mnas.errors import UserError

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STATS = re.compile(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({NUM})")
_SUMMARY = re.compile(r"Inference timings in us:(.*)")
_OLD = re.compile(r"Average inference timings in us:(.*)")
_PAIR = re.compile(rf"([A-Za-z][A-Za-z ()]*?)\s*:\s*({NUM})")


@dataclass
class BenchmarkOutput:
    """Timings in microseconds; None where this output form does not report them."""

    avg_us: float
    median_us: float | None = None
    std_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None
    count: int | None = None
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None

    @property
    def typical_us(self) -> float:
        """The median where reported (robust to outliers), else the mean."""
        return self.median_us if self.median_us is not None else self.avg_us


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Read the timed run's statistics from benchmark_model's stdout+stderr."""
    stats: dict[str, float] = {}
    summary: dict[str, float] = {}
    for line in text.splitlines():
        found = dict((k, float(v)) for k, v in _STATS.findall(line))
        if "count" in found and "avg" in found:
            stats = found  # keep the last one: the timed run, after the warm-up line
        m = _OLD.search(line) or _SUMMARY.search(line)
        if m:
            summary = {k.strip().lower(): float(v) for k, v in _PAIR.findall(m.group(1))}
    avg = stats.get("avg")
    if avg is None:
        avg = summary.get("inference (avg)", summary.get("inference", summary.get("no stats")))
    if avg is None:
        tail = " | ".join(ln.strip() for ln in text.strip().splitlines()[-3:])
        raise UserError("could not find inference timings in benchmark_model output "
                        f"(is it a TFLite benchmark_model binary?); last lines: {tail[:300]}")
    count = stats.get("count")
    return BenchmarkOutput(
        avg_us=avg, median_us=stats.get("median"), std_us=stats.get("std"), min_us=stats.get("min"),
        max_us=stats.get("max"), p5_us=stats.get("p5"), p95_us=stats.get("p95"),
        count=int(count) if count is not None else None, init_us=summary.get("init"),
        first_us=summary.get("first inference"),
        warmup_avg_us=summary.get("warmup (avg)", summary.get("warmup")),
    )
