"""The measurement protocol: the shared in-process timing routine (warm-up and timed minimums,
preemption flags and re-timing, reference interleaving), separate interleaved processes, the two
consensus rules, the reference latency and the cache; target validation."""

from __future__ import annotations

import os
import statistics
import time

import pytest
from torch import nn

from mnas import zoo
from mnas.errors import UserError
from mnas.latency.backends.base import Runner
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.measuring import measure, measure_cpus, measure_many, reference_latency
from mnas.latency.measure.protocol import Protocol
from mnas.latency.measure.result import ReferenceLatency, closest, consensus, summarise
from mnas.latency.measure.sample import ProcessSample
from mnas.latency.measure.session import time_session
from mnas.latency.target import Target
from mnas.space import SearchSpace


class Counting:
    def __init__(self, work) -> None:
        self.calls, self.work = 0, work

    def __call__(self) -> None:
        self.calls += 1
        self.work()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_warmup_and_timed_minimums() -> None:
    run = Counting(lambda: _spin(1e-4))
    t0 = time.perf_counter()
    (sample,), = time_session([Runner(run)])
    assert time.perf_counter() - t0 >= 0.5  # >= 0.5 s of warm-up happened
    assert sample.runs >= 60 and 10 <= len(sample.times_ms) <= sample.runs
    assert run.calls >= 30 + 60
    assert sample.median_ms == pytest.approx(statistics.median(sample.times_ms))
    assert sample.p10_ms <= sample.median_ms <= sample.p90_ms
    assert sample.relative is None  # no reference, no ratio


def test_reference_alternates_one_inference_each() -> None:
    """ref, a, ref, b, ref, a, ...: every item call sits between two reference calls, and the
    ratio is item / mean of those two."""
    log: list[str] = []
    a = Runner(lambda: (log.append("a"), _spin(2e-4)))
    b = Runner(lambda: (log.append("b"), _spin(1e-4)))
    ref = Runner(lambda: (log.append("r"), _spin(4e-4)))
    proto = Protocol(warmup_iters=3, warmup_s=0.0, iters=20)
    (sa,), (sb,) = time_session([a, b], proto, reference=ref)
    seq = "".join(log)
    assert all(seq[i - 1] == "r" == seq[i + 1] for i, ch in enumerate(seq) if ch != "r")
    assert seq.startswith("rarbr") and seq.endswith("arbr")
    assert sa.runs == sb.runs >= 20
    assert sa.relative == pytest.approx(0.5, rel=0.25) and sb.relative == pytest.approx(0.25, rel=0.3)
    assert sa.reference_ms == pytest.approx(0.4, rel=0.5) and len(sa.ratios) == len(sa.times_ms)


def test_off_cpu_iterations_are_flagged_and_remeasured() -> None:
    """An iteration that waits instead of computing looks exactly like a preempted one:
    CPU time / wall time far below 0.9. Every iteration is flagged, so the loop is re-run
    (retries + 1 attempts) and the flagged fraction reported."""
    proto = Protocol(warmup_iters=30, warmup_s=0.0, iters=60, retries=2)
    (sleeping,), = time_session([Runner(lambda: time.sleep(2e-4))], proto)
    assert sleeping.preempted_fraction == 1.0 and sleeping.attempts == 3 and sleeping.runs == 180
    (computing,), = time_session([Runner(lambda: _spin(2e-4))], proto)
    assert computing.preempted_fraction < 1.0


def test_a_preempted_reference_flags_its_neighbours() -> None:
    """A pair is clean only when the item call and both reference calls around it are."""
    proto = Protocol(warmup_iters=2, warmup_s=0.0, iters=30, retries=0)
    (s,), = time_session([Runner(lambda: _spin(2e-4))], proto, reference=Runner(lambda: time.sleep(2e-4)))
    assert s.preempted_fraction == 1.0 and s.relative is not None


def test_measure_cpus_respects_env_and_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNAS_LATENCY_CPUS", "1")
    assert measure_cpus(1) == [1]
    monkeypatch.setenv("MNAS_LATENCY_CPUS", "x")
    with pytest.raises(UserError):
        measure_cpus(1)
    monkeypatch.delenv("MNAS_LATENCY_CPUS")
    assert set(measure_cpus(1)) <= os.sched_getaffinity(0) and len(measure_cpus(1)) == 1
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(UserError, match=f"--threads {cores + 1} is more than the {cores} cores here"):
        measure_cpus(cores + 1)
    assert len(measure_cpus(cores + 1, force=True)) == cores


