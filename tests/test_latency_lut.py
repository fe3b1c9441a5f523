"""Layer lookup table on a tiny space: build (packs, resume), predict fast, validate with a plot."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

import pytest

from mnas.errors import UserError
from mnas.latency import LatencyCache, Target
from mnas.latency.lut import LatencyTable, build_lut, evaluate, fit_calibration, validate_lut
from mnas.latency.units import arch_units, space_units
from mnas.space import SearchSpace

TINY = {
    "name": "tiny", "base_filters": [8, 16], "base_layers": [1, 2], "strides": [1, 2],
    "ops": ["ds", "mbconv3"], "kernels": [3], "se_ratios": [0, 0.25], "skips": ["identity"],
    "filter_multipliers": [1.0], "layer_deltas": [0], "stem_filters": 8, "stem_stride": 2,
    "head_filters": 32, "resolution": 32,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    space = SearchSpace.from_dict(TINY)
    target = Target(backend="onnxruntime", resolution=32, num_classes=10)
    folder = tmp_path_factory.mktemp("lut")
    cache = LatencyCache(folder / "lat.sqlite")
    units = space_units(space, 32, 10)
    out = folder / "lut.json"
    # an interrupted build: the first pack's entries were saved (marked by a sentinel value)
    first = build_lut(space, target, folder / "first.json", processes=1, calibration=0,
                      pack_size=4, cache=cache, progress=False, units=units[:4])
    partial = LatencyTable(target=target, entries={k: {**e, "median_ms": 0.123}
                                                   for k, e in first.entries.items()},
                           space=space.to_dict())
    partial.save(folder / "lut.json.partial")
    t = time.time()
    table = build_lut(space, target, out, processes=1, calibration=3, pack_size=4, cache=cache,
                      progress=False)
    return space, target, table, out, cache, units, time.time() - t


def test_every_unit_is_in_the_table_and_resume_kept_saved_entries(built) -> None:
    space, target, table, out, _, units, _ = built
    assert set(table.entries) == {u.key for u in units}
    kept = [e for e in table.entries.values() if e["median_ms"] == 0.123]
    assert len(kept) == 4  # resumed: the saved pack was not measured again
    fresh = [e for e in table.entries.values() if e["median_ms"] != 0.123]
    assert all(e["median_ms"] > 0 and e["count"] >= 30 and len(e["per_process_ms"]) == 1 for e in fresh)
    assert not out.with_name(out.name + ".partial").exists()
    assert table.build["units"] == len(units) and table.build["seconds"] > 0
    assert table.calibration["samples"] == 3


@pytest.mark.parametrize("max_spread, expected", [(1.0, 2), (0.0, 3)])
def test_packs_get_more_processes_while_they_disagree(tmp_path, max_spread: float, expected: int) -> None:
    """The protocol's consensus rule on a pack's total: max_spread=0 never agrees, so the pack
    runs max_processes and its entries are flagged unstable."""
    from mnas.latency.protocol import Protocol

    space = SearchSpace.from_dict(TINY)
    target = Target(backend="onnxruntime", resolution=32, num_classes=10)
    table = build_lut(space, target, tmp_path / "t.json", processes=2, calibration=0, pack_size=4,
                      cache=None, progress=False, units=space_units(space, 32, 10)[:4],
                      protocol=Protocol(warmup_s=0.0, max_spread=max_spread, max_processes=3))
    assert table.build["pack_processes"] == [expected]
    assert table.build["unstable_units"] == (0 if expected == 2 else 4)
    for e in table.entries.values():
        assert len(e["per_process_ms"]) == expected and len(e["used_processes"]) == 2
        assert e["stable"] == (expected == 2) and e["median_ms"] > 0


def test_table_round_trips_and_predicts_fast(built) -> None:
    space, target, table, out, *_ = built
    loaded = LatencyTable.load(out)
    assert loaded.target == target and loaded.search_space() == space
    archs = [space.sample(random.Random(i)) for i in range(50)]
    t = time.perf_counter()
    preds = [loaded.predict(a) for a in archs]
    per_arch_ms = (time.perf_counter() - t) / len(archs) * 1e3
    assert per_arch_ms < 1.0
    assert preds == [table.predict(a) for a in archs]
    assert all(p > 0 for p in preds)
    assert not loaded.missing(archs[0])


def test_missing_keys_are_regressed(built) -> None:
    space, target, table, *_ = built
    wider = replace(space.sample(random.Random(0)), head_filters=48)
    assert table.missing(wider)  # the head with 48 filters was never measured
    assert table.predict(wider) > 0


def test_validation_reports_metrics_and_plot(built, tmp_path) -> None:
    space, target, table, out, cache, *_ = built
    v = validate_lut(LatencyTable.load(out), samples=4, processes=1, cache=cache, plot=tmp_path / "s.png")
    assert v.n == 4 and len(v.measured_ms) == 4 and all(m > 0 for m in v.measured_ms)
    assert v.mape >= 0 and v.rmse_ms >= 0 and -1 <= v.kendall_tau <= 1 and 0 <= v.within_10 <= 100
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert json.loads(json.dumps(v.to_dict()))["n"] == 4


def test_metrics_and_calibration_on_known_numbers() -> None:
    m = evaluate([1.0, 2.08, 2.9, 4.36], [1.0, 2.0, 3.0, 4.0])
    assert m["within_5"] == 75.0 and m["within_10"] == 100.0 and m["kendall_tau"] == 1.0
    assert m["mape"] == pytest.approx(100 * (0 + 0.04 + 1 / 30 + 0.09) / 4)
    raw = [(s, n) for s, n in [(1.0, 10), (2.0, 12), (3.0, 15), (4.0, 11), (5.0, 18), (2.5, 14),
                               (3.5, 13), (1.5, 16)]]
    measured = [1.1 * s + 0.01 * n + 0.2 for s, n in raw]
    c = fit_calibration(raw, measured)
    assert c["scale"] == pytest.approx(1.1) and c["per_unit"] == pytest.approx(0.01)
    assert c["offset"] == pytest.approx(0.2)


def test_units_of_an_architecture_sum_up() -> None:
    space = SearchSpace.from_dict(TINY)
    arch = space.sample(random.Random(0))
    units = arch_units(arch, 32, 10)
    assert units[0].key.startswith("stem_") and units[-1].key.startswith("head_")
    assert len(units) == 2 + sum(b.layers for b in arch.blocks)
    assert {u.key for u in units} <= {u.key for u in space_units(space, 32, 10)}


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        LatencyTable.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not supported yet"):
        build_lut(SearchSpace.from_dict(TINY), Target(backend="android", benchmark_binary=__file__),
                  tmp_path / "x.json", progress=False)
