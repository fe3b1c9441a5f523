"""Layer lookup table on a tiny space: build against the reference (packs, resume keyed to the
output), predict fast and in relative terms, refuse what it cannot predict, validate with a
plot; every bad output path or option is refused before measuring."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from mnas.errors import UserError
from mnas.latency.backends.base import get_backend
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.protocol import Protocol
from mnas.latency.measure.session import time_session
from mnas.latency.tables.build import build_lut, check_output, refine_lut
from mnas.latency.tables.packs import pack_module
from mnas.latency.tables.plot import scatter
from mnas.latency.tables.predict import LatencyTable, pooled
from mnas.latency.tables.units import arch_units, space_units, unit_input_shape
from mnas.latency.tables.validate import evaluate, validate_lut
from mnas.latency.target import Target
from mnas.space import SearchSpace

TINY = {
    "name": "tiny", "base_filters": [8, 16], "base_layers": [1, 2], "strides": [1, 2],
    "ops": ["ds", "mbconv3"], "kernels": [3], "se_ratios": [0, 0.25], "skips": ["identity"],
    "filter_multipliers": [1.0], "layer_deltas": [0], "stem_filters": 8, "stem_stride": 1,
    "head_filters": 32, "resolution": 32,
}
ORT32 = Target(backend="onnxruntime", resolution=32, num_classes=10)
QUICK = Protocol(warmup_iters=10, warmup_s=0.0, iters=30)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> LatencyCache:
    return LatencyCache(tmp_path_factory.mktemp("lutcache") / "lat.sqlite")


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache):
    space = SearchSpace.from_dict(TINY)
    folder = tmp_path_factory.mktemp("lut")
    units = space_units(space, 32, 10)
    out = folder / "lut.json"
    # an interrupted build of the same output: the first pack's entries were saved (marked)
    first = build_lut(space, ORT32, folder / "first.json", processes=1, calibration=0, pack_size=4, cache=cache,
                      progress=False, units=units[:4], protocol=QUICK)
    key = dict(first.build.get("resume_key") or {})
    assert not key  # a finished table keeps no resume key
    partial = LatencyTable(target=ORT32, entries={k: {**e, "relative": 0.000123} for k, e in first.entries.items()},
                           space=space.to_dict(), reference=first.reference,
                           build={"resume_key": {"out": str(out.resolve()), "fingerprint": ORT32.fingerprint,
                                                 "space": space.to_dict(), "reference_id": first.reference.arch_id}})
    partial.save(folder / "lut.json.partial")
    # a partial of ANOTHER output in the same folder is not used
    other = LatencyTable(target=ORT32, entries={k: {**e, "relative": 9.9} for k, e in first.entries.items()},
                         space=space.to_dict(), reference=first.reference,
                         build={"resume_key": {**partial.build["resume_key"], "out": str(folder / "x.json")}})
    other.save(folder / "x.json.partial")
    t = time.time()
    table = build_lut(space, ORT32, out, processes=1, calibration=6, pack_size=4, cache=cache, progress=False,
                      protocol=QUICK)
    return space, table, out, units, time.time() - t


@pytest.mark.slow
def test_every_unit_is_in_the_table_relative_to_the_reference(built) -> None:
    space, table, out, units, _ = built
    assert set(table.entries) == {u.key for u in units}
    kept = [e for e in table.entries.values() if e["relative"] == 0.000123]
    assert len(kept) == 4  # resumed from the partial of this output, not measured again
    assert not any(e["relative"] == 9.9 for e in table.entries.values())
    fresh = [e for e in table.entries.values() if e["relative"] != 0.000123]
    ref = table.reference
    assert ref is not None and ref.name == "mobilenet_v2" and ref.ms > 0 and ref.processes >= 3
    for e in fresh:
        assert 0 < e["relative"] < 1 and e["median_ms"] == pytest.approx(e["relative"] * ref.ms)
        assert e["count"] >= 10 and len(e["per_process_relative"]) == 1
    assert not out.with_name(out.name + ".partial").exists()
    assert table.build["units"] == len(units) and table.build["seconds"] > 0
    c = table.calibration
    assert c["samples"] == 6 and c["model"] in ("one scale", "scale per family")  # 6 networks carry few terms
    assert c["loo_mape"] >= 0 and c["fit_mape"] >= 0 and LatencyTable.load(out).calibration == c


@pytest.mark.slow
@pytest.mark.parametrize("spread, expected", [(1e9, 2), (0.0, 3)])
def test_packs_get_more_processes_while_they_disagree(tmp_path, cache, spread: float, expected: int) -> None:
    """The consensus rule on a pack's total relative: a spread of 0 never agrees, so the pack
    runs max_processes and its entries are flagged unstable; an endless one always agrees."""
    space = SearchSpace.from_dict(TINY)
    proto = Protocol(warmup_iters=5, warmup_s=0.0, iters=20, max_relative_spread=spread, max_processes=3)
    table = build_lut(space, ORT32, tmp_path / "t.json", processes=2, calibration=0, pack_size=4, cache=cache,
                      progress=False, units=space_units(space, 32, 10)[:4], protocol=proto)
    assert table.build["pack_processes"] == [expected]
    assert table.build["unstable_units"] == (0 if expected == 2 else 4)
    for e in table.entries.values():
        assert len(e["per_process_relative"]) == expected and set(e["used_processes"]) <= set(range(expected))
        assert e["relative"] == pytest.approx(pooled(e["per_process_relative"])[0]) and e["relative"] > 0
        assert e["stable"] == (expected == 2)


def test_an_entry_pools_every_process_but_a_disturbed_one() -> None:
    assert pooled([1.0, 1.1, 0.9, 1.0]) == (pytest.approx(1.0), [0, 1, 2, 3])
    value, used = pooled([1.0, 1.02, 0.98, 1.01, 1.6])  # the fifth process was disturbed
    assert used == [0, 1, 2, 3] and value == pytest.approx(1.0025)
    assert pooled([2.0, 2.0, 2.0]) == (2.0, [0, 1, 2]) and pooled([3.0]) == (3.0, [0])


@pytest.mark.slow
def test_refine_times_every_layer_in_more_processes(built, cache, tmp_path) -> None:
    """A table built with one process per layer, refined to 2: every layer gets one more figure
    from a new pack, entries are pooled, the calibration is refitted, the run is recorded; a
    second refine to the same count has nothing to do."""
    space, table, out, units, _ = built
    copy = tmp_path / "lut.json"
    copy.write_text(out.read_text())
    before = LatencyTable.load(copy)
    refined = refine_lut(copy, 2, pack_size=4, cache=cache, progress=False, protocol=QUICK)
    assert LatencyTable.load(copy).entries == refined.entries
    for key, e in refined.entries.items():
        old = before.entries[key]["per_process_relative"]
        assert len(e["per_process_relative"]) == 2 and e["per_process_relative"][:1] == old
        assert e["relative"] == pytest.approx(pooled(e["per_process_relative"])[0])
        assert e["median_ms"] == pytest.approx(e["relative"] * refined.reference.ms)
    assert refined.calibration["samples"] == before.calibration["samples"] == 6  # the same networks, cached
    run = refined.build["refined"][-1]
    assert run["processes"] == 2 and run["units"] == len(units) and run["packs"] == -(-len(units) // 4)
    again = refine_lut(copy, 2, pack_size=4, cache=cache, progress=False, protocol=QUICK)
    assert again.build["refined"][-1]["units"] == 0 and again.entries == refined.entries


def test_refine_refuses_what_it_cannot_extend(built, tmp_path) -> None:
    space, table, out, *_ = built
    d = json.loads(out.read_text())
    (tmp_path / "other.json").write_text(json.dumps({**d, "fingerprint": "0123456789abcdef"}))
    with pytest.raises(UserError, match="was built on another machine or runtime"):
        refine_lut(tmp_path / "other.json", 2, progress=False)
    (tmp_path / "abs.json").write_text(json.dumps({**d, "reference": None, "format": 1}))
    with pytest.raises(UserError, match="absolute .* table; build a new one"):
        refine_lut(tmp_path / "abs.json", 2, progress=False)
    with pytest.raises(UserError, match="--processes must lie in 1..64"):
        refine_lut(out, 0, progress=False)
    assert LatencyTable.load(out).entries == table.entries


@pytest.mark.slow
def test_an_older_table_pools_a_layer_it_measured_twice(built, tmp_path) -> None:
    """Tables built before an identity skip across a change of shape was keyed as "none" hold
    that layer twice; loading pools the two entries' processes into one."""
    space, table, out, units, _ = built
    assert len({u.key for u in units}) == len(units)
    d = json.loads(out.read_text())
    key, e = next((k, e) for k, e in d["entries"].items() if e["unit"].get("skip") == "none")
    alias = key.replace("_none_", "_identity_")
    d["entries"][alias] = {**e, "unit": {**e["unit"], "skip": "identity"},
                           "per_process_relative": [2 * e["relative"]], "per_process_ms": [2 * e["median_ms"]]}
    (tmp_path / "old.json").write_text(json.dumps(d))
    loaded = LatencyTable.load(tmp_path / "old.json")
    assert alias not in loaded.entries and set(loaded.entries) == set(table.entries)
    merged = loaded.entries[key]
    assert merged["per_process_relative"] == [*e["per_process_relative"], 2 * e["relative"]]
    assert merged["relative"] == pytest.approx(pooled(merged["per_process_relative"])[0])
    assert merged["count"] == 2 * e["count"]


