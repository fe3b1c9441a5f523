"""Layer-level latency lookup table: build it for a target and a space, predict, validate.

Prediction = calibration(sum of the units' table entries): the stem, every layer and the head are
looked up by key; the calibration, fitted on a few dozen whole-model measurements, corrects what
runtimes do across layer boundaries (fusion, re-layout, per-call overhead):
    predicted = scale * sum + per_unit * n_units + offset.
Keys the table lacks (a space edited after the build) are filled by a per-op regression on MACs.

Building measures packs of many units per exported model (see `packs`), each pack in >= 3
processes (more while the fastest three disagree on the pack's total: the protocol's consensus
rule, applied to the whole pack because a slow period slows every unit of a process alike), and
an entry is the median of the agreeing processes' medians. It saves after every pack
(`OUT.partial`), so an interrupted build resumes.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mnas.errors import UserError
from mnas.latency.protocol import DEFAULT, Protocol, measure_cpus, measure_many, run_worker
from mnas.latency.result import consensus
from mnas.latency.target import Target
from mnas.latency.units import Unit, arch_units, space_units, unit_from_dict, unit_macs, unit_to_dict
from mnas.space import Architecture, SearchSpace

FORMAT_VERSION = 1
PACK_SIZE = {"onnxruntime": 64, "litert": 32, "torch": 64}


@dataclass
class LatencyTable:
    target: Target
    entries: dict[str, dict[str, Any]]
    space: dict[str, Any] | None = None
    calibration: dict[str, float] = field(default_factory=lambda: {"scale": 1.0, "per_unit": 0.0, "offset": 0.0})
    build: dict[str, Any] = field(default_factory=dict)
    _fallback: dict[str, list[float]] | None = field(default=None, repr=False)

    # ---- prediction ---------------------------------------------------------------------------
    def units(self, arch: Architecture) -> list[Unit]:
        return arch_units(arch, self.target.resolution, self.target.num_classes)

    def raw(self, arch: Architecture) -> tuple[float, int]:
        """(sum of unit entries in ms, number of units)."""
        total, units = 0.0, self.units(arch)
        for u in units:
            e = self.entries.get(u.key)
            total += e["median_ms"] if e is not None else self._regress(u)
        return total, len(units)

    def predict(self, arch: Architecture) -> float:
        """Predicted latency in ms (microseconds of work: dictionary look-ups and a sum)."""
        s, n = self.raw(arch)
        c = self.calibration
        return c["scale"] * s + c["per_unit"] * n + c["offset"]

    def missing(self, arch: Architecture) -> list[str]:
        return [u.key for u in self.units(arch) if u.key not in self.entries]

    def _regress(self, unit: Unit) -> float:
        """ms ~ a * MACs + b per op kind, fitted on the table's own entries."""
        if self._fallback is None:
            import numpy as np

            by_op: dict[str, list[tuple[float, float]]] = {}
            for e in self.entries.values():
                u = unit_from_dict(e["unit"])
                by_op.setdefault(u.op, []).append((unit_macs(u), e["median_ms"]))
            fits = {}
            for op, pts in by_op.items():
                x = np.array([[m, 1.0] for m, _ in pts])
                y = np.array([t for _, t in pts])
                fits[op] = list(np.linalg.lstsq(x, y, rcond=None)[0]) if len(pts) >= 2 else [0.0, float(y.mean())]
            self._fallback = fits
        a, b = self._fallback.get(unit.op) or next(iter(self._fallback.values()), [0.0, 0.0])
        return max(0.0, a * unit_macs(unit) + b)

    # ---- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "target": self.target.to_dict(),
                "fingerprint": self.target.fingerprint, "space": self.space,
                "calibration": self.calibration, "build": self.build, "entries": self.entries}

    def save(self, path: str | os.PathLike) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
            return cls(target=Target.from_dict(d["target"]), entries=d["entries"], space=d.get("space"),
                       calibration=d.get("calibration") or {"scale": 1.0, "per_unit": 0.0, "offset": 0.0},
                       build=d.get("build") or {})
        except FileNotFoundError:
            raise UserError(f"latency table {p} does not exist; build one with `mnas latency build-lut`") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{p} is not a latency table written by `mnas latency build-lut` ({exc})") from None

    def search_space(self) -> SearchSpace:
        if not self.space:
            raise UserError("this latency table does not record its search space; pass --space")
        return SearchSpace.from_dict(self.space)


