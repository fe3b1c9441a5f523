"""NAS-Bench-201 as a search problem: real accuracy and device latency of every cell, read from a
table, so the real search loop runs over it in seconds and strategies can be compared over many
seeds.

The table (`nb201_hw.csv.gz`: 15,625 cells, 6 edges x 5 ops) holds each cell's CIFAR-10 test
accuracy after 200 epochs (NATS-Bench) and its latency on four devices (HW-NAS-Bench). The space
is `NB201Space` (6 decisions of 5 ops; its architectures are `Cell`s), accuracy comes through the
accuracy seam (`TableAccuracy`: one rung, 200 epochs, nothing trained) and latency through the
latency seam (`DeviceLatency`: one device column, nothing measured). A setting is a device, the
paper's soft or hard reward and a latency target T; `search` runs one strategy on one setting
through `mnas.search.loop.start_search` (its budget, batches, repeats and patience, its store, in
a temporary folder), optionally with the learned rung 0 in front (`predictor`).
benchmarks/search_strategies.py and benchmarks/ppo_tuning.py use this module
(docs/benchmarks/search.md, search_ppo_tuning.md).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from mnas.errors import UserError
from mnas.latency.measure.result import ReferenceLatency
from mnas.latency.model import Estimate
from mnas.latency.target import Target
from mnas.reward import Reward
from mnas.search.accuracy import AccuracyModel, PredictedAccuracy, RungResult, with_predictor
from mnas.search.config import PredictorConfig, SearchConfig, parse_config
from mnas.search.loop import start_search
from mnas.search.store import Store
from mnas.search.trial import arch_reader

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DEVICES = ("pixel3", "raspi4", "eyeriss", "fpga")
PRESETS = ("soft", "hard")
PERCENTILES = (25, 50, 75)
BATCH = 16
ALPHA = 0.05  # the significance level of `p_greater` comparisons


EDGES = 6
EPOCHS = 200  # the training the table's accuracies come from: its one rung


@dataclass(frozen=True)
class Cell:
    """One NB201 cell: its op on each of the 6 edges; `id` is its NB201 string."""

    ops: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != EDGES or not all(isinstance(o, int) and 0 <= o < len(OPS) for o in self.ops):
            raise ValueError(f"an NB201 cell has {EDGES} ops among 0..{len(OPS) - 1}, not {list(self.ops)}")

    @property
    def id(self) -> str:
        e = [OPS[o] for o in self.ops]
        return f"|{e[0]}~0|+|{e[1]}~0|{e[2]}~1|+|{e[3]}~0|{e[4]}~1|{e[5]}~2|"

    def to_json(self) -> str:
        return json.dumps({"nb201": list(self.ops)})

    @classmethod
    def from_json(cls, text: str) -> Cell:
        return cls(tuple(int(o) for o in json.loads(text)["nb201"]))


class NB201Space:
    """The space adapter the strategies and the loop need: 6 decisions of 5 ops each; a stored
    cell is read back with `arch_from_json`."""

    name = "nb201"

    def decision_sizes(self) -> list[int]:
        return [len(OPS)] * EDGES

    def decode(self, tokens: Sequence[int]) -> Cell:
        return Cell(tuple(int(t) for t in tokens))

    def encode(self, arch: Cell) -> list[int]:
        if not isinstance(arch, Cell):
            raise ValueError(f"not an NB201 cell: {type(arch).__name__}")
        return list(arch.ops)

    def arch_from_json(self, text: str) -> Cell:
        return Cell.from_json(text)


@dataclass(frozen=True)
class Setting:
    device: str
    preset: str
    percentile: int
    target_ms: float

    @property
    def label(self) -> str:
        return f"{self.device}/{self.preset}/T{self.percentile}"

    def reward(self) -> Reward:
        return Reward.preset(self.preset, self.target_ms)


Table = dict[tuple[int, ...], tuple[float, dict[str, float]]]


def load_table(path: Path) -> Table:
    """ops tuple -> (CIFAR-10 test accuracy as a fraction, {device: latency ms})."""
    if not path.is_file():
        raise UserError(f"NB201 table not found at {path}; pass its path or set MNAS_DATA to the folder holding nb201_hw.csv.gz")
    table: Table = {}
    with gzip.open(path, "rt") as f:
        for row in csv.DictReader(f):
            ops = tuple(int(row[f"op_e{i}"]) for i in range(6))
            # Accuracy as a fraction, like mnas.train's val_acc, so rewards are on the search's scale.
            table[ops] = (float(row["cifar10_test_acc"]) / 100.0,
                          {d: float(row[f"{d}_latency_ms"]) for d in DEVICES})
    if len(table) != 5**6:
        raise UserError(f"{path} has {len(table)} distinct cells, expected 15625; is it the nb201_hw table?")
    return table


def default_table_path() -> Path:
    """$MNAS_DATA/nb201_hw.csv.gz (else under ~/.cache/mnas/data)."""
    return Path(os.environ.get("MNAS_DATA", str(Path.home() / ".cache" / "mnas" / "data"))) / "nb201_hw.csv.gz"


def make_settings(table: Table) -> list[Setting]:
    out = []
    for device in DEVICES:
        lats = np.array([lat[device] for _, lat in table.values()])
        for preset in PRESETS:
            for pct in PERCENTILES:
                out.append(Setting(device, preset, pct, float(np.percentile(lats, pct))))
    return out


# -- the two seams over the table -----------------------------------------------------------------
def _entry(table: Table, arch: Any) -> tuple[float, dict[str, float]] | None:
    ops = getattr(arch, "ops", None)
    return table.get(ops) if isinstance(ops, tuple) else None


class TableAccuracy(AccuracyModel):
    """Accuracy by lookup: a cell's CIFAR-10 test accuracy after 200 epochs (a fraction, like the
    proxy's). One rung, no data, nothing trained, never fails for a cell of the table."""

    kind = "table"
    phase = "lookup"
    needs_data = False
    scores_any_architecture = False  # the table's cells only: no reference networks

    def __init__(self, config: SearchConfig, table: Table) -> None:
        super().__init__(config)
        self.table = table

    @property
    def rungs(self) -> list[int]:
        return [EPOCHS]

    @property
    def unit(self) -> str:
        return "epochs"

    def check(self, data: Any, space: Any) -> None:
        if not isinstance(space, NB201Space):
            raise UserError(f"the NB201 table scores NB201 cells only, not the architectures of space "
                            f"{getattr(space, 'name', type(space).__name__)!r}")

    def evaluate(self, arch: Any, rung: int, *, seed: int, state: Path | None = None) -> RungResult:
        start = time.perf_counter()
        entry = _entry(self.table, arch)
        if entry is None:
            return RungResult(None, f"accuracy: {getattr(arch, 'id', arch)} is not in the NB201 table", 0.0,
                              EPOCHS, rung=rung)
        return RungResult(entry[0], None, time.perf_counter() - start, EPOCHS, rung=rung)

    def describe(self) -> str:
        return "NAS-Bench-201 table: CIFAR-10 test accuracy after 200 epochs (NATS-Bench), looked up"


