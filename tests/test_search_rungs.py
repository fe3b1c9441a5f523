"""Successive halving with the real proxy: worker processes, checkpoints between rungs, references,
and a SIGKILL of `python -m mnas search` mid-rung followed by `--resume` (no finished rung lost)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from mnas.search.config import load_config
from mnas.search.loop import STATES_DIR, start_search
from mnas.search.rungs import RungScheduler
from mnas.search.store import Store
from test_search import write_config

pytestmark = pytest.mark.slow  # every test here trains

RUNGS = {"steps": [2, 4, 8], "keep": 0.5, "workers": 2, "max_steps": None, "batch_size": 25}


def _rows(db, query: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _alive_in_group(pgid: int, wait_s: float = 5.0) -> list[str]:
    """Processes of the group that are still running (zombies waiting to be reaped do not count)."""
    deadline = time.time() + wait_s
    while True:
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
        alive = [line.split()[0] for line in ps if line.split()[1:2] == [str(pgid)] and not line.split()[2].startswith("Z")]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def test_rungs_in_worker_processes_with_references(tmp_path, data_root):
    config = load_config(write_config(tmp_path, proxy=RUNGS, budget={"trials": 6, "batch_size": 6},
                                      references={"models": ["mobilenet_v2"], "seeds": 2}))
    outcome = start_search(config, tmp_path / "run", show_progress=False)
    with Store.open(tmp_path / "run") as store:
        trials, refs, records = store.trials(), store.references(), store.rungs()
    assert outcome.counts["done"] == 6
    assert all(not t.worker.endswith(f":{os.getpid()}") for t in trials)  # trained in worker processes
    assert {t.rung for t in trials} >= {0, 2} and sum(t.rung == 0 for t in trials) >= 1
    for t in trials:
        assert t.budget == [2, 4, 8][t.rung]
    assert [(r.reference, r.seed, r.rung) for r in refs] == [("mobilenet_v2 x0.75", 0, 2), ("mobilenet_v2 x0.75", 1, 2)]
    assert all(r.accuracy is not None and r.latency_ms > 0 for r in refs)
    fresh = RungScheduler([2, 4, 8], 0.5)
    ref_ids = {r.trial_id for r in refs}
    assert all(fresh.decide(r.trial_id, r.rung, r.reward) == r.promoted for r in records if r.trial_id not in ref_ids)
    assert not any((tmp_path / "run" / STATES_DIR).glob("*.pt"))  # states removed as trials end


def test_sigkill_mid_rung_then_resume_loses_no_finished_rung(tmp_path, data_root):
    proxy = {**RUNGS, "steps": [2, 6, 30]}
    config_path = write_config(tmp_path, proxy=proxy, budget={"trials": 6, "batch_size": 6})
    run_dir = tmp_path / "run"
    db = run_dir / "trials.sqlite"
    cmd = [sys.executable, "-m", "mnas", "search", "--config", str(config_path), "--out", str(run_dir), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy(),
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while _rows(db, "SELECT COUNT(*) FROM rungs") < 4:  # some rungs finished, others in flight
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the search made no progress"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(1.0)
    with Store.open(run_dir) as store:
        before = {(r.trial_id, r.rung): r for r in store.rungs()}
    assert before and _rows(db, "SELECT COUNT(*) FROM trials WHERE status = 'done'") < 6
    assert _alive_in_group(proc.pid) == [], "worker processes outlived the killed search"

    resumed = subprocess.run([sys.executable, "-m", "mnas", "search", "--resume", str(run_dir), "-q"],
                             capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    with Store.open(run_dir) as store:
        after = {(r.trial_id, r.rung): r for r in store.rungs()}
        trials = store.trials()
    assert [t.status for t in trials] == ["done"] * 6, [t.error for t in trials if t.error]
    for key, old in before.items():  # every finished rung kept as it was, decision included
        assert after[key] == old
    fresh = RungScheduler([2, 6, 30], 0.5)
    with Store.open(run_dir) as store:
        assert all(fresh.decide(r.trial_id, r.rung, r.reward) == r.promoted for r in store.rungs())
