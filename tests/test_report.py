"""Reports from a run's store: three real PNGs, a markdown leaderboard, the Pareto set as JSON,
`mnas best` picking and exporting a model. The run is written by hand into a real store (the
numbers are made up but plausible), so the report logic is checked against known answers."""

from __future__ import annotations

import json
import random
import re

import onnx
import pytest

from mnas.cli.app import main
from mnas.search.config import parse_config
from mnas.search.loop import make_reward
from mnas.search.report import load_run, pick_best, references, reward_by_step, write_report
from mnas.search.store import Store, dump_state
from mnas.search.trial import Trial
from mnas.space import SearchSpace

pytestmark = pytest.mark.slow  # every test here trains, measures or searches

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = {"space": "mnasnet_cifar", "reward": {"target_ms": 5.0, "preset": "hard"},
          "data": {"dataset": "cifar10_subset"},
          "latency": {"backend": "onnxruntime", "threads": 1, "resolution": 32, "num_classes": 10,
                      "processes": 1}}
# (accuracy, latency_ms) of 8 trials in 4 steps; trial 6 fails.
RESULTS = [(0.30, 4.0), (0.35, 6.0), (0.32, 3.0), (0.40, 8.0), (0.38, 5.0), (0.20, 2.0), None, (0.36, 4.5)]


@pytest.fixture
def run_dir(tmp_path):
    config = parse_config(CONFIG)
    reward = make_reward(config)
    space = SearchSpace.cifar()
    rng = random.Random(0)
    with Store.create(tmp_path / "run", config.model_dump(mode="json")) as store:
        for step in range(4):
            archs = [space.sample(rng) for _ in range(2)]
            batch = [Trial(-1, a, strategy="random", tokens=space.encode(a)) for a in archs]
            store.add_trials(batch, dump_state({}), step)
            for trial in batch:
                result = RESULTS[trial.trial_id]
                if result is None:
                    trial.status, trial.error = "failed", "training: diverged"
                else:
                    trial.status = "done"
                    trial.accuracy, trial.latency_ms = result
                    trial.reward = reward(*result)
                trial.seconds = 1.0
                store.save_result(trial)
            store.commit_tell([t.trial_id for t in batch], dump_state({}), step)
    return tmp_path / "run"


def test_plots_and_leaderboard(run_dir):
    files = write_report(run_dir, zoo=False)
    for png in (files.pareto, files.latency_hist, files.reward_curve):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    text = files.markdown.read_text()
    assert "## Leaderboard (by rung reached, then reward)" in text and "7 done, 1 failed" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert rows[0].startswith("| 1 | 4 |")  # hard constraint: 0.38 at T beats 0.40 at 8 ms (0.25)
    assert "training: diverged" in text  # failed trials are listed with their error
    # What relative latencies are relative to: the reference's figure, date and repeatability.
    assert re.search(r"relative to mobilenet_v2 = [0-9.]+ ms \([0-9-]+ [0-9:]+ UTC, spread [0-9.]+% over ", text)


def test_reward_by_step_and_pick_best(run_dir):
    run = load_run(run_dir)
    rows = reward_by_step(run)
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    best_so_far = [r[3] for r in rows]
    assert best_so_far == sorted(best_so_far)
    assert pick_best(run).trial_id == 4
    assert pick_best(run, max_latency_ms=4.5).trial_id == 7  # most accurate within 4.5 ms
    assert pick_best(run, max_latency_ms=100).trial_id == 3


def test_cli_report_json_prints_the_pareto_set(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run_dir), "--json", "--no-zoo"])
    assert exit_info.value.code == 0
    front = json.loads(capsys.readouterr().out)
    # Non-dominated among the 7 done: (0.20, 2), (0.32, 3), (0.36, 4.5), (0.38, 5), (0.40, 8).
    assert [t["trial_id"] for t in front] == [5, 2, 7, 4, 3]
    assert all(t["timm"] and t["arch"]["blocks"] for t in front)
    assert (run_dir / "pareto.png").is_file()


def test_zoo_references_are_measured_once_on_the_run_target(run_dir):
    config = load_run(run_dir).config
    (first,) = references(config.primary, ("mnasnet_small",))
    (again,) = references(config.primary, ("mnasnet_small",))
    assert first.how == "measured" and first.latency_ms > 0 and again.how == "cached"
    assert again.latency_ms == first.latency_ms  # from the latency cache, not re-measured


