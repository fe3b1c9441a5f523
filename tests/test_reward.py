"""The MnasNet reward (eq. 2-3), the Pareto front and the 2-D hypervolume."""

from __future__ import annotations

import math
import random

import pytest

from mnas.errors import UserError
from mnas.reward import PRESETS, Reward, hypervolume, hypervolume_points, pareto_front
from mnas.search.trial import Trial


def _trial(i: int, acc: float | None, lat: float | None, status: str = "done") -> Trial:
    return Trial(trial_id=i, arch=None, status=status, accuracy=acc, latency_ms=lat)  # type: ignore[arg-type]


# -- reward ----------------------------------------------------------------------------------
def test_presets_are_the_papers() -> None:
    assert PRESETS == {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}
    soft, hard = Reward.preset("soft", 75), Reward.preset("HARD", 80)
    assert (soft.target_ms, soft.alpha, soft.beta) == (75.0, -0.07, -0.07)
    assert (hard.target_ms, hard.alpha, hard.beta) == (80.0, 0.0, -1.0)
    assert Reward(75) == soft  # the default is the soft constraint


@pytest.mark.parametrize("preset", ["soft", "hard"])
def test_reward_at_target_is_accuracy(preset: str) -> None:
    r = Reward.preset(preset, 80)
    assert r(0.5, 80.0) == pytest.approx(0.5, rel=1e-12)
    assert r(0.75, 80.0) == pytest.approx(0.75, rel=1e-12)


def test_soft_reward_around_target() -> None:
    r = Reward.preset("soft", 80)
    # Below T the exponent is alpha, above it beta; both -0.07 for soft.
    assert r(0.5, 40.0) == pytest.approx(0.5 * 0.5**-0.07, rel=1e-12)
    assert r(0.5, 160.0) == pytest.approx(0.5 * 2.0**-0.07, rel=1e-12)
    # The paper's rule of thumb: doubling latency costs about 5% relative accuracy.
    assert r(0.5, 160.0) / r(0.5, 80.0) == pytest.approx(0.953, abs=1e-3)
    assert r(0.5, 79.9) > 0.5 > r(0.5, 80.1)


def test_hard_reward_around_target() -> None:
    r = Reward.preset("hard", 80)
    assert r(0.5, 20.0) == 0.5  # alpha = 0: no bonus for being faster than T
    assert r(0.5, 79.999) == 0.5
    assert r(0.5, 160.0) == pytest.approx(0.25, rel=1e-12)  # beta = -1: acc * T / LAT
    assert r(0.5, 100.0) == pytest.approx(0.4, rel=1e-12)


def test_asymmetric_exponents_pick_side_by_latency() -> None:
    r = Reward(100, alpha=-0.1, beta=-0.5)
    assert r.weight(100) == -0.1 and r.weight(100.01) == -0.5
    assert r(0.8, 50) == pytest.approx(0.8 * 0.5**-0.1)
    assert r(0.8, 400) == pytest.approx(0.8 * 4.0**-0.5)


@pytest.mark.parametrize("preset", ["soft", "hard"])
def test_reward_monotone(preset: str) -> None:
    r = Reward.preset(preset, 50)
    lats = [1, 5, 10, 25, 49.9, 50, 50.1, 75, 100, 400]
    # Never rewards being slower at equal accuracy.
    values = [r(0.7, lat) for lat in lats]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    if preset == "soft":
        assert all(a > b for a, b in zip(values, values[1:], strict=False))
    # Strictly rewards accuracy at equal latency.
    for lat in lats:
        assert r(0.6, lat) < r(0.61, lat)
    # Continuous at T (alpha and beta both give acc at LAT == T).
    assert r(0.7, 50 - 1e-9) == pytest.approx(r(0.7, 50 + 1e-9), rel=1e-6)


def test_reward_recomputable_from_raw_values() -> None:
    rng = random.Random(0)
    for _ in range(100):
        acc, lat, t = rng.random(), rng.uniform(1, 300), rng.uniform(5, 200)
        w = -0.07
        assert Reward(t)(acc, lat) == pytest.approx(acc * (lat / t) ** w, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_ms": 0},
        {"target_ms": -5},
        {"target_ms": float("nan")},
        {"target_ms": float("inf")},
        {"target_ms": "fast"},
        {"target_ms": 75, "alpha": 0.07},
        {"target_ms": 75, "beta": 1.0},
        {"target_ms": 75, "beta": float("nan")},
    ],
)
def test_bad_reward_config_is_user_error(kwargs: dict) -> None:
    with pytest.raises(UserError):
        Reward(**kwargs)


