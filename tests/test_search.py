"""The search loop end to end: real proxy training on CIFAR-10, real ONNX Runtime latency, a real
SQLite store, and a real SIGKILL of a running `python -m mnas search` followed by `--resume`.

To stay fast the tests search a tiny space (8-24 filters, a 64-wide head) with a tiny proxy (200
training images, 3 steps) and measure latency at 32x32 in one process; every part is still real.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnas.errors import UserError
from mnas.latency.measure.cache import LatencyCache
from mnas.search.config import load_config
from mnas.search.evaluation import latency_parts
from mnas.search.local import LocalExecutor
from mnas.search.loop import make_reward, prepare, resume_search, start_search
from mnas.search.store import Store, load_state
from mnas.space import SearchSpace
from mnas.strategies import make_strategy

pytestmark = pytest.mark.slow  # every test here trains, measures or searches

TINY_SPACE = {
    "name": "tiny_cifar",
    "base_filters": [8, 16, 24],
    "base_layers": [1, 1, 1],
    "strides": [1, 2, 2],
    "ops": [{"op": "conv", "expand": 1}, {"op": "ds", "expand": 1}, {"op": "mbconv", "expand": 3}],
    "kernels": [3, 5],
    "se_ratios": [0, 0.25],
    "skips": ["none", "identity"],
    "filter_multipliers": [0.5, 1.0],
    "layer_deltas": [0, 1],
    "stem_filters": 8,
    "stem_stride": 1,
    "head_filters": 64,
    "resolution": 32,
}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_config(folder: Path, **changes: Any) -> Path:
    """A tiny but real search config (and its space file) in `folder`; `changes` are merged in."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    config = {
        "space": "tiny_space.yaml",
        "seed": 0,
        "data": {"dataset": "cifar10_subset", "train_subset": 200, "val_size": 100},
        "proxy": {"epochs": 1, "batch_size": 50, "max_steps": 3, "threads": 1, "workers": 1},
        "latency": {"backend": "onnxruntime", "threads": 1, "processes": 1},
        "reward": {"target_ms": 0.12},
        "strategy": {"name": "random"},
        "budget": {"trials": 4, "batch_size": 2},
        "references": {"models": []},
    }
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(_merge(config, changes)))
    return path


def test_tiny_search_end_to_end(tmp_path, data_root):
    config = load_config(write_config(tmp_path, strategy={"name": "ppo", "knobs": {"batch_size": 2}}))
    outcome = start_search(config, tmp_path / "run", show_progress=False)

    assert outcome.counts == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    with Store.open(tmp_path / "run") as store:
        trials = store.trials()
        assert store.untold() == []
        checkpoint = store.checkpoint()
        stored = store.config
    reward = make_reward(load_config(tmp_path / "search.yaml"))
    for t in trials:
        assert 0.0 <= t.accuracy <= 1.0 and t.latency_ms > 0
        assert t.reward == pytest.approx(reward(t.accuracy, t.latency_ms))
        assert t.strategy == "ppo" and t.seconds > 0 and t.worker
    assert [t.step for t in trials] == [0, 0, 1, 1]
    assert outcome.best.reward == max(t.reward for t in trials)
    # The store pinned what the YAML left implicit, and the strategy state is the post-tell one.
    assert stored["latency"][0]["resolution"] == 32 and stored["latency"][0]["num_classes"] == 10
    assert (checkpoint.step, checkpoint.phase) == (1, "tell")
    strategy = make_strategy("ppo", SearchSpace.load(str(tmp_path / "tiny_space.yaml")), 0, {"batch_size": 2})
    strategy.load_state_dict(load_state(checkpoint.state))
    assert strategy.told == 4 and strategy.pending == 0


def test_repeated_architecture_is_measured_once(tmp_path, data_root):
    config = prepare(load_config(write_config(tmp_path))).config
    arch = SearchSpace.load(config.space).decode([0] * len(SearchSpace.load(config.space).decision_sizes()))
    cache = LatencyCache()
    first = latency_parts([arch], config)[0]
    size = len(cache)
    second = latency_parts([arch], config)[0]
    assert first["error"] is None and second["latency_ms"] == first["latency_ms"]
    assert len(cache) == size  # a cache hit: nothing new was measured


