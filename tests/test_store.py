"""The trial store: real SQLite files, atomic strategy checkpoints, one writer per run."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys

import pytest

from mnas.errors import UserError
from mnas.space import SearchSpace
from mnas.store import DB_NAME, Store, dump_state, load_state
from mnas.trial import Trial


def _batch(space: SearchSpace, n: int, seed: int = 0) -> list[Trial]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        arch = space.sample(rng)
        out.append(Trial(trial_id=-1, arch=arch, strategy="random", tokens=space.encode(arch)))
    return out


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.cifar()


def test_round_trip_of_trials_config_and_state(tmp_path, space):
    config = {"reward": {"target_ms": 2.0}, "seed": 3}
    with Store.create(tmp_path / "run", config, mnas_version="x") as store:
        trials = store.add_trials(_batch(space, 3), dump_state({"step": 0}), step=0)
        assert [t.trial_id for t in trials] == [0, 1, 2]
        store.mark_running(1, worker="host:1")
        done = trials[1]
        done.status, done.accuracy, done.latency_ms, done.reward = "done", 0.5, 1.5, 0.48
        done.seconds, done.worker, done.finished_at = 2.0, "host:1", 123.0
        store.save_result(done)
        failed = trials[2]
        failed.status, failed.error = "failed", "diverged"
        store.save_result(failed)

    with Store.open(tmp_path / "run") as store:
        assert store.config == config
        assert store.get_meta("mnas_version") == "x"
        assert store.counts() == {"pending": 1, "running": 0, "done": 1, "failed": 1}
        again = store.trial(1)
        assert again.arch == trials[1].arch and again.arch.id == trials[1].arch.id
        assert again.tokens == trials[1].tokens
        assert (again.accuracy, again.latency_ms, again.reward, again.worker) == (0.5, 1.5, 0.48, "host:1")
        assert store.trial(2).error == "diverged"
        assert store.attempts(1) == 1 and store.attempts(0) == 0
        assert [t.trial_id for t in store.untold()] == [0, 1, 2]
        checkpoint = store.checkpoint()
        assert checkpoint.phase == "ask" and load_state(checkpoint.state) == {"step": 0}


def test_tell_marks_trials_and_checkpoints_in_one_step(tmp_path, space):
    with Store.create(tmp_path, {}) as store:
        trials = store.add_trials(_batch(space, 2), dump_state({"a": 1}), step=0)
        for t in trials:
            t.status, t.accuracy, t.latency_ms, t.reward = "done", 0.1, 1.0, 0.1
            store.save_result(t)
        store.commit_tell([t.trial_id for t in trials], dump_state({"a": 2}), step=0)
        assert store.untold() == []
        checkpoint = store.checkpoint()
        assert (checkpoint.step, checkpoint.phase) == (0, "tell")
        assert load_state(checkpoint.state) == {"a": 2}
        nxt = store.add_trials(_batch(space, 2, seed=1), dump_state({"a": 3}), step=1)
        assert [t.trial_id for t in nxt] == [2, 3]
        assert [t.step for t in store.untold()] == [1, 1]


def test_failed_transaction_leaves_no_trace(tmp_path, space):
    with Store.create(tmp_path, {}) as store:
        store.add_trials(_batch(space, 1), dump_state({"a": 1}), step=0)
        bad = _batch(space, 2, seed=5)
        bad[1].tokens = [object()]  # not JSON-serialisable: fails mid-transaction
        with pytest.raises(TypeError):
            store.add_trials(bad, dump_state({"a": 2}), step=1)
        assert len(store) == 1
        assert load_state(store.checkpoint().state) == {"a": 1}


def test_save_result_rejects_unfinished_and_unknown(tmp_path, space):
    with Store.create(tmp_path, {}) as store:
        (trial,) = store.add_trials(_batch(space, 1), b"x", step=0)
        with pytest.raises(ValueError):
            store.save_result(trial)  # still pending
        ghost = Trial(trial_id=99, arch=trial.arch, status="done")
        with pytest.raises(KeyError):
            store.save_result(ghost)


def test_store_is_wal_and_single_writer(tmp_path):
    with Store.create(tmp_path, {}) as store:
        mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        with pytest.raises(UserError, match="in use"):
            Store.open(tmp_path, writer=True)
        # Another process cannot take the lock either; a reader can open.
        code = ("from mnas.store import Store\n"
                f"Store.open({str(tmp_path)!r}, writer=True)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "in use" in proc.stderr
        with Store.open(tmp_path) as reader:
            assert len(reader) == 0
    with Store.open(tmp_path, writer=True):  # the lock went with the writer
        pass


def test_create_refuses_existing_run_and_open_refuses_empty_dir(tmp_path):
    Store.create(tmp_path / "r", {}).close()
    with pytest.raises(UserError, match="--resume"):
        Store.create(tmp_path / "r", {})
    with pytest.raises(UserError, match="no search run"):
        Store.open(tmp_path / "empty")