# ---- calibration --------------------------------------------------------------------------------
def fit_calibration(raw: Sequence[tuple[float, int]], measured: Sequence[float]) -> dict[str, float]:
    """Fit measured ~ scale * sum + per_unit * n + offset, or measured ~ scale * sum alone,
    whichever predicts held-out models better (leave-one-out relative error): with few or noisy
    whole-model measurements the three-parameter fit overfits. Rows are weighted by 1/measured
    so relative errors count equally."""
    import numpy as np

    y = np.asarray(measured, dtype=float)
    s = np.array([r[0] for r in raw], dtype=float)
    n = np.array([r[1] for r in raw], dtype=float)
    if len(y) == 0:
        return {"scale": 1.0, "per_unit": 0.0, "offset": 0.0}
    full = np.stack([s, n, np.ones_like(s)], axis=1)

    def fit(rows: np.ndarray, cols: list[int]) -> np.ndarray:
        x = full[rows][:, cols] / y[rows, None]
        coef = np.zeros(3)
        coef[cols] = np.linalg.lstsq(x, np.ones(len(rows)), rcond=None)[0]
        return coef

    candidates = [[0]]
    if len(y) >= 8 and np.ptp(n) > 0:
        candidates.append([0, 1, 2])
    best, best_err = None, float("inf")
    for cols in candidates:
        errs = [abs(full[i] @ fit(np.array([j for j in range(len(y)) if j != i]), cols) / y[i] - 1)
                for i in range(len(y))] if len(y) > len(cols) else [0.0]
        err = float(np.mean(errs))
        if err < best_err - 1e-12:
            best, best_err = cols, err
    coef = fit(np.arange(len(y)), best)
    return {"scale": float(coef[0]), "per_unit": float(coef[1]), "offset": float(coef[2]),
            "loo_mape": 100 * best_err}


# ---- building -----------------------------------------------------------------------------------
def calibration_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Architecture]:
    """The architectures whose whole-model latency fits the calibration (deterministic)."""
    return [space.sample(random.Random(seed * 100003 + i)) for i in range(n)]


def validation_archs(space: SearchSpace, n: int, seed: int = 777) -> list[Architecture]:
    """The random architectures validate_lut measures (deterministic; disjoint seeds from the
    calibration's in practice)."""
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def build_lut(space: SearchSpace, target: Target, out: str | os.PathLike, *, processes: int = 3,
              calibration: int = 32, pack_size: int | None = None, seed: int = 0,
              cache: Any = DEFAULT, protocol: Protocol = Protocol(), progress: bool = True,
              units: Sequence[Unit] | None = None) -> LatencyTable:
    """Measure every unit the space can produce, fit the calibration, save to `out`."""
    if target.backend == "android":
        raise UserError("build-lut measures on this machine: use --target litert, onnxruntime or torch "
                        "(tables for the android backend are not supported yet)")
    from mnas.latency.backends import get_backend

    reason = get_backend(target.backend).unavailable()
    if reason:
        raise UserError(f"backend {target.backend} cannot run here: {reason}")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    all_units = list(units) if units is not None else space_units(space, target.resolution, target.num_classes)
    table = LatencyTable(target=target, entries={}, space=space.to_dict())
    started = time.time()
    spent = 0.0
    if partial.exists():  # resume
        try:
            prev = LatencyTable.load(partial)
        except UserError:
            prev = None
        if prev is not None and prev.target.fingerprint == target.fingerprint and prev.space == table.space:
            table.entries = prev.entries
            spent = float(prev.build.get("seconds", 0.0))
    todo = [u for u in all_units if u.key not in table.entries]
    size = pack_size or PACK_SIZE.get(target.backend, 32)
    packs = [todo[i:i + size] for i in range(0, len(todo), size)]
    cpus = measure_cpus(target.threads)
    pack_processes: list[int] = []
    t0 = time.time()
    with _progress(progress) as bar:
        task = bar.add_task("layers", total=len(all_units), completed=len(all_units) - len(todo))
        for pack in packs:
            with tempfile.TemporaryDirectory(prefix="mnas-pack-") as tmp:
                from mnas.latency.packs import SUFFIX, export_pack

                path = export_pack(pack, target, Path(tmp) / f"pack{SUFFIX[target.backend]}")
                per_proc = [run_worker(path, target, protocol, cpus, pack=len(pack)) for _ in range(processes)]
                while True:  # a slow period of the machine slows every unit of a process alike
                    totals = [sum(s.median_ms for s in proc) for proc in per_proc]
                    chosen, agree = consensus(totals, processes, protocol.max_spread)
                    if agree or len(per_proc) >= protocol.max_processes:
                        break
                    per_proc.append(run_worker(path, target, protocol, cpus, pack=len(pack)))
            pack_processes.append(len(per_proc))
            for i, u in enumerate(pack):
                samples = [per_proc[p][i] for p in sorted(chosen)]
                medians = [s.median_ms for s in samples]
                pooled = [t for s in samples for t in (s.times_ms or [])]
                table.entries[u.key] = {
                    "median_ms": statistics.median(medians),
                    "mean_ms": statistics.fmean(pooled) if pooled else statistics.fmean(medians),
                    "std_ms": statistics.pstdev(pooled) if pooled else 0.0,
                    "count": len(pooled),
                    "per_process_ms": [proc[i].median_ms for proc in per_proc],
                    "used_processes": sorted(chosen),
                    "stable": agree,
                    "preempted_fraction": statistics.fmean(s.preempted_fraction for s in samples),
                    "unit": unit_to_dict(u),
                }
            table.build = {"seconds": spent + time.time() - t0, "units": len(table.entries)}
            table.save(partial)
            bar.advance(task, len(pack))
        layers_s = time.time() - t0
        archs = calibration_archs(space, calibration, seed)
        measured: list[float] = []
        if archs:
            ctask = bar.add_task("calibration", total=len(archs))
            res = measure_many(archs, target, processes=processes, cache=cache, protocol=protocol,
                               on_result=lambda i, r: bar.advance(ctask, 1))
            measured = [r.median_ms for r in res]
            table.calibration = fit_calibration([table.raw(a) for a in archs], measured)
    table.calibration["samples"] = len(measured)
    if measured:
        pred = [table.predict(a) for a in archs]
        table.calibration["fit_mape"] = 100 * statistics.fmean(abs(p - m) / m for p, m in zip(pred, measured))
    table.build = {"seconds": spent + time.time() - t0, "layer_seconds": spent + layers_s,
                   "units": len(table.entries), "pack_size": size, "processes": processes,
                   "calibration_archs": len(archs), "started_at": started, "finished_at": time.time(),
                   "pack_processes": pack_processes,
                   "unstable_units": sum(not e.get("stable", True) for e in table.entries.values())}
    table.save(out)
    partial.unlink(missing_ok=True)
    return table


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)


