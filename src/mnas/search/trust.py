"""How far a search's ranking can be trusted, from what the run itself measured.

- Rung agreement: Kendall tau between the accuracies of consecutive rungs over the candidates
  promoted past the lower one (does the early rung rank like the later one?).
- Noise floor: the spread between seeds of one architecture (the first reference, trained with
  several seeds): accuracy differences below it are not differences.
- Size baseline: Kendall tau of accuracy against multiply-adds over the candidates of a rung (does
  the proxy know more than how big a network is?).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mnas.search.store import RungRecord
from mnas.search.trial import Trial


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two paired samples (NaN with fewer than 3 pairs or no variation)."""
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    from scipy.stats import kendalltau  # lazy: scipy is slow to import

    return float(kendalltau(a, b).statistic)


@dataclass(frozen=True)
class RungAgreement:
    low: int
    high: int
    pairs: int
    tau: float


def rung_agreement(records: Sequence[RungRecord]) -> list[RungAgreement]:
    """Tau between rung k and rung k+1 accuracies, over the candidates that finished both."""
    by_trial: dict[int, dict[int, float]] = {}
    for r in records:
        by_trial.setdefault(r.trial_id, {})[r.rung] = r.accuracy
    rungs = sorted({r.rung for r in records})
    out = []
    for low, high in zip(rungs, rungs[1:], strict=False):
        pairs = [(acc[low], acc[high]) for acc in by_trial.values() if low in acc and high in acc]
        out.append(RungAgreement(low, high, len(pairs), kendall_tau([p[0] for p in pairs], [p[1] for p in pairs])))
    return out


@dataclass(frozen=True)
class NoiseFloor:
    name: str
    accuracies: tuple[float, ...]

    @property
    def spread(self) -> float:
        return max(self.accuracies) - min(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else math.nan


def noise_floor(references: Sequence[Trial]) -> NoiseFloor | None:
    """The seed-to-seed spread of the reference trained with several seeds (None if none was)."""
    by_name: dict[str, list[float]] = {}
    for t in references:
        if t.status == "done" and t.accuracy is not None:
            by_name.setdefault(str(t.reference), []).append(float(t.accuracy or 0.0))
    several = [(name, accs) for name, accs in by_name.items() if len(accs) > 1]
    if not several:
        return None
    name, accs = several[0]
    return NoiseFloor(name, tuple(accs))


def size_agreement(trials: Sequence[Trial], macs: Callable[[Trial], float]) -> tuple[int, float]:
    """(candidates, tau of accuracy against MACs) over `trials` with an accuracy."""
    scored = [t for t in trials if t.accuracy is not None]
    return len(scored), kendall_tau([float(t.accuracy or 0.0) for t in scored], [macs(t) for t in scored])
