"""The measurement protocol: warm-up and timed-iteration minimums, preemption detection and
re-measurement, separate interleaved processes, median of per-process medians; target validation."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

from mnas.errors import UserError
from mnas.latency import LatencyCache, Target, measure, measure_many
from mnas.latency.backends.base import Runner
from mnas.latency.protocol import Protocol, measure_cpus, time_runner


class Counting:
    def __init__(self, work) -> None:
        self.calls, self.first, self.work = 0, None, work

    def __call__(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.calls += 1
        self.work()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_warmup_and_timed_minimums() -> None:
    run = Counting(lambda: _spin(1e-4))
    t0 = time.perf_counter()
    sample = time_runner(Runner(run))
    assert time.perf_counter() - t0 >= 0.5  # >= 0.5 s of warm-up happened
    assert sample.runs >= 60 and 30 <= len(sample.times_ms) <= sample.runs
    assert run.calls >= 30 + 60
    assert sample.median_ms == pytest.approx(statistics.median(sample.times_ms))
    assert sample.p10_ms <= sample.median_ms <= sample.p90_ms


def test_off_cpu_iterations_are_flagged_and_remeasured() -> None:
    """An iteration that waits instead of computing looks exactly like a preempted one:
    CPU time / wall time far below 0.9. Every iteration is flagged, so the loop is re-run
    (retries + 1 attempts) and the flagged fraction reported."""
    proto = Protocol(warmup_iters=30, warmup_s=0.0, iters=60, retries=2)
    sleeping = time_runner(Runner(lambda: time.sleep(2e-4)), proto)
    assert sleeping.preempted_fraction == 1.0 and sleeping.attempts == 3
    computing = time_runner(Runner(lambda: _spin(2e-4)), proto)
    assert computing.preempted_fraction < 1.0


def test_measure_cpus_respects_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNAS_LATENCY_CPUS", "1")
    assert measure_cpus(1) == [1]
    monkeypatch.setenv("MNAS_LATENCY_CPUS", "x")
    with pytest.raises(UserError):
        measure_cpus(1)
    monkeypatch.delenv("MNAS_LATENCY_CPUS")
    import os

    assert set(measure_cpus(1)) <= os.sched_getaffinity(0) and len(measure_cpus(1)) == 1


def _tiny(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def test_processes_interleaved_and_median_of_medians(tmp_path) -> None:
    small, large = _tiny(8), _tiny(64)
    target = Target(backend="onnxruntime", resolution=32, num_classes=10)
    res = measure_many([small, large], target, processes=3, cache=None)
    for r in res:
        assert 3 <= r.processes <= Protocol().max_processes
        assert len(r.per_process_ms) == len(r.measured_at) == r.processes and r.used_processes == 3
        # more processes only while the three fastest disagree; the result is their median
        fastest = sorted(r.per_process_ms)[:3]
        assert r.median_ms == pytest.approx(statistics.median(fastest))
        assert r.stable == ((fastest[-1] - fastest[0]) / fastest[1] <= Protocol().max_spread)
        assert r.stable or r.processes == Protocol().max_processes
        assert r.runs >= 60 * r.processes and 0.0 <= r.preempted_fraction <= 1.0
        assert r.p10_ms <= r.median_ms <= r.p90_ms
    assert res[1].median_ms > res[0].median_ms  # 8x wider convs are slower
    # interleaved: the candidates' processes alternate in time
    times = sorted([(t, 0) for t in res[0].measured_at] + [(t, 1) for t in res[1].measured_at])
    order = [k for _, k in times]
    assert order != [0, 0, 0, 1, 1, 1] and order != [1, 1, 1, 0, 0, 0]


def test_consensus_keeps_the_fastest_agreeing_processes() -> None:
    """Slow periods from outside only add time: the fastest processes are the clean ones."""
    from mnas.latency.result import consensus

    assert consensus([10.0, 10.1, 10.2], 3, 0.05) == ([0, 1, 2], True)
    assert consensus([10.0, 13.0, 10.1], 3, 0.05) == ([0, 2, 1], False)  # one slow process
    assert consensus([10.0, 13.0, 10.1, 10.2], 3, 0.05) == ([0, 2, 3], True)  # a fourth settles it
    assert consensus([5.0], 3, 0.05) == ([0], True)


@pytest.mark.parametrize("max_spread, expected", [(1.0, 3), (0.0, 5)])
def test_disagreeing_processes_get_more_rounds(max_spread: float, expected: int) -> None:
    """max_spread=0 never agrees: every candidate runs up to max_processes, flagged unstable;
    max_spread=1 always agrees: exactly the three processes."""
    target = Target(backend="onnxruntime", resolution=32, num_classes=10)
    proto = Protocol(warmup_s=0.0, max_spread=max_spread, max_processes=5)
    res = measure_many([_tiny(8), _tiny(16)], target, processes=3, cache=None, protocol=proto)
    assert [r.processes for r in res] == [expected, expected]
    assert [r.stable for r in res] == [expected == 3] * 2
    assert all(r.median_ms == pytest.approx(statistics.median(sorted(r.per_process_ms)[:3])) for r in res)


def test_target_fingerprint_and_errors() -> None:
    a, b = Target(backend="onnxruntime"), Target(backend="onnxruntime")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert Target(backend="onnxruntime", threads=2).fingerprint != a.fingerprint
    assert Target(backend="litert").fingerprint != a.fingerprint
    assert Target.from_dict(a.to_dict()) == a
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        Target(backend="tensorrt")
    with pytest.raises(UserError):
        Target(threads=0)
    with pytest.raises(UserError):
        Target(backend="onnxruntime", device="cuda")


def test_bad_processes_is_a_user_error() -> None:
    with pytest.raises(UserError):
        measure(_tiny(4), Target(backend="onnxruntime", resolution=32), processes=0, cache=None)


def test_cli_unknown_backend_is_one_line(tmp_path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mnas", "latency", "measure", "mnasnet_a1",
                           "--backend", "tensorrt"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: unknown backend 'tensorrt'; choose one of litert, onnxruntime, torch, android"]
    assert "Traceback" not in proc.stderr


def test_cache_hit_and_fresh(tmp_path) -> None:
    from mnas.space import SearchSpace

    arch = SearchSpace.cifar().sample(0)
    cache = LatencyCache(tmp_path / "lat.sqlite")
    target = Target(backend="onnxruntime", resolution=32, num_classes=10)
    first = measure(arch, target, processes=1, cache=cache)
    assert not first.cached and first.arch_id == arch.id and len(cache) == 1
    again = measure(arch, target, processes=1, cache=cache)
    assert again.cached and again.median_ms == first.median_ms
    assert again.per_process_ms == first.per_process_ms and again.measured_at == first.measured_at
    assert list(cache.models_dir.glob(f"{arch.id}_*.onnx"))  # the exported file is kept for re-use
    fresh = measure(arch, target, processes=1, cache=cache, fresh=True)
    assert not fresh.cached and fresh.measured_at != first.measured_at and len(cache) == 2
    assert [r.measured_at for r in cache.history(arch.id, target)] == [first.measured_at, fresh.measured_at]
    other = Target(backend="onnxruntime", resolution=32, num_classes=10, threads=2)
    assert cache.get(arch.id, other) is None
