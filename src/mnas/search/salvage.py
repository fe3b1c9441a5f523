"""Salvaging a damaged run store: `salvage` reads every row SQLite can still read from a copy of
the file, leaving it untouched; `recover_store` writes what was read into a new run (the
`mnas store check|recover` commands). The live store, which refuses a damaged file in one line,
is `mnas.search.store`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas.errors import UserError
from mnas.search.store import DB_NAME, SCHEMA_VERSION, Store, inspect_file, load_state, row_to_trial
from mnas.search.trial import STATUSES

#: How far past the last id a salvage looks for trials when a scan of the table breaks off.
PROBE_PAST_END = 1000
#: Missing ids a salvage lists by number (the rest are only counted).
MAX_LISTED_GAPS = 1000
META_KEYS = ("schema_version", "config", "created_at", "mnas_version", "config_path", "elapsed_s")


@dataclass
class Salvage:
    """What SQLite could still read from a run store, and what it could not."""

    path: Path
    problems: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # readable trials rows, by id
    unreadable: list[int] = field(default_factory=list)  # ids seen in a scan but not readable
    gaps: list[int] = field(default_factory=list)  # ids missing between readable ones (the first MAX_LISTED_GAPS)
    gap_count: int = 0  # how many ids are missing between readable ones (listed in `gaps` or not)
    checkpoint: dict[str, Any] | None = None

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    def summary(self) -> str:
        ids = [r["trial_id"] for r in self.rows]
        lost = sorted(set(self.unreadable) | set(self.gaps))
        lost_count = len(self.unreadable) + max(self.gap_count, len(self.gaps))
        text = f"{len(ids)} trial(s) readable"
        if ids:
            text += f" (ids {min(ids)}..{max(ids)})"
        if lost_count:
            shown = ", ".join(map(str, lost[:10])) + (", ..." if lost_count > 10 else "")
            text += f", {lost_count:,} lost ({shown})"
        text += "; config " + ("readable" if isinstance(self.meta.get("config"), dict) else "LOST")
        text += "; strategy state " + ("readable" if self.checkpoint is not None else "lost")
        return text


def salvage(path: str | Path) -> Salvage:
    """Read every row SQLite can still read from the store at `path`, leaving the file untouched.

    Works on a copy (with its -wal, so committed transactions not yet checkpointed count) in a
    temporary folder. Trials are read row by row through SQLite: a scan of the table from each
    end, then a lookup of every id in between and past the end, so one bad page loses only the
    rows on it. (The sqlite3 shell's `.recover` would also read pages the b-tree no longer
    reaches, but Debian 12's build lacks the sqlite_dbpage table it needs and fails.) A file whose
    header is destroyed cannot be opened by SQLite at all; nothing is read from it.
    """
    path = Path(path)
    out = Salvage(path, inspect_file(path))
    with tempfile.TemporaryDirectory(prefix="mnas-salvage-") as tmp:
        copy = Path(tmp) / DB_NAME
        shutil.copyfile(path, copy)
        wal = Path(f"{path}-wal")
        if wal.is_file():
            shutil.copyfile(wal, Path(f"{copy}-wal"))
        try:
            conn = sqlite3.connect(copy, timeout=5.0)
        except sqlite3.DatabaseError as exc:
            out.problems.append(str(exc))
            return out
        with closing(conn):
            conn.row_factory = sqlite3.Row
            # SQLite's own leniency switches: read a file shorter than its header says (a
            # truncated store) instead of refusing it whole, and check every cell's bounds.
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute("PRAGMA cell_size_check = ON")
            out.meta = _salvage_meta(conn)
            out.rows, out.unreadable, out.gaps, out.gap_count = _salvage_trials(conn)
            out.checkpoint = _try_row(conn, "SELECT step, phase, state, saved_at FROM checkpoint WHERE id = 1")
    return out


def _try_row(conn: sqlite3.Connection, query: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
    try:
        row = conn.execute(query, params).fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else dict(row)


def _salvage_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    raw: dict[str, str] = {}
    try:
        raw = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError:
        for key in META_KEYS:
            row = _try_row(conn, "SELECT value FROM meta WHERE key = ?", (key,))
            if row is not None:
                raw[key] = row["value"]
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            continue
    return meta


def _scan_ids(conn: sqlite3.Connection, order: str) -> list[int]:
    """Trial ids from a scan of the table itself (not an index), up to the first bad page."""
    ids: list[int] = []
    try:
        for row in conn.execute(f"SELECT trial_id FROM trials NOT INDEXED ORDER BY trial_id {order}"):
            ids.append(int(row[0]))
    except sqlite3.DatabaseError:
        pass
    return ids


def _salvage_trials(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[int], list[int], int]:
    """Readable rows, ids a scan saw but that do not read back, ids missing in between (the first
    MAX_LISTED_GAPS of them) and how many are missing.

    Every id from the scans is looked up, and so is every id from 0 on until PROBE_PAST_END ids
    in a row past the last readable one are missing (a scan stops at the first bad page, so rows
    behind it are found by lookup). The work is bounded by the number of rows, never by an id's
    value: a store holding trial id 10**12 costs no more than one holding id 12.
    """
    scanned = set(_scan_ids(conn, "ASC")) | set(_scan_ids(conn, "DESC"))
    rows: dict[int, dict[str, Any]] = {}
    failed: set[int] = set()

    def read(trial_id: int) -> None:
        row = _try_row(conn, "SELECT * FROM trials WHERE trial_id = ?", (trial_id,))
        if row is None:
            return
        try:
            row_to_trial(row)  # the row must read back as a trial (arch and tokens parse)
            if row["status"] not in STATUSES:
                raise ValueError(row["status"])
        except (ValueError, TypeError, KeyError, UserError):
            failed.add(trial_id)
            return
        rows[trial_id] = row

    # Ids are handed out 0, 1, 2, ...: probing twice as many ids as there are rows, plus a margin,
    # covers every real store; far-apart ids (a crafted store) are looked up only as scanned.
    probe, last = 0, -1
    while probe <= last + PROBE_PAST_END and probe < 2 * (len(scanned) + len(rows)) + 10 * PROBE_PAST_END:
        read(probe)
        if probe in rows:
            last = probe
        probe += 1
    for trial_id in sorted(i for i in scanned if not 0 <= i < probe):
        read(trial_id)
    top = max(rows, default=-1)
    unreadable = sorted(i for i in (scanned | failed) - set(rows) if 0 <= i <= top + PROBE_PAST_END)
    gaps, gap_count = _missing_ids(top, set(rows) | set(unreadable))
    return [rows[i] for i in sorted(rows)], unreadable, gaps, gap_count


def _missing_ids(top: int, known: set[int]) -> tuple[list[int], int]:
    """Ids in 0..top not in `known`: the first MAX_LISTED_GAPS of them, and how many there are,
    in time and memory proportional to len(known), not to `top`."""
    listed: list[int] = []
    count, expect = 0, 0
    for i in sorted(k for k in known if 0 <= k <= top) + [top + 1]:
        if i > expect:
            count += i - expect
            listed.extend(range(expect, min(i, expect + MAX_LISTED_GAPS - len(listed))))
        expect = i + 1
    return listed, count


@dataclass(frozen=True)
class Recovery:
    """The outcome of `recover_store`."""

    source: Path
    out_dir: Path
    salvage: Salvage
    resumable: bool  # the strategy state matched every trial and was kept


def recover_store(run_dir: str | Path, out_dir: str | Path | None = None,
                  config: dict[str, Any] | None = None) -> Recovery:
    """Salvage every readable trial of `run_dir`'s store into a new run in `out_dir`.

    The damaged file is never written to. The new store gets the readable trials with every
    column as stored, the config (or `config` when the stored one is unreadable), and the strategy
    state only when it matches the salvaged trials exactly (then the new run can be resumed);
    otherwise `mnas report` and `mnas best` read it but `--resume` refuses it.
    """
    run_dir = Path(run_dir)
    source = run_dir / DB_NAME
    if not source.is_file():
        raise UserError(f"{run_dir} holds no search run (no {DB_NAME})")
    target = Path(out_dir) if out_dir is not None else run_dir.with_name(run_dir.name + "-recovered")
    if target.resolve() == run_dir.resolve():
        raise UserError("--out must be a new run folder, not the damaged run itself")
    if (target / DB_NAME).exists():
        raise UserError(f"{target} already holds a run; choose another --out")
    parent = target if target.exists() else target.parent
    if not os.access(parent if parent.exists() else Path.cwd(), os.W_OK):
        raise UserError(f"cannot write {target}: {parent} is not writable")
    found = salvage(source)
    if not found.rows:
        why = found.problems[0] if found.problems else "the trials table is empty"
        raise UserError(f"no trial could be read from {source} ({why}); nothing was written")
    stored = found.meta.get("config")
    if not isinstance(stored, dict):
        if config is None:
            raise UserError(f"the run's config in {source} is unreadable ({len(found.rows)} trial(s) are); "
                            "give the search YAML it ran with: --config FILE.yaml")
        stored = config
    meta = {k: v for k, v in found.meta.items() if k not in ("config", "schema_version", "created_at")}
    keep_state = _state_matches(found) and found.meta.get("schema_version") == SCHEMA_VERSION
    with Store.create(target, stored, recovered_from=str(source.resolve()), **meta) as store:
        store._insert_rows(found.rows)
        if keep_state and found.checkpoint is not None:
            cp = found.checkpoint
            with store._tx():
                store._save_checkpoint(int(cp["step"]), str(cp["phase"]), bytes(cp["state"]))
    return Recovery(source, target, found, keep_state)


def _state_matches(found: Salvage) -> bool:
    """Whether the salvaged strategy state belongs to exactly the salvaged trials."""
    if found.checkpoint is None or found.unreadable or found.gaps:
        return False
    ids = [r["trial_id"] for r in found.rows]
    if ids != list(range(len(ids))):
        return False
    try:
        state = load_state(bytes(found.checkpoint["state"]))
    except UserError:
        return False
    told = sum(1 for r in found.rows if r.get("told"))
    return state.get("asked") == len(ids) and state.get("told") == told
