"""Executors move candidates' evaluations around; the local one runs them on this machine.

A batch's latency is one measuring session here; then its candidates go up the accuracy model's
rungs. A model that trains (`AccuracyModel.parallel`) does so in a pool of worker processes, one
torch thread each, `proxy.workers` at once (default: the cores / `proxy.threads`), so a 2-core
machine trains two candidates at a time; a supernet scores in this process, where it is loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol

import torch

from mnas.search import accuracy
from mnas.search.accuracy import RungResult
from mnas.search.config import SearchConfig
from mnas.search.evaluation import evaluate_batch, rung_part, seed_of, worker_name
from mnas.search.hooks import Hooks
from mnas.search.trial import Trial
from mnas.train.settings import ProxyConfig

__all__ = ["Executor", "Hooks", "LocalExecutor", "proxy_workers"]


class Executor(Protocol):
    name: str

    def run(self, trials: Sequence[Trial], config: SearchConfig, hooks: Hooks) -> None:
        """Evaluate every trial, calling hooks.on_result for each as soon as it finishes."""

    def close(self) -> None: ...


def proxy_workers(proxy: ProxyConfig) -> tuple[int, int | None]:
    """(worker processes, torch threads in each): `proxy.workers` (default: one per
    `proxy.threads` cores, one thread each; one on a GPU)."""
    if proxy.device.startswith("cuda") or (proxy.device == "auto" and torch.cuda.is_available()):
        return proxy.workers or 1, proxy.threads
    cores = os.cpu_count() or 1
    threads = proxy.threads or (1 if (proxy.workers or cores) > 1 else None)
    workers = proxy.workers or max(1, cores // (threads or cores))
    return workers, threads


def _init_worker(threads: int | None) -> None:
    _die_with_parent()
    if threads is not None:
        torch.set_num_threads(threads)


def _die_with_parent() -> None:
    """A worker must not outlive a search killed with SIGKILL (Linux: PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


class LocalExecutor:
    """On this machine: latency in this process, accuracy in worker processes where the model
    trains (the default; no cluster needed)."""

    name = "local"

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._pool_shape: tuple[int, int | None] | None = None

    def _workers(self, workers: int, threads: int | None) -> ProcessPoolExecutor:
        if self._pool is None or self._pool_shape != (workers, threads):
            self.close()
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(threads,))
            self._pool_shape = (workers, threads)
        return self._pool

    def run(self, trials: Sequence[Trial], config: SearchConfig, hooks: Hooks) -> None:
        for trial in trials:
            trial.worker = worker_name()
            hooks.on_start(trial)
        model = hooks.accuracy or accuracy.accuracy_model(config)
        workers, threads = proxy_workers(config.proxy)
        if not model.parallel or workers <= 1 or hooks.in_process:
            evaluate_batch(trials, config, hooks)
            return
        pool = self._workers(workers, threads)
        config_json = config.model_dump_json()

        def submit(trial: Trial, rung: int) -> Future[RungResult]:
            hooks.on_phase(trial, model.phase_text(rung))
            state = hooks.state_path(trial)
            return pool.submit(rung_part, config_json, trial.arch.to_json(), rung, seed_of(trial, config),
                               str(state) if state else None, threads)

        evaluate_batch(trials, config, hooks, submit=submit, workers=workers)

    def close(self) -> None:
        """Stop the workers at once (a rung in flight is lost; its trial is run again on resume)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