def _tiny(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


ORT32 = Target(backend="onnxruntime", resolution=32, num_classes=10)


@pytest.mark.slow
def test_processes_interleaved_and_median_of_medians(tmp_path) -> None:
    """Absolute protocol (no reference): the median of the fastest per-process medians."""
    small, large = _tiny(8), _tiny(64)
    res = measure_many([small, large], ORT32, processes=3, cache=None, reference=None)
    for r in res:
        assert 3 <= r.processes <= Protocol().max_processes and r.relative is None
        assert len(r.per_process_ms) == len(r.measured_at) == r.processes and r.used_processes == 3
        fastest = sorted(r.per_process_ms)[:3]
        assert r.median_ms == pytest.approx(statistics.median(fastest)) == pytest.approx(r.raw_ms)
        assert r.stable == ((fastest[-1] - fastest[0]) / fastest[1] <= Protocol().max_spread)
        assert r.stable or r.processes == Protocol().max_processes
        assert r.runs >= 60 * r.processes and 0.0 <= r.preempted_fraction <= 1.0
        assert r.p10_ms <= r.median_ms <= r.p90_ms
    assert res[1].median_ms > res[0].median_ms  # 8x wider convs are slower
    # both candidates share each process (one session per round), so they finish together
    assert res[0].measured_at[:3] == res[1].measured_at[:3]


@pytest.mark.slow
def test_relative_to_the_reference(tmp_path) -> None:
    """Every process times the candidates and the reference in alternation; the result is the
    median of the closest per-process ratios, times the reference's (cached) latency."""
    cache = LatencyCache(tmp_path / "c.sqlite")
    res = measure_many([_tiny(8), _tiny(64)], ORT32, processes=3, cache=cache)
    ref = reference_latency(ORT32, cache=cache)
    assert ref.name == "mobilenet_v2" and ref.processes >= 3 and ref.ms > 0
    assert ref.arch_id == zoo.get("mobilenet_v2").for_resolution(32).id
    for r in res:
        assert r.reference == "mobilenet_v2" and r.reference_ms == ref.ms and r.reference_id == ref.arch_id
        chosen = sorted(r.per_process_relative)
        assert len(chosen) == r.processes >= 3
        assert r.median_ms == pytest.approx(r.relative * ref.ms)
        windows = [chosen[i:i + 3] for i in range(len(chosen) - 2)]
        tight = min(windows, key=lambda w: w[-1] - w[0])
        assert r.relative == pytest.approx(statistics.median(tight))
        assert r.raw_ms > 0 and r.p10_ms <= r.median_ms <= r.p90_ms
    assert res[1].relative > res[0].relative


def test_consensus_keeps_the_fastest_agreeing_processes() -> None:
    """Slow periods from outside only add time: the fastest processes are the clean ones."""
    assert consensus([10.0, 10.1, 10.2], 3, 0.05) == ([0, 1, 2], True)
    assert consensus([10.0, 13.0, 10.1], 3, 0.05) == ([0, 2, 1], False)  # one slow process
    assert consensus([10.0, 13.0, 10.1, 10.2], 3, 0.05) == ([0, 2, 3], True)  # a fourth settles it
    assert consensus([5.0], 3, 0.05) == ([0], True)


def test_closest_keeps_the_tightest_window_of_ratios() -> None:
    """What is left in a ratio moves both ways: the processes lying closest together count."""
    assert closest([0.90, 0.905, 0.91], 3, 0.02) == ([0, 1, 2], True)
    assert closest([0.80, 0.91, 0.92, 0.915], 3, 0.02) == ([1, 3, 2], True)  # a low outlier is dropped
    assert closest([0.91, 0.99, 0.92, 0.915], 3, 0.02) == ([0, 3, 2], True)  # so is a high one
    assert closest([0.8, 0.9, 1.0], 3, 0.02)[1] is False
    assert closest([0.5], 3, 0.02) == ([0], True)


@pytest.mark.parametrize("relative", [False, True])
def test_spread_of_the_processes_used_beside_all(relative: bool) -> None:
    """A process the protocol measured again and left out widens `spread` (every process) but not
    `used_spread` (the processes the figure is made of); the reference made of such a result says
    both, the used one first."""
    target = Target(backend="onnxruntime", threads=1, resolution=32)
    values = [10.0, 13.0, 10.1, 10.2]  # the second process was slowed from outside
    samples = [ProcessSample(median_ms=v, p10_ms=v, p90_ms=v, mean_ms=v, std_ms=0.0, runs=20,
                             relative=v / 20 if relative else None) for v in values]
    ref = ReferenceLatency("mobilenet_v2", "id", 20.0, 0.01, 0.0, 3, True, target) if relative else None
    result = summarise(samples, target, use=3, reference=ref)
    assert result.used_processes == 3 and result.processes == 4
    assert result.spread == pytest.approx(3.0 / 10.15)
    assert result.used_spread == pytest.approx(0.2 / 10.1)
    assert result.spread_text() == "spread 2.0% over the 3 processes used of 4, 29.6% over all"
    assert result.to_dict()["used_spread"] == pytest.approx(result.used_spread)
    if not relative:
        made = ReferenceLatency.from_result("mobilenet_v2", result, zoo.get("mobilenet_v2"))
        assert (made.used_processes, made.used_spread, made.figure_spread) == (3, result.used_spread, result.used_spread)
        assert made.spread_text() == result.spread_text()
        assert ReferenceLatency.from_dict(made.to_dict()) == made
        old = ReferenceLatency("mobilenet_v2", "id", 20.0, 0.3, 0.0, 5, True, target)  # a record from before
        assert old.spread_text() == "spread 30.0% over 5 processes" and old.figure_spread == 0.3


@pytest.mark.slow
@pytest.mark.parametrize("spread, expected", [(1e9, 3), (0.0, 5)])
@pytest.mark.parametrize("reference", [None, "mobilenet_v2"])
def test_disagreeing_processes_get_more_rounds(tmp_path, spread: float, expected: int, reference) -> None:
    """A spread of 0 never agrees: every candidate runs up to max_processes, flagged unstable;
    an endless one always agrees: exactly the three processes. Absolute and relative alike."""
    proto = Protocol(warmup_s=0.0, warmup_iters=5, iters=20, max_spread=spread, max_relative_spread=spread,
                     max_processes=5)
    res = measure_many([_tiny(8), _tiny(16)], ORT32, processes=3, cache=LatencyCache(tmp_path / "c.sqlite"),
                       protocol=proto, reference=reference)
    assert [r.processes for r in res] == [expected, expected]
    assert [r.stable for r in res] == [expected == 3] * 2
    assert all(r.used_processes == 3 for r in res)


def test_target_fingerprint_and_errors() -> None:
    a, b = Target(backend="onnxruntime"), Target(backend="onnxruntime")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert Target(backend="onnxruntime", threads=2).fingerprint != a.fingerprint
    assert Target(backend="litert").fingerprint != a.fingerprint
    assert Target.from_dict(a.to_dict()) == a
    assert a.differences(a.replace(resolution=32)) == ["resolution 224 vs 32"]
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        Target(backend="tensorrt")
    with pytest.raises(UserError):
        Target(threads=0)
    with pytest.raises(UserError, match="resolution must lie in 8..1024"):
        Target(resolution=0)
    with pytest.raises(UserError, match="batch must be <= 1024"):
        Target(batch=10**6)
    with pytest.raises(UserError, match="only measured with --backend torch"):
        Target(backend="onnxruntime", device="cuda")


@pytest.mark.parametrize("bad", [{"processes": 0}, {"processes": -1}])
def test_bad_processes_is_a_user_error(bad) -> None:
    with pytest.raises(UserError, match="processes must lie in 1..64"):
        measure(_tiny(4), ORT32, cache=None, **bad)


def test_protocol_rejects_nonsense() -> None:
    with pytest.raises(UserError, match="iters must be >= 1"):
        Protocol(iters=0)


@pytest.mark.slow
def test_cache_hit_fresh_and_reference(tmp_path) -> None:
    arch = SearchSpace.cifar().sample(0)
    cache = LatencyCache(tmp_path / "lat.sqlite")
    first = measure(arch, ORT32, processes=1, cache=cache)
    ref = reference_latency(ORT32, cache=cache)
    assert not first.cached and first.arch_id == arch.id and len(cache) == 1
    assert first.relative is not None and first.reference_id == ref.arch_id
    again = measure(arch, ORT32, processes=1, cache=cache)
    assert again.cached and again.median_ms == first.median_ms and again.relative == first.relative
    assert again.per_process_ms == first.per_process_ms and again.measured_at == first.measured_at
    assert list(cache.models_dir.glob(f"{arch.id}_*.onnx"))  # the exported file is kept for re-use
    fresh = measure(arch, ORT32, processes=1, cache=cache, fresh=True)
    assert not fresh.cached and fresh.measured_at != first.measured_at and len(cache) == 2
    assert [r.measured_at for r in cache.history(arch.id, ORT32)] == [first.measured_at, fresh.measured_at]
    # the reference latency is measured once per target and reused ...
    assert reference_latency(ORT32, cache=cache) == ref
    # ... and an absolute measurement is cached apart from the relative ones
    absolute = measure(arch, ORT32, processes=1, cache=cache, reference=None)
    assert not absolute.cached and absolute.relative is None
    assert cache.get(arch.id, ORT32).relative is None and cache.get(arch.id, ORT32, ref.arch_id).relative
    # a new measurement of the reference rescales cached relative results (the ratio stays)
    remeasured = reference_latency(ORT32, cache=cache, fresh=True)
    scaled = measure(arch, ORT32, processes=1, cache=cache)
    assert scaled.cached and scaled.relative == fresh.relative
    assert scaled.median_ms == pytest.approx(fresh.relative * remeasured.ms) and scaled.reference_ms == remeasured.ms
    other = Target(backend="onnxruntime", resolution=32, num_classes=10, threads=2)
    assert cache.get(arch.id, other) is None


def test_reference_needs_the_full_protocol() -> None:
    with pytest.raises(UserError, match="processes >= 3"):
        reference_latency(ORT32, processes=2, cache=None)
