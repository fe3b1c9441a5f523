"""Every latency measurement, stored in SQLite by architecture id x target fingerprint.

Raw per-process medians and timestamps are kept, so a summary can be recomputed and repeatability
studied later. One short-lived connection per call keeps it safe for many worker processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from mnas.errors import UserError
from mnas.latency.result import LatencyResult
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
"""


def cache_dir() -> Path:
    """$MNAS_CACHE_DIR, else ~/.cache/mnas."""
    return Path(os.environ.get("MNAS_CACHE_DIR") or Path.home() / ".cache" / "mnas")


class LatencyCache:
    """get / put measurements; `models_dir` keeps exported model files for re-measuring."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "latency.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open latency cache {self.path}: {exc}; set MNAS_CACHE_DIR "
                            "to a writable folder") from None

    @property
    def models_dir(self) -> Path:
        return self.path.parent / "models"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, arch_id: str, target: Target) -> LatencyResult | None:
        """The newest stored result for this architecture on this target, or None."""
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT result FROM measurements WHERE arch_id = ? AND fingerprint = ? "
                "ORDER BY id DESC LIMIT 1", (arch_id, target.fingerprint)).fetchone()
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
                "measured_at, result, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (arch_id, result.target.fingerprint, json.dumps(result.target.to_dict(), sort_keys=True),
                 result.median_ms, json.dumps(result.per_process_ms), json.dumps(result.measured_at),
                 json.dumps(d), time.time()))

    def history(self, arch_id: str, target: Target) -> list[LatencyResult]:
        """Every stored measurement of this pair, oldest first (repeatability studies)."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT result FROM measurements WHERE arch_id = ? AND fingerprint = ? "
                              "ORDER BY id", (arch_id, target.fingerprint)).fetchall()
        return [LatencyResult.from_dict(json.loads(r[0])) for r in rows]

    def __len__(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