@pytest.mark.slow
def test_table_round_trips_and_predicts_fast(built) -> None:
    space, table, out, *_ = built
    loaded = LatencyTable.load(out)
    assert loaded.target == ORT32 and loaded.search_space() == space and loaded.reference == table.reference
    archs = [space.sample(random.Random(i)) for i in range(50)]
    t = time.perf_counter()
    preds = [loaded.predict(a) for a in archs]
    per_arch_ms = (time.perf_counter() - t) / len(archs) * 1e3
    assert per_arch_ms < 1.0
    assert preds == [table.predict(a) for a in archs] and all(p > 0 for p in preds)
    rel = [loaded.predict_relative(a) for a in archs]
    assert preds == pytest.approx([r * table.reference.ms for r in rel])
    assert loaded.coverage() == (len(table.entries), len(table.entries))


@pytest.mark.slow
def test_missing_layers_are_an_error_or_counted(built) -> None:
    space, table, *_ = built
    wider = replace(space.sample(random.Random(0)), head_filters=48)
    assert table.missing(wider) and len(table.missing(wider)) == 1  # the 48-filter head was never measured
    with pytest.raises(UserError, match=r"1 of the \d+ layers of .* are not in this latency table"):
        table.predict(wider)
    before = table.regressed
    assert table.predict(wider, allow_missing=True) > 0 and table.regressed == before + 1


@pytest.mark.slow
def test_a_table_for_another_target_is_refused(built) -> None:
    _, table, *_ = built
    table.check_target(ORT32)
    with pytest.raises(UserError, match="built for onnxruntime 1t 32px b1, not onnxruntime 1t 64px b1"):
        table.check_target(ORT32.replace(resolution=64))
    with pytest.raises(UserError, match="backend onnxruntime vs litert"):
        table.check_target(ORT32.replace(backend="litert"))


@pytest.mark.slow
def test_validation_measures_like_the_build(built, cache, tmp_path) -> None:
    space, table, out, *_ = built
    v = validate_lut(LatencyTable.load(out), samples=4, processes=1, cache=cache, protocol=QUICK)
    assert scatter(v, tmp_path / "s.png").is_file()
    assert v.n == 4 and len(v.measured_ms) == 4 and all(m > 0 for m in v.measured_ms)
    assert v.reference_ms == table.reference.ms
    assert v.measured_ms == pytest.approx([r * table.reference.ms for r in v.measured_relative])
    assert v.mape >= 0 and v.rmse_ms >= 0 and -1 <= v.kendall_tau <= 1 and 0 <= v.within_10 <= 100
    assert v.coverage == (len(table.entries), len(table.entries)) and v.regressed_archs == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert json.loads(json.dumps(v.to_dict()))["n"] == 4
    again = validate_lut(LatencyTable.load(out), samples=4, processes=1, cache=cache, protocol=QUICK)
    assert again.measured_ms == v.measured_ms  # cached ground truth ...
    fresh = validate_lut(LatencyTable.load(out), samples=4, processes=1, cache=cache, protocol=QUICK, fresh=True)
    assert fresh.measured_ms != v.measured_ms  # ... unless asked for an independent one


def test_metrics_on_known_numbers() -> None:
    m = evaluate([1.0, 2.08, 2.9, 4.36], [1.0, 2.0, 3.0, 4.0])
    assert m["within_5"] == 75.0 and m["within_10"] == 100.0 and m["kendall_tau"] == 1.0
    assert m["mape"] == pytest.approx(100 * (0 + 0.04 + 1 / 30 + 0.09) / 4)


def test_units_of_an_architecture_sum_up() -> None:
    space = SearchSpace.from_dict(TINY)
    arch = space.sample(random.Random(0))
    units = arch_units(arch, 32, 10)
    assert units[0].key.startswith("stem_") and units[-1].key.startswith("head_")
    assert len(units) == 2 + sum(b.layers for b in arch.blocks)
    assert {u.key for u in units} <= {u.key for u in space_units(space, 32, 10)}