# ---- validation ---------------------------------------------------------------------------------
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

    @property
    def meets_bar(self) -> bool:
        """The issue's bar: MAPE <= 5%, Kendall tau >= 0.9, 100% within +-10%."""
        return self.mape <= 5.0 and self.kendall_tau >= 0.9 and self.within_10 >= 100.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "meets_bar": self.meets_bar}


def evaluate(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    from scipy.stats import kendalltau

    err = [(p - m) / m for p, m in zip(predicted, measured)]
    tau = kendalltau(predicted, measured).statistic if len(measured) > 1 else float("nan")
    return {
        "mape": 100 * statistics.fmean(abs(e) for e in err),
        "rmse_ms": math.sqrt(statistics.fmean((p - m) ** 2 for p, m in zip(predicted, measured))),
        "kendall_tau": float(tau),
        "within_5": 100 * sum(abs(e) <= 0.05 for e in err) / len(err),
        "within_10": 100 * sum(abs(e) <= 0.10 for e in err) / len(err),
    }


def validate_lut(table: LatencyTable, samples: int = 100, *, seed: int = 777, processes: int = 3,
                 cache: Any = DEFAULT, protocol: Protocol = Protocol(), space: SearchSpace | None = None,
                 plot: str | os.PathLike | None = None,
                 on_result: Callable[[int, Any], None] | None = None) -> Validation:
    """Measure `samples` random architectures of the table's space and compare with predictions."""
    if samples < 2:
        raise UserError("validate with at least 2 samples (the issue's bar uses 100)")
    sp = space or table.search_space()
    archs = validation_archs(sp, samples, seed)
    t = time.perf_counter()
    predicted = [table.predict(a) for a in archs]
    predict_us = (time.perf_counter() - t) / len(archs) * 1e6
    res = measure_many(archs, table.target, processes=processes, cache=cache, protocol=protocol,
                       on_result=on_result)
    measured = [r.median_ms for r in res]
    v = Validation(n=len(archs), predict_us=predict_us, predicted_ms=predicted, measured_ms=measured,
                   arch_ids=[a.id for a in archs], **evaluate(predicted, measured))
    if plot:
        scatter(v, plot, title=f"LUT {table.target.label}")
    return v


def scatter(v: Validation, path: str | os.PathLike, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(v.measured_ms, v.predicted_ms, s=12)
    lo = min(v.measured_ms + v.predicted_ms) * 0.95
    hi = max(v.measured_ms + v.predicted_ms) * 1.05
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], alpha=0.15, label="±10%")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(f"{title}\nMAPE {v.mape:.1f}%  tau {v.kendall_tau:.2f}  ±10% {v.within_10:.0f}%", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
