"""From the sum of a table's unit entries to a whole network's latency: the calibration.

Units timed on their own (in packs) do not add up exactly to the network they come from: runtimes
fuse across layer boundaries, re-layout tensors and pay per-call costs, and how much of that a unit
loses or gains depends on its kind. Measured on the full onnxruntime table (docs/benchmarks/
latency.md), one scale for every unit predicted MBConv+SE-heavy networks too slow and
regular-conv-heavy ones too fast; a scale per op family removed most of that.

The calibration is a linear model, fitted on a few dozen whole networks measured against the same
reference as the units, with rows weighted by 1/measured so that relative errors count equally:

    prediction = sum over families f of scale_f * (entries of family f)
                 + per_unit * (number of units) + per_se_unit * (units with squeeze-excite)
                 + per_shortcut_unit * (units that add a shortcut) + offset

Several such models are candidates, from one scale up to a scale per family plus costs per SE and
per shortcut unit; the one with the lowest leave-one-out error on the calibration networks is
kept, so a model with more terms is used only when it predicts networks it was not fitted on
better. A family the calibration networks did not contain falls back to the one-scale fit. (The
SE and shortcut terms answer residuals seen on the onnxruntime table's validation networks: a unit
with SE or a residual add timed on its own costs a little more than it adds inside a network.)

A calibration is a plain dict stored in the table: "scale", "per_unit", "offset" (every table has
them; older tables have only these), "family_scales", "per_se_unit" and "per_shortcut_unit" (when
the chosen model has them), "model" (its name) and "loo_mape".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnas.latency.tables.units import HeadConfig, StemConfig, Unit

NO_CALIBRATION = {"scale": 1.0, "per_unit": 0.0, "offset": 0.0}


def unit_family(unit: Unit) -> str:
    """The calibration family of a unit: its op, MBConv split by expansion ratio ("mbconv6");
    the stem and the head together ("other")."""
    if isinstance(unit, StemConfig | HeadConfig):
        return "other"
    return f"mbconv{unit.expand:g}" if unit.op == "mbconv" else unit.op


def has_se(unit: Unit) -> bool:
    return not isinstance(unit, StemConfig | HeadConfig) and bool(unit.se_ratio)


def has_shortcut(unit: Unit) -> bool:
    return not isinstance(unit, StemConfig | HeadConfig) and unit.adds_shortcut


@dataclass
class Terms:
    """What a calibration sees of one network: the entries summed per family, and unit counts."""

    families: dict[str, float] = field(default_factory=dict)
    units: int = 0
    se_units: int = 0
    shortcut_units: int = 0

    @property
    def total(self) -> float:
        return sum(self.families.values())

    def add(self, unit: Unit, value: float) -> None:
        f = unit_family(unit)
        self.families[f] = self.families.get(f, 0.0) + value
        self.units += 1
        self.se_units += has_se(unit)
        self.shortcut_units += has_shortcut(unit)


def apply(calibration: dict[str, Any], terms: Terms) -> float:
    """The calibrated prediction for one network."""
    c = calibration
    scales = c.get("family_scales") or {}
    scaled = sum(scales.get(f, c["scale"]) * v for f, v in terms.families.items())
    return (scaled + c["per_unit"] * terms.units + c.get("per_se_unit", 0.0) * terms.se_units
            + c.get("per_shortcut_unit", 0.0) * terms.shortcut_units + c["offset"])


def _loo_error(x: np.ndarray, y: np.ndarray) -> float:
    """Mean relative error of each network predicted by the fit on all the others."""
    errs = []
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        errs.append(abs(x[i] @ _fit(x[rest], y[rest]) / y[i] - 1))
    return float(np.mean(errs))


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(x / y[:, None], np.ones(len(y)), rcond=None)[0]


def fit_calibration(terms: Sequence[Terms], measured: Sequence[float]) -> dict[str, Any]:
    """The candidate model with the lowest leave-one-out error on these networks (see the module
    docstring); ties go to the model with fewer terms."""
    y = np.asarray(measured, dtype=float)
    if len(y) == 0:
        return dict(NO_CALIBRATION)
    families = sorted({f for t in terms for f, v in t.families.items() if v})
    total = np.array([t.total for t in terms])
    fam = np.array([[t.families.get(f, 0.0) for f in families] for t in terms]).reshape(len(y), len(families))
    n = np.array([float(t.units) for t in terms])
    se = np.array([float(t.se_units) for t in terms])
    shortcut = np.array([float(t.shortcut_units) for t in terms])
    one = np.ones(len(y))
    # name -> (design matrix, what each column is)
    models: dict[str, tuple[np.ndarray, list[str]]] = {"one scale": (total[:, None], ["scale"])}
    if np.ptp(n) > 0:
        models["scale, per unit, offset"] = (np.stack([total, n, one], axis=1), ["scale", "per_unit", "offset"])
    if len(families) > 1:
        x, cols = fam, [f"family:{f}" for f in families]
        labels: list[str] = []
        models["scale per family"] = (x, cols)
        for label, col, values in (("SE", "per_se_unit", se), ("shortcut", "per_shortcut_unit", shortcut)):
            if np.ptp(values) > 0:  # each cost on top of the previous candidate
                x, cols, labels = np.column_stack([x, values]), [*cols, col], [*labels, label]
                models[f"scale per family, per {' and '.join(labels)} unit"] = (x, cols)
    best, best_err = "one scale", float("inf")
    for name, (x, cols) in models.items():
        if name != "one scale" and len(y) < 2 * len(cols) + 2:  # too few networks for its coefficients
            continue
        err = _loo_error(x, y) if len(y) > len(cols) else 0.0
        if err < best_err - 1e-12:
            best, best_err = name, err
    x, cols = models[best]
    coef = _fit(x, y)
    out: dict[str, Any] = dict(NO_CALIBRATION)
    out["scale"] = float(_fit(total[:, None], y)[0])  # also the fallback of a family the fit did not see
    scales = {}
    for col, value in zip(cols, coef, strict=True):
        if col.startswith("family:"):
            scales[col.removeprefix("family:")] = float(value)
        else:
            out[col] = float(value)
    if scales:
        out["family_scales"] = scales
    out["model"] = best
    out["loo_mape"] = 100 * best_err
    return out