def test_bad_reward_inputs_are_user_errors() -> None:
    r = Reward(75)
    for acc, lat in [(0.5, 0), (0.5, -1), (-0.1, 10), (float("nan"), 10), (0.5, float("inf")), (None, 10)]:
        with pytest.raises(UserError):
            r(acc, lat)
    with pytest.raises(UserError, match="soft, hard"):
        Reward.preset("medium", 75)
    with pytest.raises(UserError):
        Reward.preset("soft", 0)


# -- Pareto front ----------------------------------------------------------------------------
def test_pareto_front_hand_made() -> None:
    trials = [
        _trial(0, 0.70, 10.0),  # front (fastest)
        _trial(1, 0.68, 12.0),  # dominated by 0
        _trial(2, 0.80, 20.0),  # front
        _trial(3, 0.80, 25.0),  # dominated by 2 (same accuracy, slower)
        _trial(4, 0.75, 20.0),  # dominated by 2 (same latency, less accurate)
        _trial(5, 0.90, 40.0),  # front (most accurate)
        _trial(6, 0.95, 5.0, status="failed"),  # failed: never on the front
        _trial(7, 0.99, 1.0, status="running"),
        _trial(8, None, None, status="done"),  # incomplete record
        _trial(9, 0.85, 30.0),  # front
        _trial(10, 0.90, 40.0),  # exact duplicate of 5: both stay
    ]
    front = pareto_front(trials)
    assert [t.trial_id for t in front] == [0, 2, 9, 5, 10]
    assert pareto_front([]) == []
    assert pareto_front([_trial(0, 0.5, 1.0, status="failed")]) == []


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(3)
    trials = [_trial(i, round(rng.random(), 2), round(rng.uniform(1, 50), 1)) for i in range(300)]
    front = {t.trial_id for t in pareto_front(trials)}

    def dominated(t: Trial) -> bool:
        return any(
            o.accuracy >= t.accuracy and o.latency_ms <= t.latency_ms
            and (o.accuracy > t.accuracy or o.latency_ms < t.latency_ms)
            for o in trials
        )

    assert front == {t.trial_id for t in trials if not dominated(t)}


# -- hypervolume -----------------------------------------------------------------------------
def test_hypervolume_hand_computed() -> None:
    # Reference (latency 100 ms, accuracy 0). Front points (acc, lat): (0.5, 20), (0.7, 50), (0.8, 80).
    # Strips by accuracy: [0, 0.5] x (100-20) + [0.5, 0.7] x (100-50) + [0.7, 0.8] x (100-80)
    #                     = 40 + 10 + 2 = 52.
    trials = [
        _trial(0, 0.5, 20.0),
        _trial(1, 0.7, 50.0),
        _trial(2, 0.8, 80.0),
        _trial(3, 0.4, 60.0),  # dominated: adds nothing
        _trial(4, 0.99, 150.0),  # slower than the reference: adds nothing
        _trial(5, 0.99, 1.0, status="failed"),  # failed: ignored
    ]
    assert hypervolume(trials, ref_latency_ms=100.0) == pytest.approx(52.0)
    # A higher reference accuracy removes the bottom strip: (0.5-0.6) nothing, [0.6,0.7] x 50 + 2 = 7.
    assert hypervolume(trials, ref_latency_ms=100.0, ref_accuracy=0.6) == pytest.approx(7.0)
    assert hypervolume([], 100.0) == 0.0
    assert hypervolume([_trial(0, 0.9, 100.0)], 100.0) == 0.0  # on the reference: zero width


def test_hypervolume_matches_grid_estimate_and_grows() -> None:
    rng = random.Random(1)
    pts = [(rng.random(), rng.uniform(0, 10)) for _ in range(40)]
    exact = hypervolume_points(pts, 10.0)
    # Midpoint grid count of the dominated region.
    n = 400
    count = 0
    for i in range(n):
        a = (i + 0.5) / n
        for j in range(n):
            lat = 10.0 * (j + 0.5) / n
            count += any(pa >= a and pl <= lat for pa, pl in pts)
    assert exact == pytest.approx(count / n / n * 10.0, abs=0.05)
    # Adding a point never shrinks the hypervolume.
    assert hypervolume_points(pts + [(0.999, 0.01)], 10.0) >= exact


def test_hypervolume_bad_reference() -> None:
    with pytest.raises(UserError):
        hypervolume([], 0.0)
    with pytest.raises(UserError):
        hypervolume([], float("nan"))
    assert math.isfinite(hypervolume([_trial(0, 0.5, 1.0)], 2.0))
