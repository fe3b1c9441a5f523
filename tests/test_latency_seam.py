"""The backend seam, proved by a backend added in one module (this one) plus one registry line:
a fake runtime whose clock drifts in the middle of every measuring process (and differs between
processes, as on a shared host). The relative figure must stay exact while the absolute drifts.

The fake "model file" is JSON holding the network's cost; one inference reports cost x drift(call)
as its device time, where drift ramps from 1 to 1.6 while the process times, and every
process has its own slowdown on top (1.0 to 1.3). The measuring workers import this module by
name (the job names it), so `tests/` is put on their PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mnas.errors import UserError
from mnas.latency.backends.base import Backend, Runner, dist_version
from mnas.latency.backends.registry import backend_names, register_backend, unregister_backend
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.measuring import measure_many
from mnas.latency.measure.protocol import Protocol
from mnas.latency.model import MeasuredLatency
from mnas.latency.target import Target
from mnas.space import SearchSpace

RAMP = (0, 300)  # calls of a process over which the clock slows from 1x to 1.6x


def cost_ms(module) -> float:
    """A deterministic 'latency' for a network: 1 ms per million parameters, plus 0.1 ms."""
    return 0.1 + sum(p.numel() for p in module.parameters()) / 1e6


class DriftBackend(Backend):
    name = "drift"
    suffix = ".drift.json"

    def version(self, target: Target) -> str:
        return "drift 1.0 (" + dist_version("pytest") + ")"

    def export(self, module, path: Path, target: Target) -> Path:
        path.write_text(json.dumps({"cost_ms": cost_ms(module)}))
        return path

    def load(self, path: Path, target: Target) -> Runner:
        cost = json.loads(path.read_text())["cost_ms"]
        slow = 1.0 + (os.getpid() % 7) / 20  # this process's neighbour: 1.0 to 1.3
        return Runner(lambda: None, device_timer=lambda: cost * slow * _drift())


_CALLS = [0]


def _drift() -> float:
    """The clock of this process: 1x, then a linear ramp to 1.6x, then 1.6x. Every call also
    does a little real work, so it is not mistaken for a preempted one."""
    _CALLS[0] += 1
    end = time.perf_counter() + 2e-5
    while time.perf_counter() < end:
        pass
    lo, hi = RAMP
    return 1.0 + 0.6 * min(max((_CALLS[0] - lo) / (hi - lo), 0.0), 1.0)


BACKEND = DriftBackend()


@pytest.fixture
def drift(monkeypatch: pytest.MonkeyPatch):
    """The registry line, and this folder on the workers' import path."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    register_backend("drift", __name__)
    yield Target(backend="drift", resolution=32, num_classes=10)
    unregister_backend("drift")


def test_the_registry_names_the_backends(drift: Target) -> None:
    assert "drift" in backend_names() and drift.runtime_version.startswith("drift 1.0")
    with pytest.raises(UserError, match="latency tables cannot be built for the drift backend"):
        from mnas.latency.tables.build import build_lut

        build_lut(SearchSpace.cifar(), drift, Path("/nonexistent/x.json"), progress=False)


@pytest.mark.slow
def test_relative_stays_exact_while_the_clock_drifts(drift: Target, tmp_path: Path) -> None:
    from mnas import zoo
    from mnas.model import build_model

    archs = [SearchSpace.cifar().sample(i) for i in range(3)]
    ref = zoo.get("mobilenet_v2").for_resolution(32)
    expected = {a.id: cost_ms(build_model(a, num_classes=10)) / cost_ms(build_model(ref, num_classes=10))
                for a in archs}
    proto = Protocol(warmup_iters=30, warmup_s=0.0, iters=60, items_per_process=2)
    res = measure_many(archs, drift, processes=3, cache=LatencyCache(tmp_path / "c.sqlite"), protocol=proto)
    for a, r in zip(archs, res, strict=True):
        assert r.relative == pytest.approx(expected[a.id], rel=1e-9)  # exact: the drift cancels
        assert all(x == pytest.approx(expected[a.id], rel=1e-9) for x in r.per_process_relative)
        assert r.stable and r.processes == 3
        # the absolute timing drifted: its spread over the calls of a process is the ramp's
        own = r.raw_ms / (expected[a.id] * cost_ms(build_model(ref, num_classes=10)))
        assert own > 1.05 and r.p90_ms / r.p10_ms == pytest.approx(1.0)


@pytest.mark.slow
def test_the_seam_serves_the_latency_model(drift: Target, tmp_path: Path) -> None:
    """`MeasuredLatency` works on any registered backend: one session for a batch of candidates."""
    model = MeasuredLatency(drift, processes=3, cache=LatencyCache(tmp_path / "c.sqlite"),
                            protocol=Protocol(warmup_iters=10, warmup_s=0.0, iters=30))
    first = model.estimate_many([SearchSpace.cifar().sample(i) for i in range(2)])
    assert [e.how for e in first] == ["measured", "measured"] and all(e.relative for e in first)
    again = model.estimate(SearchSpace.cifar().sample(1))
    assert again.how == "cached" and again.relative == first[1].relative
