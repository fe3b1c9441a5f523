"""The trial store: one SQLite file per run directory (``RUN_DIR/trials.sqlite``).

It holds the run's config, every trial, and the strategy's state. The state is a blob in the same
database, written in the *same transaction* as the trial rows it belongs to: the trials a batch
inserts (after `ask`) and the `told` flags (after `tell`). A separate checkpoint file would leave
a window between "trials committed" and "file replaced" in which a crash makes the two disagree;
one transaction has no such window, so resume always finds a strategy state that matches the
trials exactly. WAL mode lets `mnas report` read while a search writes; an exclusive lock file
keeps to one writer per run.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnas.errors import UserError
from mnas.trial import STATUSES, Trial

DB_NAME = "trials.sqlite"
LOCK_NAME = ".writer.lock"
SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial_id INTEGER PRIMARY KEY,
    step INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    arch_id TEXT NOT NULL,
    arch TEXT NOT NULL,
    tokens TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    accuracy REAL,
    latency_ms REAL,
    reward REAL,
    seconds REAL,
    error TEXT,
    worker TEXT,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    told INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS trials_status ON trials (status);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    step INTEGER NOT NULL,
    phase TEXT NOT NULL,
    state BLOB NOT NULL,
    saved_at REAL NOT NULL
);
"""

_RESULT_FIELDS = ("status", "accuracy", "latency_ms", "reward", "seconds", "error", "worker",
                  "started_at", "finished_at")


@dataclass(frozen=True)
class Checkpoint:
    """The strategy's latest saved state: after the `ask` of `step`, or after its `tell`."""

    step: int
    phase: str  # "ask" | "tell"
    state: bytes
    saved_at: float


