"""Damaged run stores: real SQLite files, damaged the ways disks and people damage them.

Every command that reads a store (`mnas search --resume`, `mnas report`, `mnas best`) must say in
one line that the file is damaged and leave it exactly as it was; `mnas store check` says what is
readable and `mnas store recover` salvages every readable trial into a new run that reports work on.
`mnas store check` calls damaged whatever a reader refuses (it runs their validation on every row),
and neither a recovery nor a check killed with SIGKILL leaves anything that looks whole or lasts.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from mnas.cli import app as cli
from mnas.cli import store as cli_store
from mnas.errors import UserError
from mnas.search.config import parse_config
from mnas.search.loop import make_reward, make_search_strategy
from mnas.search.salvage import recover_store, salvage
from mnas.search.store import DB_NAME, DamagedStoreError, Store, dump_state
from mnas.search.trial import Trial
from mnas.space import SearchSpace

CONFIG = {"space": "mnasnet_cifar", "reward": {"target_ms": 5.0, "preset": "hard"},
          "data": {"dataset": "cifar10_subset"},
          "latency": {"backend": "onnxruntime", "threads": 1, "resolution": 32, "num_classes": 10, "processes": 1}}
TRIALS = 60
PAGE = 4096


def _make_run(run_dir: Path) -> list[Trial]:
    """A finished run of TRIALS trials in 10 steps, its strategy state saved with them."""
    config = parse_config(CONFIG)
    reward = make_reward(config)
    space = SearchSpace.cifar()
    rng = random.Random(0)
    # the config's strategy asks and is told, as in a search: its state matches the trials
    strategy = make_search_strategy(config, space)
    with Store.create(run_dir, config.model_dump(mode="json"), mnas_version="test") as store:
        for step in range(10):
            batch = [Trial(p.trial_id, p.arch, strategy=strategy.name, tokens=list(p.tokens), logp=p.logp)
                     for p in strategy.ask(TRIALS // 10)]
            store.add_trials(batch, dump_state(strategy.state_dict()), step)
            for t in batch:
                if t.trial_id % 7 == 3:
                    t.status, t.error = "failed", "training: diverged"
                else:
                    t.status, t.accuracy, t.latency_ms = "done", 0.3 + rng.random() / 2, 2.0 + 6 * rng.random()
                    t.reward = reward(t.accuracy, t.latency_ms)
                t.seconds, t.finished_at = 1.0, 1000.0 + t.trial_id
                store.save_result(t)
            strategy.tell(batch)
            store.commit_tell([t.trial_id for t in batch], dump_state(strategy.state_dict()), step)
        return store.trials()


def _leaf_page(db: Path, table: str, index: int) -> int:
    with sqlite3.connect(db) as conn:
        pages = [r[0] for r in conn.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                            "ORDER BY pageno", (table,))]
    return pages[index]


def _rows_on_leaves(db: Path, table: str, keep: Callable[[int], bool]) -> int:
    """How many rows of `table` sit on leaf pages whose number passes `keep` (SQLite's dbstat)."""
    with sqlite3.connect(db) as conn:
        assert not conn.execute("SELECT COUNT(*) FROM dbstat WHERE name = ? AND pagetype = 'overflow'",
                                (table,)).fetchone()[0]
        leaves = conn.execute("SELECT pageno, ncell FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (table,)).fetchall()
    return sum(ncell for page, ncell in leaves if keep(page))


def _overwrite_page(data: bytes, page: int, seed: int) -> bytes:
    garbage = random.Random(seed).randbytes(PAGE)
    start = (page - 1) * PAGE
    return data[:start] + garbage + data[start + PAGE:]


DAMAGE: dict[str, Callable[[bytes, Path], bytes]] = {
    "truncated": lambda data, db: data[: len(data) // 2],
    "zeroed": lambda data, db: bytes(len(data)),
    "garbage-header": lambda data, db: random.Random(1).randbytes(100) + data[100:],
    "garbage-middle": lambda data, db: _overwrite_page(data, _leaf_page(db, "trials", 10), 2),
    "garbage-meta": lambda data, db: _overwrite_page(data, _leaf_page(db, "meta", 0), 3),
    "empty": lambda data, db: b"",
}
#: Which damage leaves trials that SQLite can still read (the rest destroy the header or everything).
SALVAGEABLE = {"truncated", "garbage-middle", "garbage-meta"}


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Trial]]:
    run_dir = tmp_path_factory.mktemp("intact") / "run"
    return run_dir, _make_run(run_dir)


def _damaged(intact: tuple[Path, list[Trial]], tmp_path: Path, kind: str) -> Path:
    source = intact[0] / DB_NAME
    run_dir = tmp_path / kind
    run_dir.mkdir()
    (run_dir / DB_NAME).write_bytes(DAMAGE[kind](source.read_bytes(), source))
    return run_dir


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _mnas(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`mnas ARGV` in this process, as the console script runs it: (exit code, stdout, stderr)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _store_cli(argv: list[str]) -> tuple[int, str]:
    app = typer.Typer()
    cli_store.register(app)

    @app.callback()
    def _root() -> None:  # a group, so `store` is a subcommand as under `mnas`
        pass

    result = CliRunner().invoke(app, argv)
    return result.exit_code, result.output


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_store_is_one_line_and_left_untouched(intact, tmp_path, capsys, kind: str) -> None:
    run_dir = _damaged(intact, tmp_path, kind)
    before = _snapshot(run_dir)
    with pytest.raises(DamagedStoreError, match="is damaged"):
        Store.open(run_dir)
    for argv in (["report", str(run_dir), "--no-zoo"], ["best", str(run_dir)], ["search", "--resume", str(run_dir), "-q"]):
        code, out, err = _mnas(argv, capsys)
        assert code == 2, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "is damaged" in lines[0] and f"mnas store recover {run_dir}" in lines[0], err
        assert "Traceback" not in err + out
        assert _snapshot(run_dir) == before  # not a byte changed, no file added


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_check_and_recover_salvage_every_readable_trial(intact, tmp_path, capsys, kind: str) -> None:
    run_dir = _damaged(intact, tmp_path, kind)
    before = _snapshot(run_dir)
    code, out = _store_cli(["store", "check", str(run_dir)])
    assert code == 1 and "DAMAGED" in out and len(out.strip().splitlines()) == 1, out
    original = {t.trial_id: t for t in intact[1]}
    new_run = tmp_path / "saved"
    argv = ["store", "recover", str(run_dir), "--out", str(new_run)]
    if kind == "garbage-meta":  # the run's config is gone with its page: the recovery asks for it
        code, out = _store_cli(argv)
        assert code != 0 and not new_run.exists()
        with pytest.raises(UserError, match="config .* is unreadable.*--config FILE.yaml"):
            recover_store(run_dir, new_run)
        (tmp_path / "search.yaml").write_text(yaml.safe_dump(CONFIG))
        argv += ["--config", str(tmp_path / "search.yaml")]
    code, out = _store_cli(argv)
    assert _snapshot(run_dir) == before
    if kind not in SALVAGEABLE:
        assert code != 0 and not (new_run / DB_NAME).exists()
        with pytest.raises(UserError, match="no trial could be read"):
            recover_store(run_dir, new_run)
        return
    assert code == 0, out
    assert "recovered into" in out and "can be reported but not resumed" in out
    with Store.open(new_run) as store:
        recovered = store.trials()
        assert store.get_meta("recovered_from") == str((run_dir / DB_NAME).resolve())
        assert store.checkpoint() is None  # the state no longer matches the trials: not kept
    # Every trial on an intact page is salvaged (SQLite's dbstat on the original says which
    # leaf page holds how many rows), and only those.
    source = intact[0] / DB_NAME
    if kind == "truncated":
        pages = source.stat().st_size // 2 // PAGE
        expected = _rows_on_leaves(source, "trials", lambda page: page <= pages)
    elif kind == "garbage-middle":
        damaged = _leaf_page(source, "trials", 10)
        expected = _rows_on_leaves(source, "trials", lambda page: page != damaged)
    else:
        expected = TRIALS
    assert len(recovered) == expected and expected > 0
    found = salvage(run_dir / DB_NAME)
    assert len(recovered) + len(set(found.unreadable) | set(found.gaps)) <= TRIALS
    for trial in recovered:  # every salvaged trial is exactly what was stored
        assert trial == original[trial.trial_id]
    # Reports and picks work on the salvaged run; resuming it is refused in one line.
    code, out, err = _mnas(["best", str(new_run)], capsys)
    assert code == 0 and '"trial_id"' in out
    code, out, err = _mnas(["report", str(new_run), "--no-zoo"], capsys)
    assert code == 0 and (new_run / "report.md").is_file()
    code, out, err = _mnas(["search", "--resume", str(new_run), "-q"], capsys)
    assert code == 2 and "cannot be resumed" in err and len(err.strip().splitlines()) == 1
    code, out = _store_cli(["store", "recover", str(run_dir), "--out", str(new_run)])
    assert code != 0  # an existing run is never overwritten


def test_recovery_of_an_intact_store_is_whole_and_resumable(intact, tmp_path) -> None:
    run_dir, trials = intact
    code, out = _store_cli(["store", "check", str(run_dir)])
    assert code == 0 and "intact" in out and f"{TRIALS} trial(s) readable" in out
    result = recover_store(run_dir, tmp_path / "copy")
    assert result.resumable and result.out_dir == tmp_path / "copy"
    with Store.open(tmp_path / "copy") as store, Store.open(run_dir) as source:
        assert store.trials() == trials
        assert store.checkpoint().state == source.checkpoint().state
        assert store.config == source.config
    with pytest.raises(UserError, match="not the damaged run itself"):
        recover_store(run_dir, run_dir)


# -- what a reader refuses, the check calls damaged ------------------------------------------------
def _copy(intact: tuple[Path, list[Trial]], tmp_path: Path, name: str, *sql: str) -> Path:
    """A copy of the intact run, then `sql` run on it with plain sqlite3 (what a person or a bug may do)."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / DB_NAME).write_bytes((intact[0] / DB_NAME).read_bytes())
    with closing(sqlite3.connect(run_dir / DB_NAME, isolation_level=None)) as conn:
        for statement in sql:
            conn.execute(statement)
    return run_dir


def _one_line(code: int, out: str, err: str, expect_code: int) -> str:
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert code == expect_code and len(lines) == 1 and "Traceback" not in out + err, (code, out, err)
    return lines[0]


#: Edits a reader refuses: (the SQL, the command that refuses it, what `store check` says).
REFUSED = {
    "arch": (["UPDATE trials SET arch = '{\"blocks\": 3}' WHERE trial_id = 5"], "report",
             "trial 5: not an architecture description"),
    "arch-json": (["UPDATE trials SET arch = '{\"blocks\": [' WHERE trial_id = 5"], "report",
                  "trial 5: malformed architecture JSON"),
    "tokens": (["UPDATE trials SET tokens = 'not json' WHERE trial_id = 5"], "best", "trial 5: tokens 'not json' are not JSON"),
    "accuracy": (["UPDATE trials SET accuracy = 'high' WHERE trial_id = 5"], "report",
                 "trial 5: accuracy is 'high', not a number"),
    "step": (["UPDATE trials SET step = 'x' WHERE trial_id = 7"], "report", "trial 7: step is 'x', not an integer"),
    "status": (["PRAGMA ignore_check_constraints = ON", "UPDATE trials SET status = 'lost' WHERE trial_id = 5"], "best",
               "trial 5: status 'lost' is not one of"),
    "config": (["UPDATE meta SET value = '{\"space\": \"mnasnet_cifar\"}' WHERE key = 'config'"], "report",
               "(stored config): reward"),
    "meta": (["UPDATE meta SET value = '{\"space\": ' WHERE key = 'config'"], "best", "meta 'config' is not JSON"),
    "schema": (["UPDATE meta SET value = '99' WHERE key = 'schema_version'"], "report", "store schema 99 (from a newer mnas)"),
    "rung": (["INSERT INTO rungs (trial_id, rung, budget, accuracy, reward, seconds, promoted) "
              "VALUES (5, 0, 10, 'high', 0.5, 1.0, 1)"], "report", "rung row 1: accuracy is 'high'"),
    "state": (["UPDATE checkpoint SET state = x'00ff00ff'"], "resume", "the strategy state does not load"),
}
READERS = {"report": ["report", "{run}", "--no-zoo"], "best": ["best", "{run}"], "resume": ["search", "--resume", "{run}", "-q"]}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_check_calls_damaged_what_a_reader_refuses(intact, tmp_path, capsys, kind: str) -> None:
    sql, reader, needle = REFUSED[kind]
    run_dir = _copy(intact, tmp_path, kind, *sql)
    argv = [a.format(run=run_dir) for a in READERS[reader]]
    refusal = _one_line(*_mnas(argv, capsys), expect_code=2)
    code, out, err = _mnas(["store", "check", str(run_dir)], capsys)
    line = _one_line(code, out, err, expect_code=1)
    assert "DAMAGED" in line and needle in line, line
    if kind == "schema":  # a newer mnas's store: read it with that one; recover refuses it too
        assert "store schema 99" in refusal and "Read it with the mnas that wrote it" in line
        new_run = tmp_path / "saved"
        refusal = _one_line(*_mnas(["store", "recover", str(run_dir), "--out", str(new_run)], capsys), expect_code=2)
        assert "newer mnas" in refusal and not new_run.exists() and list(tmp_path.iterdir()) == [run_dir]
        return
    assert f"mnas store recover {run_dir}" in line
    assert needle in refusal or (kind == "state" and "strategy state" in refusal), refusal
    assert ("is damaged" in refusal) == (kind not in ("config", "state")), refusal
    # The recovery keeps everything a reader accepts; the check calls it intact and reports read it.
    new_run = tmp_path / "saved"
    argv = ["store", "recover", str(run_dir), "--out", str(new_run)]
    if kind in ("config", "meta"):  # the stored config is gone: the recovery asks for the YAML
        (tmp_path / "search.yaml").write_text(yaml.safe_dump(CONFIG))
        argv += ["--config", str(tmp_path / "search.yaml")]
    code, out, err = _mnas(argv, capsys)
    assert code == 0, err
    code, out, err = _mnas(["store", "check", str(new_run)], capsys)
    assert "intact" in _one_line(code, out, err, expect_code=0)
    code, out, err = _mnas(["report", str(new_run), "--no-zoo"], capsys)
    assert code == 0, err
    with Store.open(new_run) as store:
        lost = 1 if kind in ("arch", "arch-json", "tokens", "accuracy", "step", "status") else 0
        assert len(store.trials()) == TRIALS - lost and store.rungs() == []


def test_recover_refuses_a_config_of_another_space(intact, tmp_path, capsys) -> None:
    run_dir = _copy(intact, tmp_path, "run")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**CONFIG, "space": "mnasnet"}))
    (tmp_path / "alias.yaml").write_text(yaml.safe_dump({**CONFIG, "space": "cifar"}))  # the same space, by alias
    new_run = tmp_path / "saved"
    argv = ["store", "recover", str(run_dir), "--out", str(new_run), "--config"]
    line = _one_line(*_mnas([*argv, str(tmp_path / "other.yaml")], capsys), expect_code=2)
    assert "space 'mnasnet'" in line and "'mnasnet_cifar'" in line and "leave --config out" in line
    assert not new_run.exists()
    code, out, err = _mnas([*argv, str(tmp_path / "alias.yaml")], capsys)
    assert code == 0, err
    with Store.open(new_run) as store:
        assert store.config["space"] == "mnasnet_cifar"  # the stored config, readable, is the one kept


def test_recover_checks_its_output_folder_first(intact, tmp_path, capsys) -> None:
    run_dir = _copy(intact, tmp_path, "run")
    before = _snapshot(run_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for out, needle in (("", "--out was given an empty value"), (str(tmp_path / "busy"), "is not empty"),
                        (str(tmp_path / "a-file"), "is a file"), (str(tmp_path / "link"), "symbolic link"),
                        (str(run_dir), "not the damaged run itself")):
        line = _one_line(*_mnas(["store", "recover", str(run_dir), "--out", out], capsys), expect_code=2)
        assert needle in line, line
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not (tmp_path / "elsewhere").exists()
    assert _snapshot(run_dir) == before
    (tmp_path / "empty").mkdir()  # an empty folder is fine: it becomes the run
    code, out, err = _mnas(["store", "recover", str(run_dir), "--out", str(tmp_path / "empty")], capsys)
    assert code == 0 and (tmp_path / "empty" / DB_NAME).is_file(), err


def test_rungs_are_recovered_with_the_state_they_belong_to(intact, tmp_path) -> None:
    rows = [(t, 0, 10, 0.3 + t / 100, 0.3 + t / 100, 1.0, int(t % 2 == 0)) for t in range(6)]
    run_dir = _copy(intact, tmp_path, "run", *[
        f"INSERT INTO rungs (trial_id, rung, budget, accuracy, reward, seconds, promoted) VALUES {row!r}" for row in rows])
    result = recover_store(run_dir, tmp_path / "saved")
    assert result.resumable
    with Store.open(tmp_path / "saved") as store, Store.open(run_dir) as source:
        assert store.rungs() == source.rungs() and len(store.rungs()) == 6
        assert store.trials() == source.trials()


# -- SIGKILL: a recovery leaves no folder that looks whole, a check no copy that lasts ----------
STALLED = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import mnas.search.salvage as salvage
    import mnas.search.store as store

    marker, where, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def stall(*args, **kwargs):
        marker.write_text("stalled")
        time.sleep(600)

    if where == "salvage":  # the store copied into the temporary folder, its rows not read yet
        salvage._salvage_trials = stall
    else:  # the new run half written
        insert = store.Store._insert_rows

        def stall_after(self, rows):
            insert(self, rows)
            stall()

        store.Store._insert_rows = stall_after
    from mnas.cli.app import main

    main(argv)
""")


def _stalled(where: str, argv: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The real CLI in a subprocess, stopped for good at `where` (then killed by the test)."""
    marker = tmp_path / f"stalled-{where}"
    proc = subprocess.Popen([sys.executable, "-c", STALLED, str(marker), where, *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.time() < deadline, "the stalled command never got there"
        time.sleep(0.05)
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(9)  # SIGKILL: no finally, no handler
    proc.wait(timeout=60)
    if proc.stderr is not None:
        proc.stderr.close()


def test_check_killed_mid_salvage_leaves_a_copy_the_next_start_removes(intact, tmp_path) -> None:
    run_dir = _copy(intact, tmp_path, "run")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    env = {**os.environ, "TMPDIR": str(systmp)}
    proc = _stalled("salvage", ["store", "check", str(run_dir)], tmp_path, env)
    copies = list(systmp.glob(f"mnas-salvage-{proc.pid}-*"))
    assert len(copies) == 1 and (copies[0] / DB_NAME).is_file()
    _kill(proc)
    assert (copies[0] / DB_NAME).is_file()  # SIGKILL ran nothing: the copy is still there
    done = subprocess.run([sys.executable, "-m", "mnas", "store", "check", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "intact" in done.stdout, done.stderr
    assert list(systmp.iterdir()) == []  # the stale copy went, and this check's own too


def test_recover_killed_part_way_leaves_no_run(intact, tmp_path, capsys) -> None:
    run_dir = _copy(intact, tmp_path, "run")
    new_run = tmp_path / "saved"
    proc = _stalled("insert", ["store", "recover", str(run_dir), "--out", str(new_run)], tmp_path, dict(os.environ))
    partial = tmp_path / f".saved.partial-{proc.pid}"
    assert (partial / DB_NAME).is_file() and not new_run.exists()
    _kill(proc)
    assert not new_run.exists() and partial.is_dir()
    line = _one_line(*_mnas(["store", "check", str(new_run)], capsys), expect_code=2)
    assert "holds no search run" in line
    code, out, err = _mnas(["store", "recover", str(run_dir), "--out", str(new_run)], capsys)
    assert code == 0, err
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir() if "stalled" not in p.name) == ["run", "saved"]
    code, out, err = _mnas(["store", "check", str(new_run)], capsys)
    assert code == 0 and "intact" in out and f"{TRIALS} trial(s) readable" in out


def test_check_calls_a_state_of_another_strategy_damaged(intact, tmp_path) -> None:
    """What a resume refuses: a strategy state that loads but is not the config's strategy's."""
    run_dir = _copy(intact, tmp_path, "other_state")
    with Store.open(run_dir, writer=True) as store:
        store.commit_tell([], dump_state({"asked": 6, "told": 6}), 10)
    code, out = _store_cli(["store", "check", str(run_dir)])
    assert code == 1 and "DAMAGED" in out and "does not fit the" in out, out