def test_failing_candidates_are_stored_and_told(tmp_path, data_root):
    """A learning rate of 1e6 makes every candidate diverge (NaN): each is stored as failed with
    its error and the strategy is told; the first trials failing alike (here, the whole budget of
    3) stop the search with that error (FAIL_FAST), a UserError: exit code 2."""
    config = load_config(write_config(tmp_path, proxy={"lr": 1.0e6, "epochs": 2, "max_steps": 8},
                                      budget={"trials": 3, "batch_size": 2}))
    with pytest.raises(UserError, match="the first 3 trials all failed with the same error.*diverged"):
        start_search(config, tmp_path / "run", show_progress=False)
    with Store.open(tmp_path / "run") as store:
        assert store.counts()["failed"] == 3
        trials = store.trials()
        assert store.untold() == []
        state = load_state(store.checkpoint().state)
    assert all(t.status == "failed" and t.reward is None and "diverged" in t.error for t in trials)
    assert all(t.latency_ms is not None for t in trials)  # latency was measured before training
    assert state["told"] == 3


def _count(db: Path, status: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE status = ?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_then_resume_continues_exactly(tmp_path, data_root):
    budget = 6
    config_path = write_config(tmp_path, strategy={"name": "evolution", "knobs": {"population": 2, "sample_size": 1}},
                               budget={"trials": budget, "batch_size": 2})
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mnas", "search", "--config", str(config_path), "--out", str(run_dir), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.time() + 180
        db = run_dir / "trials.sqlite"
        while _count(db, "done") < 3 or _count(db, "running") < 1:  # kill it mid-trial
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the search made no progress"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with Store.open(run_dir) as store:
        before = {t.trial_id: t for t in store.trials(("done", "failed"))}
        interrupted = [t.trial_id for t in store.trials("running")]
    assert len(before) >= 3 and len(before) < budget and interrupted

    resumed = subprocess.run([sys.executable, "-m", "mnas", "search", "--resume", str(run_dir), "-q"],
                             capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    with Store.open(run_dir) as store:
        trials = store.trials()
        attempts = {t.trial_id: store.attempts(t.trial_id) for t in trials}
        assert store.untold() == []
    assert len(trials) == budget and all(t.status == "done" for t in trials)
    for trial_id, old in before.items():  # finished trials were kept, not re-run
        new = trials[trial_id]
        assert (new.accuracy, new.latency_ms, new.finished_at) == (old.accuracy, old.latency_ms, old.finished_at)
        assert attempts[trial_id] == 1
    for trial_id in interrupted:  # left running by the dead process: run again
        assert attempts[trial_id] == 2
    # The strategy continued from its checkpoint: replaying it on the stored results asks exactly
    # the architectures the killed-and-resumed run asked.
    space = SearchSpace.load(str(tmp_path / "tiny_space.yaml"))
    strategy = make_strategy("evolution", space, 0, {"population": 2, "sample_size": 1})
    for step in range(budget // 2):
        batch = [t for t in trials if t.step == step]
        assert [p.arch.id for p in strategy.ask(len(batch))] == [t.arch.id for t in batch]
        strategy.tell(batch)


def test_resume_of_a_finished_run_runs_nothing(tmp_path, data_root):
    config = load_config(write_config(tmp_path, budget={"trials": 2, "batch_size": 2}))
    start_search(config, tmp_path / "run", show_progress=False)
    with Store.open(tmp_path / "run") as store:
        before = [(t.trial_id, t.finished_at) for t in store.trials()]
    outcome = resume_search(tmp_path / "run", show_progress=False)
    assert outcome.counts["done"] == 2
    with Store.open(tmp_path / "run") as store:
        assert [(t.trial_id, t.finished_at) for t in store.trials()] == before


class SlowLocalExecutor(LocalExecutor):
    """The real local executor, with each batch lasting at least `seconds`: a fast machine can
    finish a tiny batch inside any small time budget, and the test must not depend on its speed."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def run(self, trials, config, hooks) -> None:
        start = time.monotonic()
        super().run(trials, config, hooks)
        time.sleep(max(0.0, self.seconds - (time.monotonic() - start)))


def test_time_budget_stops_asking(tmp_path, data_root):
    """max_seconds ends the search between batches; the finished batch is kept and told."""
    config = load_config(write_config(tmp_path, budget={"trials": 6, "batch_size": 2, "max_seconds": 0.5}))
    outcome = start_search(config, tmp_path / "run", executor=SlowLocalExecutor(0.6), show_progress=False)
    assert outcome.stopped == "time" and outcome.counts["done"] == 2
    with Store.open(tmp_path / "run") as store:
        assert len(store) == 2 and store.untold() == []
        assert store.get_meta("elapsed_s") >= 0.5
