"""The trial store: real SQLite files, atomic strategy checkpoints, one writer per run."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys

import pytest

from mnas.errors import UserError
from mnas.search.store import DB_NAME, SCHEMA, Store, dump_state, load_state
from mnas.search.trial import Trial
from mnas.space import SearchSpace
from mnas.strategies import STRATEGIES, make_strategy


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
    with Store.create(tmp_path, {}):
        mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        with pytest.raises(UserError, match="in use"):
            Store.open(tmp_path, writer=True)
        # Another process cannot take the lock either; a reader can open.
        code = ("from mnas.search.store import Store\n"
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


# -- trial ids, log-probabilities, repeats (schema 2) ------------------------------------------
def test_ids_logp_and_repeats_round_trip(tmp_path, space):
    batch = _batch(space, 3)
    for i, trial in enumerate(batch):
        trial.trial_id, trial.logp = i, -1.5 * (i + 1)
    batch[2].arch, batch[2].tokens, batch[2].repeat_of = batch[0].arch, batch[0].tokens, 0
    with Store.create(tmp_path, {}) as store:
        store.add_trials(batch, dump_state({}), step=0)
        again = store.trials()
        assert [t.trial_id for t in again] == [0, 1, 2]
        assert [t.logp for t in again] == [-1.5, -3.0, -4.5]
        assert [t.repeat_of for t in again] == [None, None, 0] and again[2].is_repeat
        assert store.evaluations() == 2 and len(store) == 3
        assert store.first_of() == {batch[0].arch.id: 0, batch[1].arch.id: 1}
        # A strategy's ids are kept; an id already stored is refused, and nothing is written.
        more = _batch(space, 2, seed=1)
        more[0].trial_id, more[1].trial_id = 3, 1
        with pytest.raises(ValueError, match="trial 1 is already in"):
            store.add_trials(more, dump_state({"x": 1}), step=1)
        assert len(store) == 3 and load_state(store.checkpoint().state) == {}


def _schema1_store(run_dir, space) -> None:
    """A store as mnas wrote it before schema 2 (no logp / repeat_of columns)."""
    run_dir.mkdir()
    conn = sqlite3.connect(run_dir / DB_NAME)
    schema = SCHEMA.replace(",\n    logp REAL,\n    repeat_of INTEGER REFERENCES trials (trial_id)", "")
    assert "logp" not in schema
    conn.executescript(schema)
    arch = space.sample(random.Random(0))
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('config', '{}')")
    conn.execute("INSERT INTO trials (trial_id, step, strategy, arch_id, arch, tokens, status, accuracy, latency_ms, "
                 "reward, told) VALUES (0, 0, 'random', ?, ?, ?, 'done', 0.5, 2.0, 0.5, 1)",
                 (arch.id, arch.to_json(), json.dumps(space.encode(arch))))
    conn.execute("INSERT INTO checkpoint VALUES (1, 0, 'tell', ?, 0.0)", (dump_state({}),))
    conn.commit()
    conn.close()


def test_schema1_store_is_read_but_not_resumed(tmp_path, space):
    _schema1_store(tmp_path / "old", space)
    with Store.open(tmp_path / "old") as store:
        (trial,) = store.trials()
        assert trial.reward == 0.5 and trial.logp is None and trial.repeat_of is None
        assert store.evaluations() == 1
    with pytest.raises(UserError, match="store schema 1.*cannot be resumed"):
        Store.open(tmp_path / "old", writer=True)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_state_saved_with_the_trials_restores_exactly(tmp_path, space, name):
    """The post-ask state is stored with the batch; a fresh strategy restored from the store asks
    exactly what the original asks next, and learns from the stored trials (ids, tokens, logp)."""
    knobs = {"ppo": {"batch_size": 4}, "evolution": {"population": 4, "sample_size": 2}}.get(name, {})
    original = make_strategy(name, space, 5, knobs)
    with Store.create(tmp_path, {}) as store:
        for step in range(3):
            proposals = original.ask(4)
            batch = [Trial(p.trial_id, p.arch, strategy=name, tokens=list(p.tokens), logp=p.logp) for p in proposals]
            store.add_trials(batch, dump_state(original.state_dict()), step)
            for t in batch:
                t.status, t.accuracy, t.latency_ms = "done", (t.trial_id % 5) / 5, 1.0 + t.trial_id % 3
                t.reward = t.accuracy
                store.save_result(t)
            if step < 2:  # the last batch is left untold: a crash between results and tell
                original.tell(store.trials()[-4:])
                store.commit_tell([t.trial_id for t in batch], dump_state(original.state_dict()), step)
        restored = make_strategy(name, space, 0, knobs)
        restored.load_state_dict(load_state(store.checkpoint().state))
        untold = store.untold()
    assert restored.pending_ids() == [t.trial_id for t in untold] == [8, 9, 10, 11]
    original.tell(untold)
    restored.tell(untold)
    assert [p.arch for p in original.ask(6)] == [p.arch for p in restored.ask(6)]