class DeviceLatency:
    """Latency by lookup: one device column of the table (HW-NAS-Bench), in ms; no reference
    network (a search gives `reward.target_ms`)."""

    def __init__(self, table: Table, device: str) -> None:
        if device not in DEVICES:
            raise UserError(f"unknown NB201 device {device!r}; choose one of {', '.join(DEVICES)}")
        self.cells, self.device = table, device  # not `table`: the loop checks a LatencyTable's coverage
        self.target = Target(backend="litert", resolution=32, num_classes=10)  # the CIFAR-10 network, TFLite

    def estimate(self, arch: Any) -> Estimate:
        entry = _entry(self.cells, arch)
        if entry is None:
            raise UserError(f"{getattr(arch, 'id', arch)} is not in the NB201 table")
        return Estimate(entry[1][self.device], None, "lut")

    def estimate_many(self, archs: Sequence[Any]) -> list[Estimate]:
        return [self.estimate(a) for a in archs]

    def latency_ms(self, arch: Any) -> float:
        return self.estimate(arch).ms

    def reference_latency(self, name: str | None = None) -> ReferenceLatency:
        raise UserError("the NB201 table has no reference network; give reward.target_ms")


# -- one search ----------------------------------------------------------------------------------
_TABLE: Table = {}


def use_table(table: Table) -> None:
    """A worker process's table (a pool's initializer): `search` reads it when given none."""
    global _TABLE
    _TABLE = table
    torch.set_num_threads(1)


