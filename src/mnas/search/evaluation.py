"""Evaluate one candidate: its latency on the target and its accuracy after the proxy training.

The two halves are separate functions returning plain dicts so an executor can run them where
each belongs (the Ray executor runs latency on the target's machine and training on any GPU);
`evaluate` runs both in this process. A bad candidate never raises here: its trial comes back
`failed` with the error text, so the search goes on.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from mnas.config import DataConfig, SearchConfig
from mnas.latency.target import Target
from mnas.space import Architecture
from mnas.trial import Trial

PhaseCallback = Callable[[str], None]
ERROR_CHARS = 500


def worker_name() -> str:
    """host:pid, so a trial's row says where it ran."""
    return f"{socket.gethostname()}:{os.getpid()}"


def short_error(exc: BaseException) -> str:
    """One line of at most ERROR_CHARS characters, for the store and the progress display."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


# -- per-process resources, built once ---------------------------------------------------------
@lru_cache(maxsize=4)
def _dataset(data_json: str) -> Any:
    from mnas.data import load_dataset

    data = DataConfig.model_validate_json(data_json)
    return load_dataset(data.dataset, data_root=data.data_root, val_size=data.val_size,
                        train_subset=data.train_subset, seed=0)


@lru_cache(maxsize=4)
def _lut(path: str) -> Any:
    from mnas.latency.lut import LatencyTable

    return LatencyTable.load(path)


def dataset(config: SearchConfig) -> Any:
    """The proxy dataset, loaded once per process."""
    return _dataset(config.data.model_dump_json())


def target(config: SearchConfig) -> Target:
    """The latency `Target` the config names (resolution/classes resolved by `prepare`)."""
    if config.latency.lut:
        return _lut(config.latency.lut).target
    return config.latency.to_target()


def latency_of(arch: Architecture, config: SearchConfig) -> float:
    """Latency in ms on the config's target: a LUT prediction, or a measurement (cached by
    architecture id and target fingerprint, so a repeated architecture is measured once)."""
    tgt = target(config)
    arch = arch.for_resolution(tgt.resolution)
    if config.latency.lut:
        return float(_lut(config.latency.lut).predict(arch))
    from mnas.latency import measure

    return float(measure(arch, tgt, processes=config.latency.processes).median_ms)


# -- the two halves ----------------------------------------------------------------------------
def latency_part(arch: Architecture, config: SearchConfig) -> dict[str, Any]:
    """Latency in ms from the LUT, or measured for real through the latency cache."""
    start = time.time()
    try:
        value = latency_of(arch, config)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"latency came back as {value}")
        return {"latency_ms": value, "error": None, "seconds": time.time() - start,
                "worker": worker_name()}
    except Exception as exc:  # a bad candidate (build, export, runtime): the trial fails
        return {"latency_ms": None, "error": "latency: " + short_error(exc),
                "seconds": time.time() - start, "worker": worker_name()}


def train_part(arch: Architecture, config: SearchConfig) -> dict[str, Any]:
    """Proxy accuracy from `train_proxy`; its non-ok statuses (diverged, oom, ...) fail the trial."""
    start = time.time()
    try:
        from mnas.train import train_proxy

        p = config.proxy
        if p.threads is not None:
            import torch

            torch.set_num_threads(p.threads)
        result = train_proxy(arch, dataset(config), p, seed=config.seed)
        accuracy = result.val_acc
        status = str(result.status)
        if status == "ok" and (accuracy is None or not math.isfinite(accuracy)):
            status = f"error: accuracy came back as {accuracy}"
        error = None if status == "ok" else "training: " + status[:ERROR_CHARS]
        return {"accuracy": float(accuracy) if error is None else None, "error": error,
                "seconds": time.time() - start, "worker": worker_name()}
    except Exception as exc:
        return {"accuracy": None, "error": "training: " + short_error(exc),
                "seconds": time.time() - start, "worker": worker_name()}


def combine(trial: Trial, latency: dict[str, Any], train: dict[str, Any] | None) -> Trial:
    """Fill `trial` from the two halves: done when both worked, else failed with the first error.

    `train` is None when training was skipped because the latency already failed.
    """
    errors = [p["error"] for p in (latency, train) if p is not None and p["error"]]
    trial.latency_ms = latency["latency_ms"]
    trial.accuracy = train["accuracy"] if train is not None else None
    trial.seconds = latency["seconds"] + (train["seconds"] if train is not None else 0.0)
    trial.worker = (train or latency)["worker"]
    trial.status = "failed" if errors else "done"
    trial.error = "; ".join(errors) if errors else None
    trial.finished_at = time.time()
    return trial


def evaluate(arch: Architecture, config: SearchConfig, *, trial: Trial | None = None,
             on_phase: PhaseCallback | None = None) -> Trial:
    """Latency then proxy accuracy of `arch`, in this process, as a finished `Trial`.

    The reward is left to the caller (it is a view of the raw numbers the trial keeps).
    """
    trial = trial if trial is not None else Trial(trial_id=-1, arch=arch)
    trial.started_at = trial.started_at or time.time()
    if on_phase:
        on_phase("latency (lut)" if config.latency.lut else "latency")
    latency = latency_part(arch, config)
    train = None
    if latency["error"] is None:
        if on_phase:
            on_phase("training")
        train = train_part(arch, config)
    return combine(trial, latency, train)


def to_wire(arch: Architecture, config: SearchConfig) -> tuple[str, str]:
    """What a remote task receives: JSON text, cheap to ship and independent of class pickling."""
    return arch.to_json(), config.model_dump_json()


def from_wire(arch_json: str, config_json: str) -> tuple[Architecture, SearchConfig]:
    return Architecture.from_json(arch_json), SearchConfig.model_validate(json.loads(config_json))
