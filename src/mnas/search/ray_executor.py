"""Trials as Ray tasks: training anywhere (on a GPU when the cluster has them), latency on the
target's machine, one measurement at a time there, with nothing else running beside it.

Serialising measurements uses a custom resource per device, ``latency_device:<host>`` (capacity
1), which only the node the target sits on offers; a latency task asks for that unit *and for
every CPU of that node*, so it waits until training on that machine has drained and blocks new
training there while it measures. Training tasks ask for `cpus_per_trial` (and `gpus_per_trial`
when GPUs exist) only, so they run anywhere. A task whose worker process dies is retried by Ray
`max_retries` times (default once); after that the trial is stored as failed and the search goes on.

A cluster you start yourself must offer the resource on the target's node, e.g.
``ray start --head --resources '{"latency_device:HOST": 1}'`` (see `device_resource`).

With several latency targets, each measured target is timed on its own `host`: a trial gets one
latency task per host (the targets sitting on one host share it), and table targets are looked up
in the driver. The trial's latency is their union; the first target's figure drives the reward.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.search.accuracy import RungResult, accuracy_model
from mnas.search.config import SearchConfig
from mnas.search.evaluation import (
    evaluate_batch,
    from_wire,
    latency_parts,
    rung_part,
    seed_of,
    short_error,
    to_wire,
)
from mnas.search.hooks import Hooks
from mnas.search.trial import Trial

RESOURCE_PREFIX = "latency_device:"

#: A part function runs in a Ray worker: (trial_id, arch, config) -> the dict of latency_part /
#: train_part. Swappable so a test can crash a real worker process on purpose.
PartFn = Callable[[int, Architecture, SearchConfig], dict[str, Any]]
#: A rung function runs one accuracy rung in a Ray worker: (trial_id, arch, config, rung, seed,
#: state path) -> RungResult. Swappable like PartFn.
RungFn = Callable[[int, Architecture, SearchConfig, int, int, "str | None"], RungResult]


def device_resource(host: str | None = None) -> dict[str, float]:
    """The custom resource a node must offer to measure latency for `host` (default: this one)."""
    return {f"{RESOURCE_PREFIX}{host or socket.gethostname()}": 1.0}


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a host:port address has nothing listening."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and friends: let Ray resolve them
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"executor.ray_address: nothing answers at {address} ({exc.strerror or exc}); "
                        "start the cluster with `ray start --head` or fix the address") from None


def default_latency(trial_id: int, arch: Architecture, config: SearchConfig) -> dict[str, Any]:
    return latency_parts([arch], config)[0]


def default_train(trial_id: int, arch: Architecture, config: SearchConfig, rung: int, seed: int,
                  state: str | None) -> RungResult:
    return rung_part(config.model_dump_json(), arch.to_json(), rung, seed, state, config.proxy.threads)


def _run_part(fn: PartFn, trial_id: int, arch_json: str, config_json: str) -> dict[str, Any]:
    arch, config = from_wire(arch_json, config_json)
    return fn(trial_id, arch, config)


def _run_rung(fn: RungFn, trial_id: int, arch_json: str, config_json: str, rung: int, seed: int,
              state: str | None) -> RungResult:
    arch, config = from_wire(arch_json, config_json)
    return fn(trial_id, arch, config, rung, seed, state)


class RayExecutor:
    """Runs each trial as a latency task and a training task on a Ray cluster."""

    name = "ray"

    def __init__(self, config: SearchConfig, *, latency_fn: PartFn = default_latency,
                 train_fn: RungFn = default_train) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("executor ray needs Ray: pip install 'mnas[ray]'") from None
        self._ray = ray
        self.latency_fn = latency_fn
        self.train_fn = train_fn
        self.host = config.primary.host or socket.gethostname()
        # A table predicts anywhere; a measurement must run on its target's machine, alone there.
        self.hosts = measuring_hosts(config)
        self._owns_ray = False
        if not ray.is_initialized():
            address = config.executor.ray_address
            if address:
                _check_reachable(address)
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    # everything runs here: this machine stands for every target's host
                    ray.init(resources={k: v for h in self.hosts or [self.host] for k, v in device_resource(h).items()},
                             include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
                where = f"Ray at {address}" if address else "a local Ray instance"
                raise UserError(f"executor: cannot start or reach {where}: "
                                f"{' '.join(str(exc).split())[:300]}") from None
            self._owns_ray = True
        self.device_cpus = {host: self._device_cpus(host) for host in self.hosts}
        self.gpus = config.executor.gpus_per_trial if ray.cluster_resources().get("GPU", 0) > 0 else 0.0

    def _device_cpus(self, host: str) -> float:
        """CPUs of the node that offers `host`'s device resource (all of them go to a measurement)."""
        resource = next(iter(device_resource(host)))
        for node in self._ray.nodes():
            resources = node.get("Resources", {})
            if node.get("Alive") and resources.get(resource):
                return float(resources.get("CPU", 1.0))
        targets = ", ".join(self.hosts[host])
        raise UserError(
            f"no Ray node offers resource {resource!r} for latency measurement (target {targets}); start the "
            f"target's node with --resources '{{\"{resource}\": 1}}' or use a latency LUT")

    def run(self, trials: Sequence[Trial], config: SearchConfig, hooks: Hooks) -> None:
        """Every trial's latency tasks (on their hosts), then its accuracy rung by rung as tasks."""
        ray = self._ray
        remote = ray.remote(_run_part)
        retries = config.executor.max_retries
        inflight: dict[Any, tuple[Trial, str]] = {}
        parts: dict[int, dict[str, dict[str, Any]]] = {}
        tables = [t for t in config.latency if not t.measured]
        table_models = ([m for t, m in zip(config.latency, hooks.latency, strict=True) if not t.measured]
                        if hooks.latency is not None else None)  # built once by the loop
        by_host = {host: _with_targets(config, [t for t in config.latency if t.label in labels]).model_dump_json()
                   for host, labels in self.hosts.items()}  # what each host's latency task receives
        for trial in trials:
            trial.worker = f"ray:{self.host}"
            hooks.on_start(trial)
            arch_json, _ = to_wire(trial.arch, config)
            parts[trial.trial_id] = {}
            if tables:  # table lookups: no need for any device
                parts[trial.trial_id]["latency@tables"] = latency_parts([trial.arch], _with_targets(config, tables),
                                                                         table_models)[0]
            for host, host_config_json in by_host.items():
                ref = remote.options(num_cpus=self.device_cpus[host], resources=device_resource(host),
                                     max_retries=retries, name=f"latency-{trial.trial_id}@{host}"
                                     ).remote(self.latency_fn, trial.trial_id, arch_json, host_config_json)
                inflight[ref] = (trial, f"latency@{host}")
            hooks.on_phase(trial, "latency submitted to ray")
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                trial, kind = inflight.pop(ref)
                parts[trial.trial_id][kind] = self._get(ref, kind, retries)
        latency = [merge_latency([parts[t.trial_id][k] for k in sorted(parts[t.trial_id])],
                                 [t.label for t in config.latency]) for t in trials]
        model = hooks.accuracy or accuracy_model(config)
        rung_remote = ray.remote(_run_rung)
        config_json = config.model_dump_json()

        def submit(trial: Trial, rung: int) -> Future[RungResult]:
            hooks.on_phase(trial, f"{model.phase} to rung {rung} as a ray task")
            state = hooks.state_path(trial)
            ref = rung_remote.options(num_cpus=config.executor.cpus_per_trial, num_gpus=self.gpus,
                                      max_retries=retries, name=f"train-{trial.trial_id}-rung{rung}"
                                      ).remote(self.train_fn, trial.trial_id, trial.arch.to_json(), config_json,
                                               rung, seed_of(trial, config), str(state) if state else None)
            out: Future[RungResult] = Future()
            ref.future().add_done_callback(lambda _: out.set_result(self._rung_result(ref, retries, rung)))
            return out

        workers = max(1, int(ray.cluster_resources().get("CPU", 1) // config.executor.cpus_per_trial))
        evaluate_batch(trials, config, hooks, submit=submit, workers=workers, latency=latency)

    def _rung_result(self, ref: Any, retries: int, rung: int) -> RungResult:
        value = self._get(ref, "train", retries)
        if isinstance(value, RungResult):
            return value
        return RungResult(None, value["error"], 0.0, 0, worker=value["worker"], rung=rung)

    def _get(self, ref: Any, kind: str, retries: int) -> Any:
        """The part's result, or a failed part saying why the task could not finish."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the part function itself raised
            error = short_error(exc.cause if getattr(exc, "cause", None) else exc)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError) as exc:
            error = f"worker died (retried {retries}x): {type(exc).__name__}"
        except ray.exceptions.OutOfMemoryError:
            error = "out of memory: Ray killed the worker"
        except ray.exceptions.RayError as exc:
            error = short_error(exc)
        value = {"error": f"{'training' if kind == 'train' else 'latency'}: {error}",
                 "seconds": 0.0, "worker": f"ray:{self.host}", "finished_at": time.time()}
        if kind.startswith("latency"):
            value.update(latency_ms=None, latencies=None, relative=None)
        else:
            value["accuracy"] = None
        return value

    def close(self) -> None:
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()


def measuring_hosts(config: SearchConfig) -> dict[str, list[str]]:
    """The labels of the measured targets, by the host they are timed on (the driver's by default)."""
    hosts: dict[str, list[str]] = {}
    for t in config.latency:
        if t.measured:
            hosts.setdefault(t.host or socket.gethostname(), []).append(t.label)
    return hosts


def _with_targets(config: SearchConfig, targets: list[Any]) -> SearchConfig:
    """`config` with only `targets` to time (each latency task measures its own host's)."""
    return config.model_copy(update={"latency": targets})


def merge_latency(parts: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """One trial's latency parts (one per host, and the tables') as one: every target's figure in
    the config's order (`labels`), the reward's from the first target; failed when any part failed."""
    errors = [p["error"] for p in parts if p["error"]]
    found = {k: v for p in parts for k, v in (p.get("latencies") or {}).items()}
    primary = next((p for p in parts if labels[0] in (p.get("latencies") or {})), None)
    ok = not errors and primary is not None
    return {
        "error": "; ".join(errors) if errors else None if ok else f"latency: no figure for {labels[0]}",
        "seconds": sum(float(p["seconds"]) for p in parts),
        "worker": parts[0]["worker"] if parts else "",
        "latencies": {k: found[k] for k in labels if k in found} if ok else None,
        "latency_ms": found[labels[0]] if ok else None,
        "relative": primary["relative"] if ok and primary is not None else None,
    }