def dump_state(state: dict) -> bytes:
    """Serialise a strategy `state_dict` (may hold tensors and RNG states) to bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(blob: bytes) -> dict:
    """Inverse of `dump_state`. Tensors and plain data only (`weights_only=True`): a crafted store
    must not run code when a search resumes."""
    from mnas.safe_load import load_tensors

    return load_tensors(blob, "the strategy state in the run store")


class Store:
    """The run directory's database. Open with `Store.create` (new run) or `Store.open`."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.run_dir = run_dir
        self._conn = conn
        self._lock_fd = lock_fd

    # -- opening and closing -------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, config: dict[str, Any], **meta: Any) -> Store:
        """Start a new run in `run_dir`; refuses a directory that already holds one."""
        run_dir = Path(run_dir)
        if (run_dir / DB_NAME).exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            "or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        store = cls._connect(run_dir, writer=True)
        store._conn.executescript(_SCHEMA)
        with store._tx():
            rows = {"schema_version": SCHEMA_VERSION, "config": config, "created_at": time.time(),
                    **meta}
            store._conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in rows.items()])
        return store

    @classmethod
    def open(cls, run_dir: str | Path, *, writer: bool = False) -> Store:
        """Open an existing run; `writer=True` takes the run's single-writer lock."""
        run_dir = Path(run_dir)
        if not (run_dir / DB_NAME).is_file():
            raise UserError(f"{run_dir} holds no search run (no {DB_NAME}); start one with "
                            "`mnas search --config FILE.yaml --out RUN_DIR`")
        store = cls._connect(run_dir, writer=writer)
        version = store.get_meta("schema_version")
        if version != SCHEMA_VERSION:
            store.close()
            raise UserError(f"{run_dir}/{DB_NAME} has store schema {version}; this mnas reads "
                            f"schema {SCHEMA_VERSION}")
        return store

    @classmethod
    def _connect(cls, run_dir: Path, *, writer: bool) -> Store:
        lock_fd = None
        if writer:
            lock_fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise UserError(f"{run_dir} is in use by another running search; wait for it "
                                "to finish or stop it first") from None
        conn = sqlite3.connect(run_dir / DB_NAME, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return cls(run_dir, conn, lock_fd)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One explicit write transaction (the connection is in autocommit mode otherwise)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.run_dir / DB_NAME

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx():
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (key, json.dumps(value)))

    @property
    def config(self) -> dict[str, Any]:
        return self.get_meta("config")

    # -- trials ------------------------------------------------------------------------------
    def add_trials(self, trials: Sequence[Trial], state: bytes, step: int) -> list[Trial]:
        """Insert a batch from `ask` as pending, with the post-ask strategy state, atomically.

        Trial ids are assigned here (consecutive from 0) and written back into the trials.
        """
        with self._tx():
            row = self._conn.execute("SELECT COALESCE(MAX(trial_id), -1) FROM trials").fetchone()
            next_id = row[0] + 1
            for offset, trial in enumerate(trials):
                trial.trial_id = next_id + offset
                trial.step = step
                trial.status = "pending"
                self._conn.execute(
                    "INSERT INTO trials (trial_id, step, strategy, arch_id, arch, tokens, status) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                    (trial.trial_id, step, trial.strategy, trial.arch.id, trial.arch.to_json(),
                     json.dumps(list(trial.tokens))),
                )
            self._save_checkpoint(step, "ask", state)
        return list(trials)

    def mark_running(self, trial_id: int, worker: str | None = None) -> None:
        """A trial was handed to a worker; counts the attempt."""
        with self._tx():
            self._conn.execute(
                "UPDATE trials SET status = 'running', worker = ?, started_at = ?, "
                "attempts = attempts + 1 WHERE trial_id = ?",
                (worker, time.time(), trial_id),
            )

    def save_result(self, trial: Trial) -> None:
        """Record a finished trial (done or failed) the moment it finishes."""
        if trial.status not in ("done", "failed"):
            raise ValueError(f"save_result wants a finished trial, got status {trial.status!r}")
        values = [getattr(trial, name) for name in _RESULT_FIELDS]
        assignments = ", ".join(f"{name} = ?" for name in _RESULT_FIELDS)
        with self._tx():
            cursor = self._conn.execute(f"UPDATE trials SET {assignments} WHERE trial_id = ?",
                                        (*values, trial.trial_id))
            if cursor.rowcount != 1:
                raise KeyError(f"no trial {trial.trial_id} in {self.path}")

    def commit_tell(self, trial_ids: Iterable[int], state: bytes, step: int) -> None:
        """Mark trials as told to the strategy and save its post-tell state, atomically."""
        with self._tx():
            self._conn.executemany("UPDATE trials SET told = 1 WHERE trial_id = ?",
                                   [(i,) for i in trial_ids])
            self._save_checkpoint(step, "tell", state)

    def _save_checkpoint(self, step: int, phase: str, state: bytes) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO checkpoint (id, step, phase, state, saved_at) "
            "VALUES (1, ?, ?, ?, ?)",
            (step, phase, sqlite3.Binary(state), time.time()),
        )

    def checkpoint(self) -> Checkpoint | None:
        row = self._conn.execute("SELECT step, phase, state, saved_at FROM checkpoint").fetchone()
        if row is None:
            return None
        return Checkpoint(row["step"], row["phase"], bytes(row["state"]), row["saved_at"])

    def trials(self, status: str | Sequence[str] | None = None) -> list[Trial]:
        """All trials in id order, optionally only those with the given status(es)."""
        query = "SELECT * FROM trials"
        params: tuple[Any, ...] = ()
        if status is not None:
            wanted = (status,) if isinstance(status, str) else tuple(status)
            query += f" WHERE status IN ({', '.join('?' * len(wanted))})"
            params = wanted
        rows = self._conn.execute(query + " ORDER BY trial_id", params).fetchall()
        return [_row_to_trial(row) for row in rows]

    def trial(self, trial_id: int) -> Trial:
        row = self._conn.execute("SELECT * FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        if row is None:
            raise KeyError(f"no trial {trial_id} in {self.path}")
        return _row_to_trial(row)

    def untold(self) -> list[Trial]:
        """Trials of the batch in flight: inserted after the last `tell` checkpoint."""
        rows = self._conn.execute("SELECT * FROM trials WHERE told = 0 ORDER BY trial_id").fetchall()
        return [_row_to_trial(row) for row in rows]

    def attempts(self, trial_id: int) -> int:
        row = self._conn.execute("SELECT attempts FROM trials WHERE trial_id = ?",
                                 (trial_id,)).fetchone()
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._conn.execute("SELECT status, COUNT(*) FROM trials GROUP BY status"):
            counts[row[0]] = row[1]
        return counts

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0])


def _row_to_trial(row: sqlite3.Row) -> Trial:
    from mnas.space import Architecture

    return Trial(
        trial_id=row["trial_id"],
        arch=Architecture.from_json(row["arch"]),
        step=row["step"],
        strategy=row["strategy"],
        tokens=json.loads(row["tokens"]),
        status=row["status"],
        accuracy=row["accuracy"],
        latency_ms=row["latency_ms"],
        reward=row["reward"],
        seconds=row["seconds"],
        error=row["error"],
        worker=row["worker"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )
