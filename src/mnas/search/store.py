"""The trial store: one SQLite file per run directory (``RUN_DIR/trials.sqlite``).

It holds the run's config, every trial, and the strategy's state. The state is a blob in the same
database, written in the *same transaction* as the trial rows it belongs to: the trials a batch
inserts (after `ask`) and the `told` flags (after `tell`). A separate checkpoint file would leave
a window between "trials committed" and "file replaced" in which a crash makes the two disagree;
one transaction has no such window, so resume always finds a strategy state that matches the
trials exactly. WAL mode lets `mnas report` read while a search writes; an exclusive lock file
keeps to one writer per run.

A trial row keeps what its strategy needs to learn from it: the proposal's tokens and, for PPO,
its log-probability (`logp`), so a resumed search takes them from the rows, not from the
strategy's memory. A proposal of an architecture the run already has is stored as a *repeat*
(`repeat_of` = the id of the trial that evaluated it) and gets that trial's result for free.

A damaged file (truncated, zeroed, overwritten) is found when the store is opened, through a
read-only connection that never writes to it, and reported in one line (`DamagedStoreError`);
`mnas.search.salvage` (the `mnas store check|recover` commands) reads what SQLite can still
read, row by row, from a copy of the file, and writes it into a new run.
Schema 1 stores (before ids, log-probabilities and repeats were stored) can still be read by
`mnas report` and `mnas best`; they cannot be resumed.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.safe_load import load_tensors
from mnas.search.trial import STATUSES, Trial

DB_NAME = "trials.sqlite"
LOCK_NAME = ".writer.lock"
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
TABLES = ("meta", "trials", "checkpoint", "rungs")
#: The most ids one `IN (...)` query is given (older SQLite allows 999 parameters).
MAX_PARAMS = 500

#: Every rung a candidate finished (successive halving): its accuracy, reward and cost, and the
#: decision taken on it, in the order the decisions were taken (`seq`), so a resume replays them.
RUNGS_TABLE = """
CREATE TABLE IF NOT EXISTS rungs (
    seq INTEGER PRIMARY KEY,
    trial_id INTEGER NOT NULL REFERENCES trials (trial_id),
    rung INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    reward REAL NOT NULL,
    seconds REAL NOT NULL,
    promoted INTEGER NOT NULL,
    UNIQUE (trial_id, rung)
);
"""
#: Columns schema 3 added to the trials table (a schema-2 store gets them when a search resumes it).
V3_COLUMNS = (("rung", "INTEGER"), ("budget", "INTEGER"), ("reference", "TEXT"), ("seed", "INTEGER"))

SCHEMA = f"""
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
    told INTEGER NOT NULL DEFAULT 0,
    logp REAL,
    repeat_of INTEGER REFERENCES trials (trial_id),
    latencies TEXT,
    relative REAL,
    rung INTEGER,
    budget INTEGER,
    reference TEXT,
    seed INTEGER
);
CREATE INDEX IF NOT EXISTS trials_status ON trials (status);
{RUNGS_TABLE}
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    step INTEGER NOT NULL,
    phase TEXT NOT NULL,
    state BLOB NOT NULL,
    saved_at REAL NOT NULL
);
"""

RESULT_FIELDS = ("status", "accuracy", "latency_ms", "reward", "seconds", "error", "worker",
                 "started_at", "finished_at", "latencies", "relative", "rung", "budget")


@dataclass(frozen=True)
class RungRecord:
    """One finished rung of one candidate, and whether it was promoted to the next."""

    trial_id: int
    rung: int
    budget: int
    accuracy: float
    reward: float
    seconds: float
    promoted: bool


class DamagedStoreError(UserError):
    """The run's SQLite file cannot be read as a store; it was left as it is."""


@dataclass(frozen=True)
class Checkpoint:
    """The strategy's latest saved state: after the `ask` of `step`, or after its `tell`."""

    step: int
    phase: str  # "ask" | "tell"
    state: bytes
    saved_at: float