def search_config(name: str, knobs: dict[str, Any], seed: int, setting: Setting, budget: int,
                  batch: int = BATCH, predictor: PredictorConfig | None = None) -> SearchConfig:
    """The search config of one search over the table: the setting's reward and device, the
    strategy, `budget` evaluations in batches of `batch`, no reference networks."""
    data: dict[str, Any] = {
        "space": NB201Space.name,
        "seed": seed,
        "latency": {"name": setting.device},
        "reward": {"target_ms": setting.target_ms, "preset": setting.preset},
        "strategy": {"name": name, "knobs": knobs},
        "budget": {"trials": budget, "batch_size": batch},
        "references": {"models": []},
    }
    if predictor is not None:
        data["predictor"] = predictor.model_dump()
    return parse_config(data, source=f"nb201 search ({name})")


def search(label: str, name: str, knobs: dict[str, Any], seed: int, setting: Setting, budget: int,
           table: Table | None = None, *, batch: int = BATCH, predictor: PredictorConfig | None = None,
           run_dir: str | Path | None = None) -> dict[str, Any]:
    """One search of `budget` evaluations under `setting`'s reward through the real loop
    (`start_search` with the table's accuracy and latency models), its store in `run_dir` (default:
    a temporary folder, in memory where /dev/shm exists, removed after). Returns the cells whose
    accuracy was looked up, in trial order (with a predictor: those it promoted), the asks, the
    repeated proposals, the predicted-only cells and the seconds the search took."""
    table = table if table is not None else _TABLE
    config = search_config(name, knobs, seed, setting, budget, batch, predictor)
    model = with_predictor(TableAccuracy(config, table), config)
    space = NB201Space()
    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            out = Path(run_dir)
        else:
            shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nb201-", dir=shm))) / "run"
        t0 = time.perf_counter()
        outcome = start_search(config, out, show_progress=False, latency=[DeviceLatency(table, setting.device)],
                               accuracy=model, space=space)
        seconds = time.perf_counter() - t0
        with Store.open(out) as store:
            store.read_arch = arch_reader(space)
            trials = store.trials()
    evaluated = [t for t in trials if not t.is_repeat and t.ok]
    top = model.top
    result: dict[str, Any] = {
        "label": label, "seed": seed,
        "cells": [list(t.arch.ops) for t in evaluated if t.rung == top],
        "predicted_only": sum(t.rung is not None and t.rung < top for t in evaluated),
        "asks": len({t.step for t in trials}), "repeats": outcome.repeats, "stopped": outcome.stopped,
        "seconds": seconds,
    }
    if isinstance(model, PredictedAccuracy):
        tau, n = model.predictor.quality()
        result["predictor"] = {"tau": tau, "pairs": n, "fits": model.predictor.fits}
    return result


#: What a strategy's proposals depend on besides its seed: random search ignores every result;
#: NSGA-II reads accuracy and latency only (so one search per device serves all six rewards);
#: every other strategy compares rewards only, so the three soft settings of a device, whose
#: rewards differ by one constant factor (T^0.07), give it the same search (checked with --no-share).
READS = {"random": "nothing", "nsga2": "objectives"}


def problem(name: str, setting: Setting) -> str:
    """The key of the searches that are the same for `name` (see READS)."""
    reads = READS.get(name, "reward")
    if reads == "nothing":
        return "any"
    if reads == "objectives":
        return setting.device
    return f"{setting.device}/soft" if setting.preset == "soft" else setting.label


def p_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value that x tends to be larger than y."""
    if len(set(x) | set(y)) == 1:
        return 1.0
    return float(mannwhitneyu(x, y, alternative="greater").pvalue)
