"""The LatencyModel seam: measured and table implementations, the network that runs at the
target's resolution, a table refused for another target, a target given as a multiple of a
reference, and a model that travels to another process (Ray)."""

from __future__ import annotations

import pickle
import random

import pytest

from mnas import zoo
from mnas.errors import UserError
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.protocol import Protocol
from mnas.latency.measure.result import ReferenceLatency
from mnas.latency.model import Estimate, LatencyModel, MeasuredLatency, TableLatency, latency_model, parse_multiple, target_ms
from mnas.latency.tables.predict import LatencyTable
from mnas.latency.tables.units import space_units, unit_macs, unit_to_dict
from mnas.latency.target import Target
from mnas.space import SearchSpace

ORT32 = Target(backend="onnxruntime", resolution=32, num_classes=10)
QUICK = Protocol(warmup_iters=10, warmup_s=0.0, iters=30)
REF = ReferenceLatency(name="mobilenet_v2", arch_id=zoo.get("mobilenet_v2").for_resolution(32).id, ms=4.0,
                       spread=0.01, measured_at=1.8e9, processes=3, stable=True, target=ORT32)


def synthetic_table(space: SearchSpace, target: Target = ORT32) -> LatencyTable:
    """A table whose every unit is 1e-9 x its MACs of the reference (no measuring needed)."""
    entries = {u.key: {"relative": unit_macs(u) * 1e-9, "median_ms": unit_macs(u) * 4e-9, "unit": unit_to_dict(u)}
               for u in space_units(space, target.resolution, target.num_classes)}
    return LatencyTable(target=target, entries=entries, space=space.to_dict(), reference=REF,
                        calibration={"scale": 1.1, "per_unit": 0.001, "offset": 0.05})


def test_table_latency_predicts_in_relative_terms() -> None:
    space = SearchSpace.cifar()
    model = TableLatency(synthetic_table(space), ORT32)
    assert isinstance(model, LatencyModel) and model.target == ORT32
    arch = space.sample(random.Random(3))
    est = model.estimate(arch)
    units = model.table.units(arch)
    rel = 1.1 * sum(unit_macs(u) * 1e-9 for u in units) + 0.001 * len(units) + 0.05
    assert est == Estimate(ms=pytest.approx(rel * 4.0), relative=pytest.approx(rel), how="lut")
    assert model.latency_ms(arch) == est.ms and model.estimate_many([arch, arch]) == [est, est]
    assert model.reference_latency() == REF and model.reference_latency("mobilenet_v2") == REF
    with pytest.raises(UserError, match="built against mobilenet_v2, not mnasnet_a1"):
        model.reference_latency("mnasnet_a1")


def test_the_searched_architecture_is_measured_as_it_runs() -> None:
    """An ImageNet-skeleton architecture asked for at 32 px is the low-resolution network."""
    space = SearchSpace.default()
    table = synthetic_table(space)
    arch = space.sample(random.Random(0))
    assert arch.for_resolution(32) != arch
    assert TableLatency(table).latency_ms(arch) == table.predict(arch.for_resolution(32))


def test_a_table_for_another_target_or_space_is_an_error(tmp_path) -> None:
    table = synthetic_table(SearchSpace.cifar())
    with pytest.raises(UserError, match="resolution 32 vs 64"):
        TableLatency(table, ORT32.replace(resolution=64))
    with pytest.raises(UserError, match="backend onnxruntime vs torch"):
        latency_model(ORT32.replace(backend="torch"), lut=table.save(tmp_path / "t.json"))
    assert isinstance(latency_model(ORT32, lut=tmp_path / "t.json"), TableLatency)
    other = SearchSpace.from_dict({**SearchSpace.cifar().to_dict(), "head_filters": 640})
    with pytest.raises(UserError, match="are not in this latency table"):
        TableLatency(table).estimate(other.sample(0))
    lenient = TableLatency(table, allow_missing=True)
    assert lenient.latency_ms(other.sample(0)) > 0 and lenient.regressed == 1


@pytest.mark.parametrize("text, expected", [
    ("1.0 x mobilenet_v2", (1.0, "mobilenet_v2")), ("0.8x mnasnet_a1", (0.8, "mnasnet_a1")),
    ("1.25 * mobilenet_v2", (1.25, "mobilenet_v2")), ("2e-1 × mobilenet_v2", (0.2, "mobilenet_v2")),
])
def test_parse_a_multiple(text: str, expected) -> None:
    assert parse_multiple(text) == expected


@pytest.mark.parametrize("text", ["fast", "x mobilenet_v2", "1.0 x", "0 x mobilenet_v2", "-1 x mobilenet_v2"])
def test_a_bad_multiple_is_one_line(text: str) -> None:
    with pytest.raises(UserError) as exc:
        parse_multiple(text)
    assert "\n" not in str(exc.value)


