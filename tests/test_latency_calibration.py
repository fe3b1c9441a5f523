"""The calibration from summed unit entries to whole-network latency: each candidate model is
recovered from networks that follow it, the leave-one-out choice does not overfit a few networks,
and tables written before per-family scales still predict."""

from __future__ import annotations

import random

import pytest

from mnas.latency.tables.calibration import Terms, apply, fit_calibration, unit_family
from mnas.latency.tables.units import arch_units
from mnas.space import SearchSpace

FAMILIES = ("conv", "ds", "mbconv6", "other")


def _networks(n: int, seed: int = 0) -> list[Terms]:
    rng = random.Random(seed)
    return [Terms({f: rng.uniform(0.05, 0.5) for f in FAMILIES}, units=rng.randint(10, 25), se_units=rng.randint(0, 8),
                  shortcut_units=rng.randint(0, 12)) for _ in range(n)]


def test_one_scale_per_unit_and_offset_on_known_numbers() -> None:
    sums = [(1.0, 10), (2.0, 12), (3.0, 15), (4.0, 11), (5.0, 18), (2.5, 14), (3.5, 13), (1.5, 16)]
    terms = [Terms({"conv": s}, units=n) for s, n in sums]
    c = fit_calibration(terms, [1.1 * s + 0.01 * n + 0.2 for s, n in sums])
    assert c["model"] == "scale, per unit, offset" and c["loo_mape"] == pytest.approx(0.0, abs=1e-9)
    assert c["scale"] == pytest.approx(1.1) and c["per_unit"] == pytest.approx(0.01) and c["offset"] == pytest.approx(0.2)


def test_a_scale_per_family_is_recovered_and_predicts_new_networks() -> None:
    true = {"conv": 1.2, "ds": 0.8, "mbconv6": 0.95, "other": 1.5}
    truth = lambda t: sum(true[f] * v for f, v in t.families.items())
    c = fit_calibration(_networks(32), [truth(t) for t in _networks(32)])
    assert c["model"] == "scale per family"
    assert c["family_scales"] == pytest.approx(true)
    for t in _networks(10, seed=1):  # networks the fit never saw
        assert apply(c, t) == pytest.approx(truth(t))


def test_a_cost_per_se_unit_is_recovered() -> None:
    true = {"conv": 1.2, "ds": 0.8, "mbconv6": 0.95, "other": 1.5}
    truth = lambda t: sum(true[f] * v for f, v in t.families.items()) + 0.03 * t.se_units
    nets = _networks(40)
    c = fit_calibration(nets, [truth(t) for t in nets])
    assert c["model"] == "scale per family, per SE unit"
    assert c["per_se_unit"] == pytest.approx(0.03) and c["family_scales"] == pytest.approx(true)
    assert "per_shortcut_unit" not in c  # the shortcut count varies too, but adds nothing here


def test_a_cost_per_shortcut_unit_is_recovered() -> None:
    true = {"conv": 1.2, "ds": 0.8, "mbconv6": 0.95, "other": 1.5}
    truth = lambda t: (sum(true[f] * v for f, v in t.families.items()) + 0.03 * t.se_units
                       + 0.01 * t.shortcut_units)
    nets = _networks(40)
    c = fit_calibration(nets, [truth(t) for t in nets])
    assert c["model"] == "scale per family, per SE and shortcut unit"
    assert c["per_se_unit"] == pytest.approx(0.03) and c["per_shortcut_unit"] == pytest.approx(0.01)


def test_few_networks_get_few_terms() -> None:
    """Six noisy networks cannot carry four family scales: one scale it is."""
    rng = random.Random(3)
    nets = _networks(6)
    c = fit_calibration(nets, [0.9 * t.total * rng.uniform(0.97, 1.03) for t in nets])
    assert c["model"] == "one scale" and "family_scales" not in c
    assert c["scale"] == pytest.approx(0.9, rel=0.05)
    assert fit_calibration([], []) == {"scale": 1.0, "per_unit": 0.0, "offset": 0.0}


def test_an_unseen_family_falls_back_to_the_one_scale_fit() -> None:
    nets = [Terms({"conv": t.families["conv"], "ds": t.families["ds"]}, t.units) for t in _networks(16)]
    c = fit_calibration(nets, [1.2 * t.families["conv"] + 0.8 * t.families["ds"] for t in nets])
    assert c["model"] == "scale per family" and set(c["family_scales"]) == {"conv", "ds"}
    assert apply(c, Terms({"conv": 1.0, "mbconv3": 2.0})) == pytest.approx(1.2 + c["scale"] * 2.0)


def test_a_calibration_of_an_older_table_still_applies() -> None:
    old = {"scale": 0.9, "per_unit": 0.01, "offset": 0.05}
    terms = Terms({"conv": 1.0, "mbconv6": 1.0}, units=10, se_units=3, shortcut_units=4)
    assert apply(old, terms) == pytest.approx(0.9 * 2 + 0.1 + 0.05)


def test_every_unit_of_the_default_space_has_a_family_and_its_counts() -> None:
    arch = SearchSpace.default().sample(random.Random(0))
    units = arch_units(arch, 224, 1000)
    families = {unit_family(u) for u in units}
    assert "other" in families and families <= {"conv", "ds", "mbconv3", "mbconv6", "other"}
    terms = Terms()
    for u in units:
        terms.add(u, 1.0)
    assert terms.units == len(units) and terms.total == len(units)
    layers = units[1:-1]  # between the stem and the head
    assert terms.se_units == sum(u.se_ratio > 0 for u in layers)
    assert terms.shortcut_units == sum(u.adds_shortcut for u in layers)


def test_the_shortcut_rule_is_the_models() -> None:
    """A layer adds a shortcut exactly when the built network's layer has one."""
    from mnas.model import build_model

    arch = SearchSpace.default().sample(random.Random(1))
    built = [m.has_skip for m in build_model(arch).modules() if hasattr(m, "has_skip")]
    assert built == [u.adds_shortcut for u in arch.layer_configs(224)]
