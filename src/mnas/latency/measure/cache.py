"""Every latency measurement, stored in SQLite by architecture id x target fingerprint x reference.

Raw per-process figures and timestamps are kept, so a summary can be recomputed and repeatability
studied later. A relative result is keyed by the reference it was timed against (its
architecture id; '' for absolute results). The reference latencies (one per target and reference,
measured with the full protocol) live in their own table. One short-lived connection per call
keeps it safe for many worker processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from mnas.errors import UserError
from mnas.latency.measure.result import LatencyResult, ReferenceLatency
from mnas.latency.target import Target

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    arch_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    target TEXT NOT NULL,
    median_ms REAL NOT NULL,
    per_process_ms TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_key ON measurements (arch_id, fingerprint);
CREATE TABLE IF NOT EXISTS reference_latency (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    arch_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    ms REAL NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reference_key ON reference_latency (arch_id, fingerprint);
"""


def cache_dir() -> Path:
    """$MNAS_CACHE_DIR, else ~/.cache/mnas."""
    return Path(os.environ.get("MNAS_CACHE_DIR") or Path.home() / ".cache" / "mnas")


class LatencyCache:
    """get / put measurements and reference latencies; `models_dir` keeps exported model files."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "latency.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                db.executescript(_SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(measurements)")}
                if "reference" not in columns:  # a cache written before relative timing
                    db.execute("ALTER TABLE measurements ADD COLUMN reference TEXT NOT NULL DEFAULT ''")
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open latency cache {self.path}: {exc}; set MNAS_CACHE_DIR "
                            "to a writable folder") from None

    @property
    def models_dir(self) -> Path:
        return self.path.parent / "models"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, arch_id: str, target: Target, reference: str = "") -> LatencyResult | None:
        """The newest stored result for this architecture on this target (timed against the
        reference with this architecture id; '' for absolute results), or None."""
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT result FROM measurements WHERE arch_id = ? AND fingerprint = ? AND reference = ? "
                "ORDER BY id DESC LIMIT 1", (arch_id, target.fingerprint, reference)).fetchone()
        if row is None:
            return None
        result = LatencyResult.from_dict(json.loads(row[0]))
        result.cached = True
        return result

    def put(self, arch_id: str, result: LatencyResult) -> None:
        d = result.to_dict()
        d["cached"] = False
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO measurements (arch_id, fingerprint, target, median_ms, per_process_ms, "
                "measured_at, result, created_at, reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (arch_id, result.target.fingerprint, json.dumps(result.target.to_dict(), sort_keys=True),
                 result.median_ms, json.dumps(result.per_process_ms), json.dumps(result.measured_at),
                 json.dumps(d), time.time(), result.reference_id or ""))

    def history(self, arch_id: str, target: Target, reference: str | None = None) -> list[LatencyResult]:
        """Every stored measurement of this pair (of one reference, or all), oldest first."""
        query = "SELECT result FROM measurements WHERE arch_id = ? AND fingerprint = ?"
        args: tuple[str, ...] = (arch_id, target.fingerprint)
        if reference is not None:
            query, args = query + " AND reference = ?", (*args, reference)
        with closing(self._connect()) as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [LatencyResult.from_dict(json.loads(r[0])) for r in rows]

    def get_reference(self, arch_id: str, target: Target) -> ReferenceLatency | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT result FROM reference_latency WHERE arch_id = ? AND fingerprint = ? "
                             "ORDER BY id DESC LIMIT 1", (arch_id, target.fingerprint)).fetchone()
        return ReferenceLatency.from_dict(json.loads(row[0])) if row is not None else None

    def put_reference(self, ref: ReferenceLatency) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO reference_latency (arch_id, fingerprint, name, ms, result, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (ref.arch_id, ref.target.fingerprint, ref.name, ref.ms,
                                                     json.dumps(ref.to_dict()), time.time()))

    def __len__(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])


class Default:
    """The marker for "the default latency cache" (a class, so it survives pickling for Ray)."""


DEFAULT: Any = Default()


def resolve_cache(cache: Any) -> LatencyCache | None:
    """`DEFAULT` -> the cache in $MNAS_CACHE_DIR; None or a `LatencyCache` as given."""
    return LatencyCache() if isinstance(cache, Default) else cache
