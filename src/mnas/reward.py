"""The MnasNet multi-objective reward and the Pareto tools that judge a search.

The reward is eq. 2-3 of Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for
Mobile" (CVPR 2019, arXiv:1807.11626, Sec. 3):

    reward(m) = ACC(m) * (LAT(m) / T) ** w,   w = alpha if LAT(m) <= T else beta

alpha = beta = -0.07 is the paper's *soft* constraint (doubling latency costs about 5% relative
accuracy on both sides of T); alpha = 0, beta = -1 is its *hard* constraint (no bonus below T, a
steep penalty above it). Trials always store raw accuracy and latency, so any reward can be
recomputed later; the Pareto front and its hypervolume need no reward at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mnas.errors import UserError

#: alpha, beta of the paper's two named settings (Sec. 3, Fig. 3).
PRESETS: dict[str, tuple[float, float]] = {
    "soft": (-0.07, -0.07),
    "hard": (0.0, -1.0),
}


def _finite(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise UserError(f"{what} must be finite, got {value!r}")
    return out


@dataclass(frozen=True)
class Reward:
    """ACC x (LAT/T)^w with w = alpha below/at the target latency T and beta above it."""

    target_ms: float
    alpha: float = PRESETS["soft"][0]
    beta: float = PRESETS["soft"][1]

    def __post_init__(self) -> None:
        target = _finite(self.target_ms, "reward target latency (target_ms)")
        if target <= 0:
            raise UserError(f"reward target latency must be > 0 ms, got {self.target_ms!r}; set e.g. target_ms: 75")
        alpha = _finite(self.alpha, "reward alpha")
        beta = _finite(self.beta, "reward beta")
        if alpha > 0 or beta > 0:
            # A positive exponent would reward *slower* models: almost surely a sign mistake.
            raise UserError(
                f"reward exponents must be <= 0 (alpha={alpha}, beta={beta}); "
                "the paper uses alpha=beta=-0.07 (soft) or alpha=0, beta=-1 (hard)"
            )
        object.__setattr__(self, "target_ms", target)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)

    @classmethod
    def preset(cls, name: str, target_ms: float) -> Reward:
        """The paper's `soft` (alpha=beta=-0.07) or `hard` (alpha=0, beta=-1) reward at T=target_ms."""
        key = str(name).strip().lower()
        if key not in PRESETS:
            raise UserError(f"unknown reward preset {name!r}; choose one of: {', '.join(PRESETS)}")
        alpha, beta = PRESETS[key]
        return cls(target_ms, alpha, beta)

    def weight(self, latency_ms: float) -> float:
        """The exponent w used at this latency (alpha when LAT <= T, else beta)."""
        return self.alpha if latency_ms <= self.target_ms else self.beta

    def __call__(self, accuracy: float | None, latency_ms: float | None) -> float:
        acc = _finite(accuracy, "accuracy")
        lat = _finite(latency_ms, "latency_ms")
        if acc < 0:
            raise UserError(f"accuracy must be >= 0, got {accuracy!r}")
        if lat <= 0:
            raise UserError(f"latency must be > 0 ms to compute the MnasNet reward, got {latency_ms!r}")
        return acc * (lat / self.target_ms) ** self.weight(lat)

    def to_dict(self) -> dict[str, float]:
        return {"target_ms": self.target_ms, "alpha": self.alpha, "beta": self.beta}


class _Scored(Protocol):
    status: str
    accuracy: float | None
    latency_ms: float | None


def _usable(trials: Iterable[_Scored]) -> list[_Scored]:
    """Done trials with a finite accuracy and latency: the only ones a front can contain."""
    out = []
    for t in trials:
        if getattr(t, "status", None) != "done":
            continue
        acc, lat = getattr(t, "accuracy", None), getattr(t, "latency_ms", None)
        if acc is None or lat is None:
            continue
        if not (math.isfinite(float(acc)) and math.isfinite(float(lat))):
            continue
        out.append(t)
    return out


def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (accuracy, latency) points, accuracy up, latency down.

    A point is dominated when another is at least as accurate and at least as fast, and strictly
    better in one. Exact duplicates dominate neither each other, so both stay. The result is
    sorted by latency (then accuracy descending), i.e. along the front from fast to accurate.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front: list[int] = []
    best_acc = -math.inf
    best_point: tuple[float, float] | None = None
    for i in order:
        acc, lat = points[i]
        if acc > best_acc:
            front.append(i)
            best_acc, best_point = acc, (acc, lat)
        elif best_point is not None and (acc, lat) == best_point:
            front.append(i)  # an exact duplicate of the last front point
    return front


def pareto_front(trials: Iterable[_Scored]) -> list[Any]:
    """The done trials no other done trial beats on both accuracy (up) and latency (down)."""
    usable = _usable(trials)
    points = [(float(t.accuracy), float(t.latency_ms)) for t in usable]  # type: ignore[arg-type]
    return [usable[i] for i in pareto_indices(points)]


def hypervolume_points(
    points: Iterable[tuple[float, float]], ref_latency_ms: float, ref_accuracy: float = 0.0
) -> float:
    """Exact 2-D hypervolume of (accuracy, latency) points against a reference point.

    The area (accuracy x ms) of the set of (acc, lat) with ref_accuracy <= acc <= some point's
    accuracy and that point's latency <= lat <= ref_latency_ms. Points slower than the reference
    latency or less accurate than the reference accuracy add nothing.
    """
    ref_lat = _finite(ref_latency_ms, "ref_latency_ms")
    ref_acc = _finite(ref_accuracy, "ref_accuracy")
    if ref_lat <= 0:
        raise UserError(f"hypervolume reference latency must be > 0 ms, got {ref_latency_ms!r}")
    inside = [(acc, lat) for acc, lat in points if lat < ref_lat and acc > ref_acc]
    volume = 0.0
    prev_acc = ref_acc
    for i in pareto_indices(inside):  # latency ascending, accuracy strictly increasing
        acc, lat = inside[i]
        if acc > prev_acc:
            volume += (ref_lat - lat) * (acc - prev_acc)
            prev_acc = acc
    return volume


def hypervolume(trials: Iterable[_Scored], ref_latency_ms: float, ref_accuracy: float = 0.0) -> float:
    """Hypervolume of the done trials' Pareto front (see `hypervolume_points`); bigger is better."""
    usable = _usable(trials)
    return hypervolume_points(
        [(float(t.accuracy), float(t.latency_ms)) for t in usable],  # type: ignore[arg-type]
        ref_latency_ms,
        ref_accuracy,
    )
