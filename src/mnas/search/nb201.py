"""NAS-Bench-201 as a search problem for the strategies: real accuracy and device latency of
every cell, read from a table, so strategies can be compared over many seeds in minutes.

The table (`nb201_hw.csv.gz`: 15,625 cells, 6 edges x 5 ops) holds each cell's CIFAR-10 test
accuracy after 200 epochs (NATS-Bench) and its latency on four devices (HW-NAS-Bench). A setting
is a device, the paper's soft or hard reward and a latency target T. `run_search` runs one
strategy on one setting with the loop's rules for repeats (`mnas.search.loop`), in batches of
`BATCH` asked at once and told back shuffled. benchmarks/search_strategies.py and
benchmarks/ppo_tuning.py use this module (docs/benchmarks/search.md, search_ppo_tuning.md).
"""

from __future__ import annotations

import csv
import gzip
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from mnas.errors import UserError
from mnas.reward import Reward
from mnas.search.loop import REPEAT_PATIENCE
from mnas.strategies import make_strategy

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DEVICES = ("pixel3", "raspi4", "eyeriss", "fpga")
PRESETS = ("soft", "hard")
PERCENTILES = (25, 50, 75)
BATCH = 16
ALPHA = 0.05  # the significance level of `p_greater` comparisons


@dataclass(frozen=True)
class Cell:
    """One NB201 cell: its op on each of the 6 edges; `id` is its NB201 string."""

    ops: tuple[int, ...]

    @property
    def id(self) -> str:
        e = [OPS[o] for o in self.ops]
        return f"|{e[0]}~0|+|{e[1]}~0|{e[2]}~1|+|{e[3]}~0|{e[4]}~1|{e[5]}~2|"


class NB201Space:
    """The categorical-space adapter a strategy needs: 6 decisions of 5 ops each."""

    def decision_sizes(self) -> list[int]:
        return [len(OPS)] * 6

    def decode(self, tokens: Sequence[int]) -> Cell:
        return Cell(tuple(int(t) for t in tokens))

    def encode(self, arch: Cell) -> list[int]:
        return list(arch.ops)


@dataclass
class Result:
    """The trial record a strategy is told (the fields `tell` reads), as `mnas search` stores it."""

    trial_id: int
    arch: Cell
    tokens: list[int]
    logp: float | None
    status: str
    accuracy: float
    latency_ms: float
    reward: float
    repeat_of: int | None = None


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


def make_settings(table: Table) -> list[Setting]:
    out = []
    for device in DEVICES:
        lats = np.array([lat[device] for _, lat in table.values()])
        for preset in PRESETS:
            for pct in PERCENTILES:
                out.append(Setting(device, preset, pct, float(np.percentile(lats, pct))))
    return out


# -- one search ----------------------------------------------------------------------------------
_TABLE: Table = {}


def use_table(table: Table) -> None:
    """A worker process's table (a pool's initializer): `run_search` reads it when given none."""
    global _TABLE
    _TABLE = table
    torch.set_num_threads(1)


def run_search(label: str, name: str, knobs: dict[str, Any], seed: int, setting: Setting,
               budget: int, table: Table | None = None) -> dict[str, Any]:
    """One search of `budget` evaluations under `setting`'s reward; the cells evaluated, in order."""
    table = table if table is not None else _TABLE
    reward = setting.reward()
    strategy = make_strategy(name, NB201Space(), seed, knobs)
    shuffle = random.Random(f"{label}|{seed}")
    evaluated: list[tuple[int, ...]] = []
    first_of: dict[tuple[int, ...], Result] = {}  # cell -> the result of its first evaluation
    asks = repeats = idle = 0
    t0 = time.perf_counter()
    while len(evaluated) < budget and idle < REPEAT_PATIENCE:
        proposals = strategy.ask(min(BATCH, budget - len(evaluated)))
        asks += 1
        batch, new = [], 0
        for p in proposals:
            ops = p.arch.ops
            acc, lats = table[ops]
            lat = lats[setting.device]
            known = first_of.get(ops)
            if known is not None:  # a repeat: the known result, for free
                repeats += 1
                batch.append(Result(p.trial_id, p.arch, list(p.tokens), p.logp, "done", acc, lat, known.reward,
                                    repeat_of=known.trial_id))
            else:
                new += 1
                result = Result(p.trial_id, p.arch, list(p.tokens), p.logp, "done", acc, lat, reward(acc, lat))
                first_of[ops] = result
                batch.append(result)
                evaluated.append(ops)
        idle = 0 if new else idle + 1
        shuffle.shuffle(batch)  # results come back in any order
        strategy.tell(batch)
    return {"label": label, "seed": seed, "cells": evaluated, "asks": asks, "repeats": repeats,
            "seconds": time.perf_counter() - t0}


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
