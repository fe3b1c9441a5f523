"""Salvaging a damaged run store: `salvage` reads every row SQLite can still read from a copy of
the file, leaving it untouched; `recover_store` writes what was read into a new run (the
`mnas store check|recover` commands). The live store, which refuses a damaged file in one line,
is `mnas.search.store`.

`mnas store check` calls a store damaged whenever a reader (`mnas report`, `mnas best`,
`mnas search --resume`) would refuse it, because it runs the readers' own validation on every row
it reads: `row_to_trial` on each trial, `row_to_rung` on each rung, `parse_config` on the stored
config, `load_state` on the strategy state and the stored config's strategy loading it, as a resume
does, and the readers' schema versions. What it finds is kept
per kind (`Salvage.refused`: the first problem of each kind, naming the trial or rung row).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas.errors import UserError
from mnas.paths import new_dir, writable_dir
from mnas.search.config import SearchConfig, parse_config
from mnas.search.store import (
    DB_NAME,
    READABLE_SCHEMAS,
    SCHEMA_VERSION,
    Store,
    inspect_file,
    load_state,
    row_to_rung,
    row_to_trial,
)
from mnas.space import SearchSpace
from mnas.strategies import make_strategy
from mnas.tempdirs import building_dir, private_tempdir

#: How far past the last id a salvage looks for trials when a scan of the table breaks off.
PROBE_PAST_END = 1000
#: Missing ids a salvage lists by number (the rest are only counted).
MAX_LISTED_GAPS = 1000
META_KEYS = ("schema_version", "config", "created_at", "mnas_version", "config_path", "elapsed_s")
#: The kinds of problem a reader refuses, in the order `mnas store check` names them.
REFUSAL_KINDS = ("schema", "meta", "config", "trials", "rungs", "state")


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
    config: SearchConfig | None = None  # the stored config, parsed, when the readers accept it
    checkpoint: dict[str, Any] | None = None
    state: dict[str, Any] | None = None  # the strategy state, when it loads as the resume loads it
    rungs: list[dict[str, Any]] = field(default_factory=list)  # readable, valid rungs rows, by seq
    rungs_whole: bool = True  # every rungs row was read and is valid
    #: What a reader of the store would refuse, by kind (REFUSAL_KINDS): the first problem of each.
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def damaged(self) -> bool:
        """The file is damaged, or a reader would refuse something in it."""
        return bool(self.problems or self.refused)

    @property
    def newer(self) -> bool:
        """Written by a newer mnas (a store schema this one does not know)."""
        version = self.meta.get("schema_version")
        return isinstance(version, int) and version > SCHEMA_VERSION

    def reasons(self) -> list[str]:
        """Why it is damaged: the file's first problem, then the first of each kind a reader refuses."""
        return self.problems[:1] + [self.refused[k] for k in REFUSAL_KINDS if k in self.refused]

    def refuse(self, kind: str, problem: str) -> None:
        self.refused.setdefault(kind, problem)

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
        config = self.meta.get("config")
        text += "; config " + ("LOST" if not isinstance(config, dict) else "INVALID" if "config" in self.refused
                               else "readable")
        text += "; strategy state " + ("readable" if self.state is not None else "lost")
        return text


def salvage(path: str | Path, meta_check: Callable[[Salvage], None] | None = None) -> Salvage:
    """Read every row SQLite can still read from the store at `path`, leaving the file untouched,
    and validate what was read as the store's readers do (`Salvage.refused`).

    Works on a copy (with its -wal, so committed transactions not yet checkpointed count) in a
    private temporary folder (`mnas.tempdirs`: removed even after a SIGKILL, at the next start).
    Trials are read row by row through SQLite: a scan of the table from each end, then a lookup of
    every id in between and past the end, so one bad page loses only the rows on it. (The sqlite3
    shell's `.recover` would also read pages the b-tree no longer reaches, but Debian 12's build
    lacks the sqlite_dbpage table it needs and fails.) A file whose header is destroyed cannot be
    opened by SQLite at all; nothing is read from it. `meta_check(out)` runs once the meta table is
    read, before the trials are: a caller's refusal (UserError) costs no row scan.
    """
    path = Path(path)
    out = Salvage(path, inspect_file(path))
    with private_tempdir("salvage") as tmp:
        copy = tmp / DB_NAME
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
            out.meta = _salvage_meta(conn, out)
            _check_meta(out)
            if meta_check is not None:
                meta_check(out)
            out.rows, out.unreadable, out.gaps, out.gap_count = _salvage_trials(conn, out)
            out.rungs, out.rungs_whole = _salvage_rungs(conn, out)
            out.checkpoint = _try_row(conn, "SELECT step, phase, state, saved_at FROM checkpoint WHERE id = 1")
    out.state = _load_state(out)
    return out