def test_target_ms_resolves_a_multiple_against_the_models_reference() -> None:
    model = TableLatency(synthetic_table(SearchSpace.cifar()))
    assert target_ms(75, model) == 75.0 and target_ms("12.5", model) == 12.5
    assert target_ms("1.0 x mobilenet_v2", model) == pytest.approx(4.0)
    assert target_ms("0.5x mobilenet_v2", model) == pytest.approx(2.0)
    with pytest.raises(UserError, match="must be > 0"):
        target_ms(0, model)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> LatencyCache:
    return LatencyCache(tmp_path_factory.mktemp("modelcache") / "lat.sqlite")


@pytest.mark.slow
def test_measured_latency_times_a_batch_in_one_session(cache: LatencyCache) -> None:
    model = MeasuredLatency(ORT32, processes=3, cache=cache, protocol=QUICK)
    assert isinstance(model, LatencyModel)
    archs = [SearchSpace.cifar().sample(i) for i in range(3)]
    first = model.estimate_many(archs)
    assert [e.how for e in first] == ["measured"] * 3
    ref = model.reference_latency()
    assert ref.name == "mobilenet_v2" and ref.processes >= 3
    for e in first:
        assert e.relative is not None and e.ms == pytest.approx(e.relative * ref.ms)
    results = model.results(archs)  # cached now; the three shared their processes
    assert [r.cached for r in results] == [True] * 3
    assert results[0].measured_at[:3] == results[1].measured_at[:3] == results[2].measured_at[:3]
    assert model.estimate(archs[1]) == Estimate(first[1].ms, first[1].relative, "cached")
    # a target given as a multiple of the model's own reference: LAT / T is relative / factor
    assert first[0].ms / target_ms("1.0 x mobilenet_v2", model) == pytest.approx(first[0].relative)


@pytest.mark.slow
def test_measured_latency_applies_the_resolution_and_travels(cache: LatencyCache) -> None:
    model = MeasuredLatency(ORT32, processes=1, cache=cache, protocol=QUICK)
    arch = SearchSpace.default().sample(random.Random(11))  # an ImageNet skeleton
    est = model.estimate(arch)
    assert est.how == "measured"
    again = pickle.loads(pickle.dumps(model))  # e.g. to a Ray task on the device's node
    assert again.estimate(arch) == Estimate(est.ms, est.relative, "cached")
    assert cache.get(arch.for_resolution(32).id, ORT32, model.reference_latency().arch_id) is not None


def test_measured_latency_refuses_nonsense() -> None:
    with pytest.raises(UserError, match="processes must lie in 1..64"):
        MeasuredLatency(ORT32, processes=0, cache=None)


def test_a_measured_model_keeps_one_reference_scale(tmp_path) -> None:
    """#28 item 8: the reference measured again after a model resolved T (here 4.0 -> 3.0 ms)
    changes neither T nor the model's estimates (relative x the pinned 4.0 ms); a new model
    (a new run) uses the new figure. Nothing is measured: everything is in the cache."""
    from mnas.latency.measure.result import LatencyResult

    cache = LatencyCache(tmp_path / "lat.sqlite")
    ref_arch = zoo.get("mobilenet_v2").for_resolution(32)
    cache.put_reference(REF)
    arch = zoo.get("mnasnet_a1").for_resolution(32)
    cache.put(arch.id, LatencyResult(1.2 * 4.0, 4.7, 4.9, 0.01, 60, 3, 0.0, ORT32, [4.8] * 3, [1.8e9] * 3, arch.id,
                                     relative=1.2, per_process_relative=[1.2] * 3, reference="mobilenet_v2",
                                     reference_id=ref_arch.id, reference_ms=4.0, reference_measured_at=1.8e9))
    model = MeasuredLatency(ORT32, cache=cache)
    assert target_ms("1.0 x mobilenet_v2", model) == 4.0
    cache.put_reference(ReferenceLatency(**{**REF.__dict__, "ms": 3.0, "measured_at": 1.9e9}))
    assert model.estimate(arch) == Estimate(1.2 * 4.0, 1.2, "cached")
    assert model.reference_latency().ms == model.reference_latency("mobilenet_v2").ms == 4.0
    assert pickle.loads(pickle.dumps(model)).estimate(arch).ms == 1.2 * 4.0  # a worker keeps the scale
    fresh = MeasuredLatency(ORT32, cache=cache)
    assert fresh.estimate(arch).ms == 1.2 * 3.0 and target_ms("1.0 x mobilenet_v2", fresh) == 3.0
