"""Evaluate candidates: their latency on every target, then their accuracy rung by rung through
the accuracy seam (`mnas.search.accuracy`).

The two halves are separate, so an executor can run each where it belongs (the Ray executor
measures on the target's machine and trains anywhere). Latency is one measuring session for the
batch (each candidate timed against the same reference network in the same processes); accuracy
goes up the rungs (`mnas.search.rungs.climb`), each rung a `rung_part` call that a worker process
can run from text alone. A bad candidate never raises here: its part comes back with an error and
the trial fails, so the search goes on.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Future
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from mnas.architecture import Architecture
from mnas.data import DatasetSplits
from mnas.latency.model import LatencyModel
from mnas.search import accuracy
from mnas.search.accuracy import RungResult, short_error
from mnas.search.config import LatencyConfig, SearchConfig
from mnas.search.hooks import Hooks
from mnas.search.rungs import SubmitFn, climb, done_future
from mnas.search.trial import Trial

Part = dict[str, Any]


def worker_name() -> str:
    """host:pid, so a trial's row says where it ran."""
    return f"{socket.gethostname()}:{os.getpid()}"


# -- per-process resources, built once ---------------------------------------------------------
def dataset(config: SearchConfig) -> DatasetSplits:
    """The search's dataset, loaded once per process."""
    return accuracy.dataset(config.data)


@lru_cache(maxsize=8)
def _latency_model(target_json: str) -> LatencyModel:
    return LatencyConfig.model_validate_json(target_json).to_model()


def latency_models(config: SearchConfig) -> list[LatencyModel]:
    """One `LatencyModel` per latency target, built once per process (the first: the reward's)."""
    return [_latency_model(t.model_dump_json()) for t in config.latency]


# -- the two halves ----------------------------------------------------------------------------
def latency_parts(archs: Sequence[Architecture], config: SearchConfig,
                  models: Sequence[LatencyModel] | None = None) -> list[Part]:
    """Latency of every candidate on every target: {latency_ms (first target), latencies (by
    name), relative, error, seconds, worker}. A batch that fails is retried one by one, so only
    the candidates that really fail get an error."""
    start = time.time()
    parts: list[Part] = [{"latency_ms": None, "latencies": {}, "relative": None, "error": None} for _ in archs]
    for t, model in zip(config.latency, models if models is not None else latency_models(config), strict=True):
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


def rung_part(config_json: str, arch_json: str, rung: int, seed: int, state: str | None,
              threads: int | None = None) -> RungResult:
    """One rung of one candidate's accuracy, where a worker runs it (everything arrives as text)."""
    arch, config = from_wire(arch_json, config_json)
    if threads is not None:
        torch.set_num_threads(threads)
    model = accuracy.accuracy_model(config)
    try:
        result = model.evaluate(arch, rung, seed=seed, state=Path(state) if state else None)
    except Exception as exc:  # a model must not raise; if one does, the trial fails, the search goes on
        result = RungResult(None, "accuracy: " + short_error(exc), 0.0, 0)
    result.rung, result.worker = rung, worker_name()
    return result


def combine(trial: Trial, latency: Part, result: RungResult | None) -> Trial:
    """Fill `trial` from its latency and its last accuracy rung: done when both worked, else
    failed with the first error. `result` is None when accuracy was skipped (latency failed)."""
    errors = [e for e in (latency["error"], result.error if result is not None else None) if e]
    trial.latency_ms = latency["latency_ms"]
    trial.latencies = latency.get("latencies")
    trial.relative = latency.get("relative")
    trial.accuracy = result.accuracy if result is not None else None
    trial.rung = result.rung if result is not None and result.ok else None
    trial.budget = result.budget if result is not None and result.ok else None
    trial.seconds = latency["seconds"] + (trial.seconds or 0.0)
    trial.worker = (result.worker if result is not None and result.worker else None) or latency["worker"]
    trial.status = "failed" if errors else "done"
    trial.error = "; ".join(errors) if errors else None
    trial.finished_at = time.time()
    return trial


def evaluate_batch(trials: Sequence[Trial], config: SearchConfig, hooks: Hooks, *,
                   submit: SubmitFn | None = None, workers: int = 1,
                   latency: Sequence[Part] | None = None) -> list[Trial]:
    """Latency of `trials` (one session for the batch, unless `latency` brings it), then their
    accuracy rung by rung through `submit` (default: in this process), `workers` rungs at a time.
    Each trial goes to `hooks.on_result` as soon as it is finished."""
    model = hooks.accuracy or accuracy.accuracy_model(config)
    for trial in trials:
        trial.started_at = trial.started_at or time.time()
        trial.seconds = 0.0
    if latency is None:
        if trials:
            hooks.on_phase(trials[0], f"latency of {len(trials)} candidate(s)")
        latency = latency_parts([t.arch for t in trials], config, hooks.latency)
    lat = {t.trial_id: part for t, part in zip(trials, latency, strict=True)}
    for trial in trials:
        trial.latency_ms = lat[trial.trial_id]["latency_ms"]

    def in_process(trial: Trial, rung: int) -> Future[RungResult]:
        hooks.on_phase(trial, model.phase_text(rung))
        state = hooks.state_path(trial)
        if config.proxy.threads is not None:
            torch.set_num_threads(config.proxy.threads)
        try:
            result = model.evaluate(trial.arch, rung, seed=seed_of(trial, config), state=state)
        except Exception as exc:  # a model must not raise; if one does, the trial fails
            result = RungResult(None, "accuracy: " + short_error(exc), 0.0, 0)
        result.rung, result.worker = rung, worker_name()
        return done_future(result)

    def decide(trial: Trial, rung: int, result: RungResult) -> bool:
        trial.seconds = (trial.seconds or 0.0) + result.seconds
        return hooks.decide(trial, rung, result) and rung < len(model.rungs) - 1

    def finish(trial: Trial, result: RungResult | None) -> None:
        if result is not None and not result.ok:  # a failed rung is not in `decide`'s sum
            trial.seconds = (trial.seconds or 0.0) + result.seconds
        hooks.on_result(combine(trial, lat[trial.trial_id], result))

    starts = []
    for trial in trials:
        if lat[trial.trial_id]["error"] is not None:
            hooks.on_result(combine(trial, lat[trial.trial_id], None))
            continue
        start, stored = hooks.start_rung(trial)
        if stored is not None:  # resumed: its last stored rung was not promoted
            finish(trial, stored)
        else:
            starts.append((trial, start))

    def run_rung(trial: Trial, rung: int) -> Future[RungResult]:  # a rung the model keeps here runs here
        return submit(trial, rung) if submit is not None and not model.in_driver(rung) else in_process(trial, rung)

    climb(starts, submit=run_rung, decide=decide, finish=finish, workers=workers)
    return list(trials)


def seed_of(trial: Trial, config: SearchConfig) -> int:
    return trial.seed if trial.seed is not None else config.seed


def to_wire(arch: Architecture, config: SearchConfig) -> tuple[str, str]:
    """What a remote task receives: JSON text, cheap to ship and independent of class pickling."""
    return arch.to_json(), config.model_dump_json()


def from_wire(arch_json: str, config_json: str) -> tuple[Architecture, SearchConfig]:
    return Architecture.from_json(arch_json), SearchConfig.model_validate(json.loads(config_json))
