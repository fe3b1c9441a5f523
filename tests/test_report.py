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
