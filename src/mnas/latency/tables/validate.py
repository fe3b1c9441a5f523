"""How well a latency table predicts: random architectures of its space measured for real, the
same way the table was built (against its reference), against the table's predictions
(`validate_lut` -> `Validation`: MAPE, RMSE, Kendall tau, share within 5% and 10%).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.latency.measure.cache import DEFAULT
from mnas.latency.measure.measuring import measure_many
from mnas.latency.measure.protocol import DEFAULT_PROTOCOL, PROCESSES, Protocol
from mnas.latency.tables.predict import LatencyTable
from mnas.space import SearchSpace


def validation_archs(space: SearchSpace, n: int, seed: int = 777, resolution: int | None = None) -> list[Architecture]:
    """The random architectures validate_lut measures (deterministic; disjoint seeds from the
    calibration's in practice), as they run at `resolution`."""
    rng = random.Random(seed)
    res = resolution or space.resolution
    return [space.sample(rng).for_resolution(res) for _ in range(n)]


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
    skipped: int = 0  # architectures left out: no finite positive prediction or measurement

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


def validate_lut(table: LatencyTable, samples: int = 100, *, seed: int = 777, processes: int = PROCESSES,
                 cache: Any = DEFAULT, protocol: Protocol = DEFAULT_PROTOCOL, space: SearchSpace | None = None,
                 fresh: bool = False,
                 on_result: Callable[[int, Any], None] | None = None) -> Validation:
    """Measure `samples` random architectures of the table's space for real, the same way the
    table was built (against its reference), and compare with the predictions. `fresh`: measure
    again even if cached (an independent second ground truth). `mnas.latency.tables.plot.scatter`
    draws the result."""
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
        measured = [float(r.relative) * ref.ms if r.relative is not None else float("nan") for r in res]
    else:
        measured = [float(r.median_ms) for r in res]
    # a sample is judged only where both figures are finite and positive (a failed measurement or
    # prediction is left out and counted, never turned into a number)
    keep = [i for i, (p, m) in enumerate(zip(predicted, measured, strict=True))
            if math.isfinite(p) and math.isfinite(m) and p > 0 and m > 0]
    if len(keep) < 2:
        raise UserError(f"cannot judge this table: only {len(keep)} of the {len(archs)} architectures have a finite "
                        "positive prediction and measurement (2 are needed); check the table and the target, "
                        "or validate with more --samples")
    predicted = [predicted[i] for i in keep]
    measured = [measured[i] for i in keep]
    scores = evaluate(predicted, measured)
    if not math.isfinite(scores["kendall_tau"]):
        raise UserError(f"cannot judge this table: its {len(keep)} predictions or measurements are all equal, so no "
                        "ranking can be compared; validate with more --samples")
    v = Validation(n=len(keep), predict_us=predict_us, predicted_ms=predicted, measured_ms=measured,
                   arch_ids=[archs[i].id for i in keep],
                   measured_relative=[float(res[i].relative or 0.0) for i in keep] if ref is not None else [],
                   reference_ms=ref.ms if ref is not None else None, coverage=table.coverage(sp),
                   regressed_archs=regressed, skipped=len(archs) - len(keep), **scores)
    return v