def test_the_space_is_tabled_as_it_runs_at_the_resolution() -> None:
    """At 64 px and below the network that runs has the low-resolution skeleton: the table's
    units are those of `arch.for_resolution(64)`, for every architecture of the space."""
    space = SearchSpace.default()
    keys = {u.key for u in space_units(space, 64, 10)}
    for seed in range(5):
        arch = space.sample(random.Random(seed)).for_resolution(64)
        assert {u.key for u in arch_units(arch, 64, 10)} <= keys


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "is a folder; give a file name"),
    (lambda d: (d / "t.json").write_text("{}") and d / "t.json", "already exists; pass --force"),
    (lambda d: (d / "t.json").symlink_to(d / "elsewhere.json") or d / "t.json", "is a symbolic link"),
    (lambda d: (d / "checkpoint.pt").write_text("x") and d / "checkpoint.pt", "is a file the run needs"),
    (lambda d: (d / "f").write_text("x") and d / "f" / "sub" / "t.json", "is a file, not a folder"),
])
def test_bad_outputs_are_refused_before_measuring(tmp_path, make, message) -> None:
    out = make(tmp_path)
    t = time.perf_counter()
    with pytest.raises(UserError, match=message):
        build_lut(SearchSpace.from_dict(TINY), ORT32, out, progress=False, cache=None)
    assert time.perf_counter() - t < 5  # nothing was measured


def test_force_overwrites_only_when_asked(tmp_path) -> None:
    existing = tmp_path / "t.json"
    existing.write_text("{}")
    check_output(existing, force=True)
    with pytest.raises(UserError, match="already exists"):
        check_output(existing, force=False)
    assert existing.read_text() == "{}"


@pytest.mark.parametrize("kwargs, message", [
    ({"pack_size": 0}, "--pack-size must lie in 1..10000"), ({"pack_size": -3}, "--pack-size must lie in 1..10000"),
    ({"processes": 0}, "processes must lie in 1..64"), ({"calibration": -1}, "--calibration must lie in 0..10000"),
    ({"calibration": 10**9}, "--calibration must lie in 0..10000"), ({"processes": 10**6}, "processes must lie in 1..64"),
])
def test_nonsense_options_are_refused(tmp_path, kwargs, message) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"entries": "a finished table"}')
    with pytest.raises(UserError, match=message):
        build_lut(SearchSpace.from_dict(TINY), ORT32, good, progress=False, cache=None, force=True, **kwargs)
    assert good.read_text() == '{"entries": "a finished table"}'


def test_bad_tables_are_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        LatencyTable.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="binary file"):
        LatencyTable.load(tmp_path / "bin.json")
    with pytest.raises(UserError, match="is a directory"):
        LatencyTable.load(tmp_path)
    with pytest.raises(UserError, match="cannot be built for the android backend"):
        build_lut(SearchSpace.from_dict(TINY), Target(backend="android", benchmark_binary=__file__),
                  tmp_path / "x.json", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "litert", "torch"])
def test_a_pack_times_each_unit_on_its_own(tmp_path, backend: str) -> None:
    """Every backend that builds tables: one file for the pack, one part per unit, in order; for
    LiteRT the one-signature conversion split into per-unit signatures computes each unit's
    output exactly as the torch module does."""
    space = SearchSpace.from_dict(TINY)
    units = space_units(space, 32, 10)[:3]
    target = Target(backend=backend, resolution=32, num_classes=10)
    be = get_backend(backend)
    path = be.export_pack(units, tmp_path / f"pack{be.suffix}", target)
    runner = be.load_pack(path, target, len(units))
    assert runner.parts == 3
    (samples,) = time_session([runner], Protocol(warmup_iters=3, warmup_s=0.0, iters=10))
    assert len(samples) == 3 and all(s.median_ms > 0 and s.runs >= 10 for s in samples)
    if backend == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path))
        pack, _ = pack_module(units)  # the same weights as the exported pack's
        for i, (u, m) in enumerate(zip(units, pack.units, strict=True)):
            x = np.random.rand(*unit_input_shape(u)).astype(np.float32)
            (y,) = interp.get_signature_runner(f"u{i}")(x=x).values()
            with torch.no_grad():
                expected = m(torch.from_numpy(x)).numpy()
            assert y.shape == expected.shape and np.allclose(y, expected, atol=1e-4)

