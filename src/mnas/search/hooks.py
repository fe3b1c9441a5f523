"""What an executor reports back to the search loop, which owns the store and the decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mnas.latency.model import LatencyModel
from mnas.search.accuracy import AccuracyModel, RungResult
from mnas.search.trial import Trial


def _always(trial: Trial, rung: int, result: RungResult) -> bool:
    return True


def _from_scratch(trial: Trial) -> tuple[int, RungResult | None]:
    return 0, None


def _no_state(trial: Trial) -> Path | None:
    return None


@dataclass
class Hooks:
    """Callbacks from an executor into the search loop.

    `decide` gets every finished rung (the loop stores it) and says whether the candidate goes on
    to the next rung; `start_rung` says where a trial starts (0, or the rung after its last stored
    one on a resume; with a stored result instead when its last rung was final); `state_path` is
    where a candidate's state between rungs lives. `accuracy` / `latency`: the models the loop
    built once for the search (None: the config's, built here); `in_process`: they are stand-ins
    for the config's (a test's or a benchmark's), which only this process has, so the executor
    evaluates here instead of in workers that would rebuild the config's."""

    on_start: Callable[[Trial], None]  # the trial was handed to a worker (counts an attempt)
    on_phase: Callable[[Trial, str], None]  # e.g. "latency", "training to rung 1"
    on_result: Callable[[Trial], None]  # finished (done or failed); stored at once
    decide: Callable[[Trial, int, RungResult], bool] = field(default=_always)
    start_rung: Callable[[Trial], tuple[int, RungResult | None]] = field(default=_from_scratch)
    state_path: Callable[[Trial], Path | None] = field(default=_no_state)
    accuracy: AccuracyModel | None = None
    latency: list[LatencyModel] | None = None
    in_process: bool = False
