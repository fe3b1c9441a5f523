"""One latency scale per search: the reference latency the search resolved is pinned in its stored
config, so every worker and a resume scale relative figures with it, even when the reference has
been measured again in between (another cache, --fresh). Real cache file, nothing measured."""

from __future__ import annotations

import pytest

from mnas import zoo
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.measuring import reference_arch
from mnas.latency.measure.result import LatencyResult, ReferenceLatency
from mnas.search.config import LatencyConfig, parse_config
from mnas.search.loop import pin_scale, prepare
from mnas.search.report import reference_line, run_scale

TARGET = {"backend": "onnxruntime", "threads": 1, "resolution": 32, "num_classes": 10, "processes": 1}
NOW = 1.8e9


@pytest.fixture
def cache(tmp_path, monkeypatch) -> LatencyCache:
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "cache"))
    return LatencyCache()


def _put_reference(cache: LatencyCache, ms: float) -> None:
    target = LatencyConfig(**TARGET).to_target()
    name, arch = reference_arch("mobilenet_v2", target)
    cache.put_reference(ReferenceLatency(name, arch.id, ms, 0.01, NOW, 3, True, target, arch.to_json(), 3, 0.01))


def _put_candidate(cache: LatencyCache, model: str, relative: float, reference_ms: float) -> None:
    target = LatencyConfig(**TARGET).to_target()
    name, ref = reference_arch("mobilenet_v2", target)
    arch = zoo.get(model).for_resolution(32)
    ms = relative * reference_ms
    cache.put(arch.id, LatencyResult(ms, ms, ms, 0.01, 60, 3, 0.0, target, [ms] * 3, [NOW] * 3, arch.id,
                                     relative=relative, per_process_relative=[relative] * 3, reference=name,
                                     reference_id=ref.id, reference_ms=reference_ms, reference_measured_at=NOW))


def test_the_scale_is_pinned_once_and_kept_when_the_reference_changes(cache) -> None:
    _put_reference(cache, 2.5)
    _put_candidate(cache, "mnasnet_small", 0.4, 2.5)
    target = LatencyConfig(**TARGET)
    pinned = pin_scale(target, target.to_model())
    assert pinned.reference_ms == 2.5
    assert pin_scale(pinned, pinned.to_model()) is pinned  # pinned once: a resume keeps it
    _put_reference(cache, 3.0)  # measured again since (say with --fresh)
    arch = zoo.get("mnasnet_small")
    assert pinned.to_model().estimate(arch).ms == pytest.approx(0.4 * 2.5)  # the run's scale
    assert target.to_model().estimate(arch).ms == pytest.approx(0.4 * 3.0)  # an unpinned model follows the cache
    # the stored config round-trips with its scale, and the report reads it from there
    config = parse_config({"space": "mnasnet_cifar", "reward": {"target_ms": 1.0}, "latency": pinned.model_dump()})
    assert config.primary.reference_ms == 2.5
    assert run_scale(config, []).ms == 2.5
    line = reference_line(config.primary, run_scale(config, []))
    assert "2.500 ms (the run's, pinned when the search started; measured again since: 3.000 ms" in line


def test_prepare_pins_the_scale_it_resolved_t_with(cache) -> None:
    _put_reference(cache, 2.0)
    # a target of its own name: the search's latency models are built once per process and config
    # (an earlier test's model, pinned to another cache, would be reused for the same target)
    config = parse_config({"space": "mnasnet_cifar", "data": {"dataset": "cifar10_subset"},
                           "reward": {"target": "0.5 x mobilenet_v2", "preset": "hard"},
                           "latency": {**TARGET, "name": "scale-test"}})
    parts = prepare(config)
    assert parts.config.reward.target_ms == pytest.approx(1.0)
    assert parts.config.primary.reference_ms == pytest.approx(2.0)
    on_a_ray_host = LatencyConfig(**TARGET, host="node-2")  # measured there, not here
    assert pin_scale(on_a_ray_host, LatencyConfig(**TARGET).to_model()).reference_ms is None
