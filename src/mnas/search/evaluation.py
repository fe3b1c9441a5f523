"""Evaluate candidates: their latency on every target and their accuracy (proxy training or a
supernet's inherited weights).

The two halves are separate functions returning plain dicts, so an executor can run each where it
belongs (the Ray executor measures on the target's machine and trains anywhere). They take a whole
batch: latency is one measuring session for the batch (each candidate timed against the same
reference network in the same processes), a supernet scores the batch on data loaded once. A bad
candidate never raises here: its part comes back with an error and the trial fails, so the search
goes on.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import torch

from mnas.config import DataConfig, LatencyConfig, ProxyConfig, SearchConfig
from mnas.data import DatasetSplits, load_dataset
from mnas.latency.model import LatencyModel
from mnas.space import Architecture
from mnas.train import train_proxy
from mnas.train.engine import resolve_device
from mnas.trial import Trial

PhaseCallback = Callable[[str], None]
Part = dict[str, Any]
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
def _dataset(data_json: str) -> DatasetSplits:
    data = DataConfig.model_validate_json(data_json)
    return load_dataset(data.dataset, data_root=data.data_root, val_size=data.val_size,
                        train_subset=data.train_subset, seed=0)


def dataset(config: SearchConfig) -> DatasetSplits:
    """The proxy dataset, loaded once per process."""
    return _dataset(config.data.model_dump_json())


@lru_cache(maxsize=8)
def _latency_model(target_json: str) -> LatencyModel:
    return LatencyConfig.model_validate_json(target_json).to_model()


def latency_models(config: SearchConfig) -> list[LatencyModel]:
    """One `LatencyModel` per latency target, built once per process (the first: the reward's)."""
    return [_latency_model(t.model_dump_json()) for t in config.latency]


@lru_cache(maxsize=2)
def _scorer(proxy_json: str, data_json: str) -> tuple[Any, Any]:
    """The supernet and its scoring data (BN batches, held-out images), loaded once per process."""
    from mnas.supernet import load_supernet, scoring_data  # lazy: only the supernet proxy needs it

    proxy = ProxyConfig.model_validate_json(proxy_json)
    data = _dataset(data_json)
    assert proxy.path is not None
    device = resolve_device(proxy.device)
    net, _ = load_supernet(proxy.path, resolution=data.resolution, num_classes=data.num_classes, device=device)
    sd = scoring_data(data, bn_batches=proxy.bn_batches, images=proxy.score_images, device=device)
    return net, sd


# -- the two halves ----------------------------------------------------------------------------
def latency_parts(archs: Sequence[Architecture], config: SearchConfig) -> list[Part]:
    """Latency of every candidate on every target: {latency_ms (first target), latencies (by
    name), relative, error, seconds, worker}. A batch that fails is retried one by one, so only
    the candidates that really fail get an error."""
    start = time.time()
    parts: list[Part] = [{"latency_ms": None, "latencies": {}, "relative": None, "error": None} for _ in archs]
    for t, model in zip(config.latency, latency_models(config), strict=True):
        try:
            estimates: list[Any] = list(model.estimate_many(archs))
        except Exception:  # find which candidate it was
            estimates = []
            for arch in archs:
                try:
                    estimates.append(model.estimate(arch))
                except Exception as exc:
                    estimates.append(exc)
        for part, est in zip(parts, estimates, strict=True):
            if part["error"] is not None:
                continue
            if isinstance(est, Exception):
                part["error"] = f"latency ({t.label}): " + short_error(est)
            elif not math.isfinite(est.ms) or est.ms <= 0:
                part["error"] = f"latency ({t.label}): came back as {est.ms}"
            else:
                part["latencies"][t.label] = float(est.ms)
                if part["latency_ms"] is None:
                    part["latency_ms"], part["relative"] = float(est.ms), est.relative
    seconds = (time.time() - start) / max(1, len(archs))
    for part in parts:
        part.update(seconds=seconds, worker=worker_name())
        if part["error"] is not None:
            part.update(latency_ms=None, latencies=None, relative=None)
    return parts


def accuracy_parts(archs: Sequence[Architecture], config: SearchConfig,
                   on_each: Callable[[int], None] | None = None) -> list[Part]:
    """Held-out accuracy of every candidate: proxy training, or a supernet's inherited weights.
    Non-ok proxy statuses (diverged, oom, ...) fail the trial."""
    p = config.proxy
    if p.threads is not None:
        torch.set_num_threads(p.threads)
    parts = []
    for i, arch in enumerate(archs):
        if on_each is not None:
            on_each(i)
        start = time.time()
        try:
            accuracy, status = _accuracy(arch, config)
            if status == "ok" and (accuracy is None or not math.isfinite(accuracy)):
                status = f"error: accuracy came back as {accuracy}"
            error = None if status == "ok" else "accuracy: " + status[:ERROR_CHARS]
        except Exception as exc:
            accuracy, error = None, "accuracy: " + short_error(exc)
        parts.append({"accuracy": float(accuracy) if error is None and accuracy is not None else None,
                      "error": error, "seconds": time.time() - start, "worker": worker_name()})
    return parts


def _accuracy(arch: Architecture, config: SearchConfig) -> tuple[float | None, str]:
    if config.proxy.kind == "supernet":
        from mnas.supernet import score_one  # lazy: only the supernet proxy needs it

        net, sd = _scorer(config.proxy.model_dump_json(), config.data.model_dump_json())
        return score_one(net, arch, sd), "ok"
    result = train_proxy(arch, dataset(config), config.proxy, seed=config.seed)
    return result.val_acc, str(result.status)


def combine(trial: Trial, latency: Part, accuracy: Part | None) -> Trial:
    """Fill `trial` from the two halves: done when both worked, else failed with the first error.

    `accuracy` is None when it was skipped because the latency already failed.
    """
    errors = [p["error"] for p in (latency, accuracy) if p is not None and p["error"]]
    trial.latency_ms = latency["latency_ms"]
    trial.latencies = latency.get("latencies")
    trial.relative = latency.get("relative")
    trial.accuracy = accuracy["accuracy"] if accuracy is not None else None
    trial.seconds = latency["seconds"] + (accuracy["seconds"] if accuracy is not None else 0.0)
    trial.worker = (accuracy or latency)["worker"]
    trial.status = "failed" if errors else "done"
    trial.error = "; ".join(errors) if errors else None
    trial.finished_at = time.time()
    return trial


def evaluate_batch(trials: Sequence[Trial], config: SearchConfig, *,
                   on_phase: Callable[[Trial, str], None] | None = None,
                   on_result: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Latency (one session for the batch), then accuracy, of `trials`, in this process."""
    for trial in trials:
        trial.started_at = trial.started_at or time.time()
    if on_phase and trials:
        on_phase(trials[0], f"latency of {len(trials)} candidate(s)")
    lat = latency_parts([t.arch for t in trials], config)
    todo = [i for i, part in enumerate(lat) if part["error"] is None]
    phase = "scoring" if config.proxy.kind == "supernet" else "training"
    acc = accuracy_parts([trials[i].arch for i in todo], config,
                         on_each=(lambda k: on_phase(trials[todo[k]], phase)) if on_phase else None)
    by_index = dict(zip(todo, acc, strict=True))
    out = []
    for i, trial in enumerate(trials):
        combine(trial, lat[i], by_index.get(i))
        if on_result:
            on_result(trial)
        out.append(trial)
    return out


def evaluate(arch: Architecture, config: SearchConfig, *, trial: Trial | None = None,
             on_phase: PhaseCallback | None = None) -> Trial:
    """Latency and accuracy of one architecture, as a finished `Trial` (the reward is the caller's)."""
    trial = trial if trial is not None else Trial(trial_id=-1, arch=arch)
    return evaluate_batch([trial], config, on_phase=(lambda t, phase: on_phase(phase)) if on_phase else None)[0]


def to_wire(arch: Architecture, config: SearchConfig) -> tuple[str, str]:
    """What a remote task receives: JSON text, cheap to ship and independent of class pickling."""
    return arch.to_json(), config.model_dump_json()


def from_wire(arch_json: str, config_json: str) -> tuple[Architecture, SearchConfig]:
    return Architecture.from_json(arch_json), SearchConfig.model_validate(json.loads(config_json))