def test_cli_best_exports_onnx_and_arch(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["best", str(run_dir), "--max-latency", "4.5", "--export", str(tmp_path / "out")])
    assert exit_info.value.code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["trial_id"] == 7
    model = onnx.load(tmp_path / "out" / "model.onnx")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]
    assert (tmp_path / "out" / "arch.timm.txt").read_text().strip() == record["timm"]

    with pytest.raises(SystemExit) as exit_info:
        main(["best", str(run_dir), "--max-latency", "1"])
    assert exit_info.value.code == 2 and "no finished trial runs within 1 ms" in capsys.readouterr().err


def test_one_latency_scale_per_report(tmp_path):
    """#28 item 8: the reference was measured again (2.511 ms) after the search resolved
    T = 1.0 x mobilenet_v2 = 2.830 ms; the report (the real CLI, in a fresh process) shows every
    figure on the run's scale: mobilenet_v2 at exactly T, the other zoo models and the trials at
    their relative figure x 2.830 ms."""
    import os
    import subprocess
    import sys

    from mnas import zoo
    from mnas.latency.measure.cache import LatencyCache
    from mnas.latency.measure.measuring import reference_arch
    from mnas.latency.measure.result import LatencyResult, ReferenceLatency

    config = parse_config({**CONFIG, "reward": {"target": "1.0 x mobilenet_v2", "target_ms": 2.830, "preset": "hard"}})
    target = config.primary.to_target()
    name, ref_arch = reference_arch("mobilenet_v2", target)
    cache_dir = tmp_path / "cache"
    previous = os.environ.get("MNAS_CACHE_DIR")
    os.environ["MNAS_CACHE_DIR"] = str(cache_dir)
    try:
        cache = LatencyCache()  # the file the CLI opens under MNAS_CACHE_DIR
    finally:
        if previous is None:
            del os.environ["MNAS_CACHE_DIR"]
        else:
            os.environ["MNAS_CACHE_DIR"] = previous
    now = 1.8e9
    cache.put_reference(ReferenceLatency(name, ref_arch.id, 2.511, 0.01, now, 3, True, target, ref_arch.to_json(), 3, 0.01))
    relative = {"mnasnet_a1": 1.2, "mnasnet_b1": 1.1, "mnasnet_small": 0.4, "mobilenet_v2": 1.004}
    for model, rel in relative.items():
        arch = zoo.get(model).for_resolution(target.resolution)
        cache.put(arch.id, LatencyResult(rel * 2.511, rel * 2.5, rel * 2.6, 0.01, 60, 3, 0.0, target,
                                         [rel * 2.511] * 3, [now] * 3, arch.id, relative=rel,
                                         per_process_relative=[rel] * 3, reference=name, reference_id=ref_arch.id,
                                         reference_ms=2.511, reference_measured_at=now))
    reward = make_reward(config)
    space = SearchSpace.cifar()
    rng = random.Random(0)
    run = tmp_path / "run"
    with Store.create(run, config.model_dump(mode="json")) as store:
        batch = [Trial(-1, space.sample(rng), strategy="random") for _ in range(2)]
        store.add_trials(batch, dump_state({}), 0)
        for trial, rel in zip(batch, (0.9, 1.05), strict=True):
            # the first measured while the old reference figure held, the second after it changed
            trial.status, trial.accuracy, trial.relative = "done", 0.3 + rel / 10, rel
            trial.latency_ms = rel * (2.830 if rel < 1 else 2.511)
            trial.reward = reward(trial.accuracy, trial.latency_ms)
            store.save_result(trial)
        store.commit_tell([t.trial_id for t in batch], dump_state({}), 0)
    proc = subprocess.run([sys.executable, "-m", "mnas", "report", str(run)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MNAS_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr
    text = (run / "report.md").read_text()
    assert "T = 1.0 x mobilenet_v2 = 2.830 ms" in text
    assert "relative to mobilenet_v2 = 2.830 ms (the run's, from T; measured again since: 2.511 ms" in text
    zoo_rows = dict(re.findall(r"^\| (\w+) \| ([0-9.]+) \| [^|]+ \|$", text, flags=re.M))
    assert zoo_rows["mobilenet_v2"] == "2.830"  # exactly T / 1.0, not 1.004 x anything
    assert zoo_rows["mnasnet_a1"] == f"{1.2 * 2.830:.3f}" and zoo_rows["mnasnet_small"] == f"{0.4 * 2.830:.3f}"
    front = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in text.splitlines()
             if re.match(r"^\| [01] \| 0\.", line)}
    assert front == {"0": f"{0.9 * 2.830:.3f}", "1": f"{1.05 * 2.830:.3f}"}
    assert "2.511" not in text.replace("measured again since: 2.511 ms", "")
