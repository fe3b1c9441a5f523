"""Executors move `evaluate(arch) -> Trial` calls around; the local one runs them here, in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mnas.config import SearchConfig
from mnas.search.evaluation import evaluate_batch, worker_name
from mnas.trial import Trial


@dataclass
class Hooks:
    """What an executor reports back to the search loop (which owns the store)."""

    on_start: Callable[[Trial], None]  # the trial was handed to a worker (counts an attempt)
    on_phase: Callable[[Trial, str], None]  # e.g. "latency", "training"
    on_result: Callable[[Trial], None]  # finished (done or failed); stored at once


class Executor(Protocol):
    name: str

    def run(self, trials: Sequence[Trial], config: SearchConfig, hooks: Hooks) -> None:
        """Evaluate every trial, calling hooks.on_result for each as soon as it finishes."""

    def close(self) -> None: ...


class LocalExecutor:
    """In this process: a batch's latency in one measuring session, then each candidate's
    accuracy in turn (the default; no cluster needed)."""

    name = "local"

    def run(self, trials: Sequence[Trial], config: SearchConfig, hooks: Hooks) -> None:
        for trial in trials:
            trial.worker = worker_name()
            hooks.on_start(trial)
        evaluate_batch(trials, config, on_phase=hooks.on_phase, on_result=hooks.on_result)

    def close(self) -> None:
        pass