def _check_meta(out: Salvage) -> None:
    """The schema and the config, validated as `Store.open` and the readers' `parse_config` do."""
    version = out.meta.get("schema_version")
    if version not in READABLE_SCHEMAS:
        readable = ", ".join(map(str, READABLE_SCHEMAS))
        out.refuse("schema", "no readable schema_version in the meta table" if version is None else
                   f"store schema {version!r}{' (from a newer mnas)' if out.newer else ''}; "
                   f"this mnas reads schemas {readable}")
    config = out.meta.get("config")
    if not isinstance(config, dict):
        if out.refused.get("meta", "").startswith("meta 'config'"):
            return  # its value is not JSON: said as a "meta" problem
        out.refuse("config", "no readable config in the meta table")
        return
    try:
        out.config = parse_config(config, source=f"{out.path} (stored config)")
    except UserError as exc:
        out.refuse("config", str(exc))


def _load_state(out: Salvage) -> dict[str, Any] | None:
    """The strategy state as a resume loads it (None, and refused, when it does not load)."""
    if out.checkpoint is None:
        return None
    try:
        state = load_state(bytes(out.checkpoint["state"]))
    except (UserError, TypeError, ValueError) as exc:
        out.refuse("state", f"the strategy state does not load: {exc}")
        return None
    _check_state_fits(out, state)
    return state


def _check_state_fits(out: Salvage, state: dict[str, Any]) -> None:
    """The state loads into the strategy the stored config names, as a resume does. Where the
    config or its space cannot be loaded here (said elsewhere, or a space file moved), nothing is
    judged: that is not damage of the store."""
    config = out.config
    if config is None:
        return
    try:
        strategy = make_strategy(config.strategy.name, SearchSpace.load(config.space), config.seed,
                                 config.strategy.knobs)
    except (UserError, OSError, TypeError, ValueError):
        return
    try:
        strategy.load_state_dict(state)
    except (UserError, TypeError, ValueError, KeyError) as exc:
        out.refuse("state", f"the strategy state does not fit the {config.strategy.name} strategy: {exc}")


def _try_row(conn: sqlite3.Connection, query: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
    try:
        row = conn.execute(query, params).fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else dict(row)


def _salvage_meta(conn: sqlite3.Connection, out: Salvage) -> dict[str, Any]:
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
            out.refuse("meta", f"meta {key!r} is not JSON")  # Store.get_meta refuses it
    return meta


def _scan_ids(conn: sqlite3.Connection, order: str, table: str = "trials", key: str = "trial_id") -> list[int]:
    """Row ids from a scan of the table itself (not an index), up to the first bad page."""
    ids: list[int] = []
    try:
        for row in conn.execute(f"SELECT {key} FROM {table} NOT INDEXED ORDER BY {key} {order}"):
            ids.append(int(row[0]))
    except sqlite3.DatabaseError:
        pass
    return ids


def _salvage_trials(conn: sqlite3.Connection, out: Salvage) -> tuple[list[dict[str, Any]], list[int], list[int], int]:
    """Readable rows, ids a scan saw but that do not read back, ids missing in between (the first
    MAX_LISTED_GAPS of them) and how many are missing. A row SQLite reads but the store's readers
    refuse (`row_to_trial`) counts as unreadable, and the first is `out.refused["trials"]`.

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
            row_to_trial(row)  # exactly what every reader of the store runs on a row
        except (UserError, ValueError, TypeError, KeyError) as exc:
            failed.add(trial_id)
            out.refuse("trials", f"trial {trial_id}: {exc}")
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
    if len(failed) > 1:
        out.refused["trials"] += f" (and {len(failed) - 1} more trial row(s))"
    return [rows[i] for i in sorted(rows)], unreadable, gaps, gap_count


def _salvage_rungs(conn: sqlite3.Connection, out: Salvage) -> tuple[list[dict[str, Any]], bool]:
    """The rungs rows that read and that the readers accept (`row_to_rung`), and whether that is
    all of them. A store without the table (schema 1 and 2) has none, whole."""
    if _try_row(conn, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'rungs'") is None:
        return [], True
    try:
        found = [dict(r) for r in conn.execute("SELECT * FROM rungs ORDER BY seq")]
        whole = True
    except sqlite3.DatabaseError:  # a bad page: what the scans from each end reach, row by row
        seqs = set(_scan_ids(conn, "ASC", "rungs", "seq")) | set(_scan_ids(conn, "DESC", "rungs", "seq"))
        rows = (_try_row(conn, "SELECT * FROM rungs WHERE seq = ?", (seq,)) for seq in sorted(seqs))
        found, whole = [r for r in rows if r is not None], False
    valid = []
    for row in found:
        try:
            row_to_rung(row)
        except (UserError, TypeError, KeyError) as exc:
            out.refuse("rungs", str(exc))
            whole = False
            continue
        valid.append(row)
    return valid, whole


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

    The damaged file is never written to. The new store gets the trials and rung rows the readers
    accept, every column as stored, the config (or `config` when the stored one is unreadable or
    no longer validates; a `config` of another space than the stored one is refused), and the
    strategy state only when it matches the salvaged trials exactly (then the new run can be
    resumed); otherwise `mnas report` and `mnas best` read it but `--resume` refuses it. The run is
    built in a hidden folder beside `out_dir` and renamed into place when complete, so a killed
    recovery leaves no `out_dir` that looks whole. A store from a newer mnas is refused.
    """
    run_dir = Path(run_dir)
    source = run_dir / DB_NAME
    if not source.is_file():
        raise UserError(f"{run_dir} holds no search run (no {DB_NAME})")
    target = _new_run_folder(run_dir, out_dir)

    def refuse_early(found: Salvage) -> None:  # once the meta table is read, before the trials are
        if found.newer:
            raise UserError(f"{source} has store schema {found.meta['schema_version']}, from a newer mnas (this one "
                            f"reads schemas {', '.join(map(str, READABLE_SCHEMAS))}); recover it with the mnas "
                            "that wrote it")
        stored = _valid_config(found)
        if config is not None and stored is not None and not _same_space(config.get("space"), stored.get("space")):
            raise UserError(f"--config searches space {config.get('space')!r} but the run in {source} searched "
                            f"{stored.get('space')!r}; its stored config is readable, so leave --config out "
                            "(or give the YAML the run used)")

    found = salvage(source, refuse_early)
    if not found.rows:
        why = found.reasons()[0] if found.damaged else "the trials table is empty"
        raise UserError(f"no trial could be read from {source} ({why}); nothing was written")
    stored = _valid_config(found)
    if stored is None:
        if config is None:
            why = found.refused.get("config") or found.refused.get("meta", "it is unreadable")
            raise UserError(f"the run's config in {source} is unreadable ({why}; {len(found.rows)} trial(s) are "
                            "readable): give the search YAML it ran with: --config FILE.yaml")
        stored = config
    meta = {k: v for k, v in found.meta.items()
            if k not in ("config", "schema_version", "created_at", "recovered_from")}
    keep_state = _state_matches(found) and found.meta.get("schema_version") == SCHEMA_VERSION
    kept = {r["trial_id"] for r in found.rows}
    rungs = [r for r in found.rungs if r["trial_id"] in kept]
    writable_dir(target.parent, "the folder of --out")
    with building_dir(target, "--out") as partial, \
            Store.create(partial, stored, recovered_from=str(source.resolve()), **meta) as store:
        store._insert_rows(found.rows)
        with store._tx() as conn:
            conn.executemany("INSERT INTO rungs (seq, trial_id, rung, budget, accuracy, reward, seconds, promoted) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [(r["seq"], r["trial_id"], r["rung"], r["budget"], r["accuracy"], r["reward"],
                               r["seconds"], r["promoted"]) for r in rungs])
            if keep_state and found.checkpoint is not None:
                cp = found.checkpoint
                store._save_checkpoint(int(cp["step"]), str(cp["phase"]), bytes(cp["state"]))
    return Recovery(source, target, found, keep_state)