def dump_state(state: dict) -> bytes:
    """Serialise a strategy `state_dict` (may hold tensors and RNG states) to bytes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(blob: bytes) -> dict:
    """Inverse of `dump_state`. Tensors and plain data only (`weights_only=True`): a crafted store
    must not run code when a search resumes."""
    return load_tensors(blob, "the strategy state in the run store")


def refuse_existing_run(run_dir: str | Path) -> None:
    """A new run does not go into a folder that already holds one (UserError naming --resume)."""
    if (Path(run_dir) / DB_NAME).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                        "or choose another --out")


def damage_message(path: Path, why: str) -> str:
    return (f"{path} is damaged ({why}); it was left untouched. See what is readable with "
            f"`mnas store check {path.parent}` and salvage it with `mnas store recover {path.parent}`")


def inspect_file(path: Path) -> list[str]:
    """Problems of the SQLite file at `path` as a run store (empty when it reads as one).

    Opens it read-only (`mode=ro`: SQLite never writes the file through such a connection, and a
    read-only connection never checkpoints the WAL into it) and runs `PRAGMA quick_check`, which
    walks every b-tree page.
    """
    sidecars = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    existed = [p.exists() for p in sidecars]
    problems: list[str] = []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [t for t in TABLES if t not in tables]
            if missing:
                problems.append(f"no {', '.join(missing)} table{'s' if len(missing) > 1 else ''}"
                                + (" (an empty file)" if path.stat().st_size == 0 else ""))
            checks = [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
            if checks != ["ok"]:
                problems += [f"quick_check: {c}" for c in checks]
            if not missing:
                conn.execute("SELECT COUNT(*), SUM(LENGTH(arch)) FROM trials").fetchone()
                conn.execute("SELECT LENGTH(state) FROM checkpoint").fetchall()
                conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "unable to open" in text or "locked" in text or "readonly" in text:
            raise UserError(f"cannot read {path}: {text}; check that the file and its folder are readable") from None
        problems.append(text)
    except sqlite3.DatabaseError as exc:
        problems.append(str(exc))
    finally:
        # A read-only open of a WAL file may create empty -wal/-shm files next to it; remove the
        # ones this check created, so a run folder a command then refuses stays as found (a writer
        # using the store had them already: those are left alone).
        for sidecar, was_there in zip(sidecars, existed, strict=True):
            if not was_there and sidecar.exists() and (not sidecar.name.endswith("-wal") or sidecar.stat().st_size == 0):
                sidecar.unlink(missing_ok=True)
    return problems


class Store:
    """The run directory's database. Open with `Store.create` (new run) or `Store.open`."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.run_dir = run_dir
        self._conn = conn
        self._lock_fd = lock_fd
        self.schema_version = SCHEMA_VERSION
        #: Reads a stored architecture back (`mnas.search.trial.arch_reader`): MnasNet's unless a
        #: search over another space sets its space's.
        self.read_arch: Callable[[str], Any] = Architecture.from_json

    # -- opening and closing -------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, config: dict[str, Any], **meta: Any) -> Store:
        """Start a new run in `run_dir`; refuses a directory that already holds one."""
        run_dir = Path(run_dir)
        refuse_existing_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        store = cls._connect(run_dir, writer=True)
        store._conn.executescript(SCHEMA)
        with store._tx():
            rows = {"schema_version": SCHEMA_VERSION, "config": config, "created_at": time.time(),
                    **meta}
            store._conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in rows.items()])
        return store

    @classmethod
    def open(cls, run_dir: str | Path, *, writer: bool = False) -> Store:
        """Open an existing run; `writer=True` takes the run's single-writer lock.

        A damaged file is a `DamagedStoreError` before anything writes to it.
        """
        run_dir = Path(run_dir)
        path = run_dir / DB_NAME
        if not path.is_file():
            raise UserError(f"{run_dir} holds no search run (no {DB_NAME}); start one with "
                            "`mnas search --config FILE.yaml --out RUN_DIR`")
        problems = inspect_file(path)
        if problems:
            raise DamagedStoreError(damage_message(path, problems[0]))
        store = cls._connect(run_dir, writer=writer)
        try:
            version = store.get_meta("schema_version")
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            store.close()
            raise DamagedStoreError(damage_message(path, f"unreadable meta table: {exc}")) from None
        if version not in READABLE_SCHEMAS:
            store.close()
            raise UserError(f"{path} has store schema {version}; this mnas reads schemas "
                            f"{', '.join(map(str, READABLE_SCHEMAS))}")
        if writer and version == 2:
            store._upgrade_to_3()
            version = SCHEMA_VERSION
        if writer and version != SCHEMA_VERSION:
            store.close()
            raise UserError(f"{path} has store schema {version}, from an older mnas that did not store "
                            "trial ids' log-probabilities and repeats; `mnas report` and `mnas best` read it, "
                            "but it cannot be resumed: start a new search")
        store.schema_version = int(version)
        return store

    def _upgrade_to_3(self) -> None:
        """Schema 2 -> 3: the rung columns and table (a schema-2 trial reached its one rung)."""
        with self._tx():
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(trials)")}
            for name, kind in V3_COLUMNS:
                if name not in have:
                    self._conn.execute(f"ALTER TABLE trials ADD COLUMN {name} {kind}")
            self._conn.execute(RUNGS_TABLE)
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(3),))

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

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read; damage that `quick_check` did not see (e.g. a bad overflow page) is one line."""
        try:
            return self._conn.execute(query, params).fetchall()
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise DamagedStoreError(damage_message(self.path, str(exc))) from None

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
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        try:
            return default if not rows else json.loads(rows[0]["value"])
        except (TypeError, json.JSONDecodeError):
            raise DamagedStoreError(damage_message(self.path, f"meta {key!r} is not JSON")) from None

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

        A trial keeps its `trial_id` (the strategy's proposal id) when it has one (>= 0); one with
        id -1 gets the next free id. An id already in the store is an error (nothing is written).
        """
        with self._tx():
            row = self._conn.execute("SELECT COALESCE(MAX(trial_id), -1) FROM trials").fetchone()
            next_id = row[0] + 1
            for trial in trials:
                if trial.trial_id < 0:
                    trial.trial_id = next_id
                next_id = max(next_id, trial.trial_id + 1)
                trial.step = step
                trial.status = "pending"
                try:
                    self._conn.execute(
                        "INSERT INTO trials (trial_id, step, strategy, arch_id, arch, tokens, status, logp, "
                        "repeat_of, reference, seed) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                        (trial.trial_id, step, trial.strategy, trial.arch.id, trial.arch.to_json(),
                         json.dumps([int(t) for t in trial.tokens]), trial.logp, trial.repeat_of,
                         trial.reference, trial.seed),
                    )
                except sqlite3.IntegrityError:
                    raise ValueError(f"trial {trial.trial_id} is already in {self.path}") from None
            self._save_checkpoint(step, "ask", state)
        return list(trials)

    def add_references(self, trials: Sequence[Trial]) -> list[Trial]:
        """Insert the run's reference networks as pending trials with ids -1, -2, ...: never asked
        by the strategy, never told to it, not counted by the trial budget."""
        with self._tx():
            row = self._conn.execute("SELECT COALESCE(MIN(trial_id), 0) FROM trials").fetchone()
            next_id = min(-1, row[0] - 1)
            for trial in trials:
                trial.trial_id, trial.step, trial.status = next_id, -1, "pending"
                next_id -= 1
                self._conn.execute(
                    "INSERT INTO trials (trial_id, step, strategy, arch_id, arch, tokens, status, told, reference, "
                    "seed) VALUES (?, -1, 'reference', ?, ?, '[]', 'pending', 1, ?, ?)",
                    (trial.trial_id, trial.arch.id, trial.arch.to_json(), trial.reference, trial.seed),
                )
        return list(trials)

    def references(self) -> list[Trial]:
        """The reference trials (see `add_references`), in the order they were added."""
        if self.schema_version < 3:
            return []
        rows = self._rows("SELECT * FROM trials WHERE reference IS NOT NULL ORDER BY trial_id DESC")
        return [self._row_to_trial(row) for row in rows]

    def unfinished_references(self) -> list[Trial]:
        return [t for t in self.references() if t.status in ("pending", "running")]

    # -- rungs (successive halving) ----------------------------------------------------------
    def add_rung(self, record: RungRecord) -> None:
        """A finished rung and its promotion decision, together (a resume replays them in order)."""
        with self._tx():
            self._conn.execute(
                "INSERT OR REPLACE INTO rungs (trial_id, rung, budget, accuracy, reward, seconds, promoted) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.trial_id, record.rung, record.budget, record.accuracy, record.reward, record.seconds,
                 int(record.promoted)))

    def rungs(self, trial_id: int | Iterable[int] | None = None) -> list[RungRecord]:
        """Finished rungs in decision order (of one trial, of some trials, or of the whole run)."""
        if self.schema_version < 3:
            return []
        if trial_id is None:
            rows = self._rows("SELECT * FROM rungs ORDER BY seq")
        else:
            ids = [trial_id] if isinstance(trial_id, int) else sorted(set(trial_id))
            rows = []
            for i in range(0, len(ids), MAX_PARAMS):  # within SQLite's limit on a query's parameters
                chunk = ids[i:i + MAX_PARAMS]
                rows += self._rows(f"SELECT * FROM rungs WHERE trial_id IN ({', '.join('?' * len(chunk))})", chunk)
            rows.sort(key=lambda row: row["seq"])
        try:
            return [row_to_rung(r) for r in rows]
        except UserError as exc:
            raise DamagedStoreError(damage_message(self.path, str(exc))) from None

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
        values = [json.dumps(trial.latencies) if name == "latencies" and trial.latencies is not None
                  else getattr(trial, name) for name in RESULT_FIELDS]
        assignments = ", ".join(f"{name} = ?" for name in RESULT_FIELDS)
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
        rows = self._rows("SELECT step, phase, state, saved_at FROM checkpoint")
        if not rows:
            return None
        row = rows[0]
        return Checkpoint(row["step"], row["phase"], bytes(row["state"]), row["saved_at"])

    def trials(self, status: str | Sequence[str] | None = None) -> list[Trial]:
        """The search's trials in id order (not the references), optionally only those with the
        given status(es)."""
        conditions = ["reference IS NULL"] if self.schema_version >= 3 else []
        params: tuple[Any, ...] = ()
        if status is not None:
            wanted = (status,) if isinstance(status, str) else tuple(status)
            conditions.append(f"status IN ({', '.join('?' * len(wanted))})")
            params = wanted
        query = "SELECT * FROM trials" + (" WHERE " + " AND ".join(conditions) if conditions else "")
        return [self._row_to_trial(row) for row in self._rows(query + " ORDER BY trial_id", params)]

    def trial(self, trial_id: int) -> Trial:
        rows = self._rows("SELECT * FROM trials WHERE trial_id = ?", (trial_id,))
        if not rows:
            raise KeyError(f"no trial {trial_id} in {self.path}")
        return self._row_to_trial(rows[0])

    def untold(self) -> list[Trial]:
        """Trials of the batch in flight: inserted after the last `tell` checkpoint."""
        return [self._row_to_trial(row) for row in self._rows("SELECT * FROM trials WHERE told = 0 ORDER BY trial_id")]

    def attempts(self, trial_id: int) -> int:
        rows = self._rows("SELECT attempts FROM trials WHERE trial_id = ?", (trial_id,))
        return int(rows[0][0]) if rows else 0

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        where = " WHERE reference IS NULL" if self.schema_version >= 3 else ""
        for row in self._rows(f"SELECT status, COUNT(*) FROM trials{where} GROUP BY status"):
            counts[row[0]] = row[1]
        return counts

    def evaluations(self) -> int:
        """Trials that were (or will be) evaluated: all but repeats. The trial budget counts these."""
        if self.schema_version < 2:
            return len(self)
        where = "repeat_of IS NULL" + (" AND reference IS NULL" if self.schema_version >= 3 else "")
        return int(self._rows(f"SELECT COUNT(*) FROM trials WHERE {where}")[0][0])

    def first_of(self) -> dict[str, int]:
        """Architecture id -> the trial that evaluated it (the one a repeat takes its result from)."""
        where = "" if self.schema_version < 2 else " WHERE repeat_of IS NULL"
        if self.schema_version >= 3:
            where += " AND reference IS NULL"
        rows = self._rows(f"SELECT arch_id, MIN(trial_id) FROM trials{where} GROUP BY arch_id")
        return {row[0]: int(row[1]) for row in rows}

    def __len__(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM trials")[0][0])

    def _row_to_trial(self, row: sqlite3.Row) -> Trial:
        try:
            return row_to_trial(row, self.read_arch)
        except UserError as exc:
            raise DamagedStoreError(damage_message(self.path, f"trial {row['trial_id']!r}: {exc}")) from None

    def _insert_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert trials rows as they are (every column present in this schema), in one transaction."""
        columns = [row[1] for row in self._conn.execute("PRAGMA table_info(trials)")]
        with self._tx():
            for row in rows:
                names = [c for c in columns if c in row]
                self._conn.execute(f"INSERT INTO trials ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                   [row[c] for c in names])


def row_to_trial(row: sqlite3.Row | dict[str, Any],
                 read_arch: Callable[[str], Any] = Architecture.from_json) -> Trial:
    """A trial from a row of the trials table (schema 1 rows have no logp / repeat_of); its
    architecture read with `read_arch` (the search's space's reader)."""
    tokens, latencies = check_row(row)
    keys = row.keys()
    return Trial(
        trial_id=row["trial_id"],
        arch=read_arch(row["arch"]),
        step=row["step"],
        strategy=row["strategy"],
        tokens=tokens,
        status=row["status"],
        accuracy=row["accuracy"],
        latency_ms=row["latency_ms"],
        reward=row["reward"],
        seconds=row["seconds"],
        error=row["error"],
        worker=row["worker"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        logp=row["logp"] if "logp" in keys else None,
        repeat_of=row["repeat_of"] if "repeat_of" in keys else None,
        latencies=latencies,
        relative=row["relative"] if "relative" in keys else None,
        rung=row["rung"] if "rung" in keys else None,
        budget=row["budget"] if "budget" in keys else None,
        reference=row["reference"] if "reference" in keys else None,
        seed=row["seed"] if "seed" in keys else None,
    )


#: The trials columns a row must hold as integers, as numbers and as text (None where the schema allows).
ROW_INTEGERS = ("trial_id", "step", "repeat_of", "rung", "budget", "seed")
ROW_NUMBERS = ("accuracy", "latency_ms", "reward", "seconds", "started_at", "finished_at", "logp", "relative")
ROW_TEXTS = ("strategy", "arch", "tokens", "error", "worker", "latencies", "reference")
ROW_REQUIRED = ("trial_id", "step", "strategy", "arch", "tokens", "status")


def _type_problem(name: str, value: Any, kind: str) -> str | None:
    """Why `value` is not a `kind` ("integer" | "number" | "text"); None when it is one."""
    if kind == "text":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, int if kind == "integer" else (int, float)) and not isinstance(value, bool)
    return None if ok else f"{name} is {value!r}, not {'an' if kind == 'integer' else 'a'} {kind}"


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)  # as the readers parse it (NaN and Infinity allowed)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} {text[:80]!r} are not JSON ({exc})") from None


def check_row(row: sqlite3.Row | dict[str, Any]) -> tuple[list[int], dict[str, float] | None]:
    """Refuse a trials row that does not read back as a trial, in one line (UserError): a value of
    the wrong type, tokens or latencies that are not the JSON they should be, an unknown status.
    Returns the row's tokens and latencies (None when it has none), parsed.
    SQLite stores whatever a column is given; this is what every reader of a store (`row_to_trial`)
    and `mnas store check` run on every row, so the check calls damaged exactly what the readers
    refuse. The architecture is checked by the reader of the run's space (`row_to_trial`)."""
    keys = row.keys()
    for name in ROW_REQUIRED:
        if name not in keys or row[name] is None:
            raise UserError(f"no {name}")
    for names, kind in ((ROW_INTEGERS, "integer"), (ROW_NUMBERS, "number"), (ROW_TEXTS, "text")):
        for name in names:
            if name in keys and row[name] is not None:
                problem = _type_problem(name, row[name], kind)
                if problem:
                    raise UserError(problem)
    if row["status"] not in STATUSES:
        raise UserError(f"status {row['status']!r} is not one of {', '.join(STATUSES)}")
    tokens = _json(row["tokens"], "tokens")
    if not isinstance(tokens, list) or any(_type_problem("token", t, "integer") for t in tokens):
        raise UserError(f"tokens {row['tokens'][:80]!r} are not a list of integers")
    latencies = None
    if "latencies" in keys and row["latencies"]:
        latencies = _json(row["latencies"], "latencies")
        if not isinstance(latencies, dict) or any(_type_problem("latency", v, "number") for v in latencies.values()):
            raise UserError(f"latencies {row['latencies'][:80]!r} are not a mapping of target names to numbers")
    return tokens, latencies


def row_to_rung(row: sqlite3.Row | dict[str, Any]) -> RungRecord:
    """A rung record from a row of the rungs table; a row of the wrong types is a UserError naming
    it (the readers and `mnas store check` both read rung rows through here)."""
    try:
        for name, kind in (("trial_id", "integer"), ("rung", "integer"), ("budget", "integer"), ("accuracy", "number"),
                           ("reward", "number"), ("seconds", "number"), ("promoted", "integer")):
            problem = _type_problem(name, row[name], kind)
            if problem:
                raise UserError(problem)
        if row["rung"] < 0 or row["promoted"] not in (0, 1):
            raise UserError(f"rung {row['rung']!r} with promoted {row['promoted']!r} (a rung is >= 0, promoted 0 or 1)")
    except UserError as exc:
        raise UserError(f"rung row {row['seq']!r}: {exc}") from None
    return RungRecord(row["trial_id"], row["rung"], row["budget"], row["accuracy"], row["reward"], row["seconds"],
                      bool(row["promoted"]))