def _new_run_folder(run_dir: Path, out_dir: str | Path | None) -> Path:
    """Where the recovered run goes, checked before anything is read: a new folder (or an empty
    one), not a link, not the damaged run, in a folder this process may write."""
    if out_dir is not None and str(out_dir) == "":  # before Path("") is judged as the current folder
        raise UserError("--out is empty; give a new folder name")
    target = (Path(out_dir).expanduser() if out_dir is not None
              else run_dir.resolve().with_name(run_dir.resolve().name + "-recovered"))
    if target.is_symlink():
        raise UserError(f"--out {target} is a symbolic link; mnas does not write through links: choose a new folder")
    if target.resolve() == run_dir.resolve():
        raise UserError("--out must be a new run folder, not the damaged run itself")
    if (target / DB_NAME).exists():
        raise UserError(f"{target} already holds a run; choose another --out")
    return new_dir(target, "--out", create=False)  # a folder, new or empty, in a folder this process may write


def _same_space(given: Any, stored: Any) -> bool:
    """Whether two configs' `space` entries name the same space (a name, an alias or a file)."""
    if given == stored:
        return True
    try:
        return SearchSpace.load(given).to_dict() == SearchSpace.load(stored).to_dict()
    except (UserError, OSError, ValueError, TypeError):
        return False  # one of them no longer loads: not known to be the same


def _valid_config(found: Salvage) -> dict[str, Any] | None:
    """The stored config when the readers would accept it (it validates), else None."""
    return found.meta["config"] if found.config is not None else None


def _state_matches(found: Salvage) -> bool:
    """Whether the salvaged strategy state belongs to exactly the salvaged trials and rungs (the
    run's reference networks, ids < 0, are never asked or told to the strategy)."""
    if found.state is None or found.unreadable or found.gaps or not found.rungs_whole:
        return False
    asked = [r for r in found.rows if r["trial_id"] >= 0]
    if [r["trial_id"] for r in asked] != list(range(len(asked))):
        return False
    if not {r["trial_id"] for r in found.rungs} <= {r["trial_id"] for r in found.rows}:
        return False
    told = sum(1 for r in asked if r.get("told"))
    return found.state.get("asked") == len(asked) and found.state.get("told") == told
