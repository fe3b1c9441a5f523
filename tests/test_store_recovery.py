"""Damaged run stores: real SQLite files, damaged the ways disks and people damage them.

Every command that reads a store (`mnas search --resume`, `mnas report`, `mnas best`) must say in
one line that the file is damaged and leave it exactly as it was; `mnas store check` says what is
readable and `mnas store recover` salvages every readable trial into a new run that reports work on.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from mnas.cli import app as cli
from mnas.cli import store as cli_store
from mnas.errors import UserError
from mnas.search.config import parse_config
from mnas.search.loop import make_reward
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
    with Store.create(run_dir, config.model_dump(mode="json"), mnas_version="test") as store:
        for step in range(10):
            batch = []
            for _ in range(TRIALS // 10):
                arch = space.sample(rng)
                batch.append(Trial(-1, arch, strategy="random", tokens=space.encode(arch)))
            store.add_trials(batch, dump_state({"asked": 6 * (step + 1), "told": 6 * step}), step)
            for t in batch:
                if t.trial_id % 7 == 3:
                    t.status, t.error = "failed", "training: diverged"
                else:
                    t.status, t.accuracy, t.latency_ms = "done", 0.3 + rng.random() / 2, 2.0 + 6 * rng.random()
                    t.reward = reward(t.accuracy, t.latency_ms)
                t.seconds, t.finished_at = 1.0, 1000.0 + t.trial_id
                store.save_result(t)
            store.commit_tell([t.trial_id for t in batch], dump_state({"asked": 6 * (step + 1), "told": 6 * (step + 1)}), step)
        return store.trials()


def _leaf_page(db: Path, table: str, index: int) -> int:
    with sqlite3.connect(db) as conn:
        pages = [r[0] for r in conn.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                            "ORDER BY pageno", (table,))]
    return pages[index]


def _rows_on_leaves(db: Path, table: str, keep: Callable[[int], bool]) -> int:
    """How many rows of `table` sit on leaf pages whose number passes `keep` (SQLite's dbstat)."""
    with sqlite3.connect(db) as conn:
        assert not conn.execute("SELECT COUNT(*) FROM dbstat WHERE pagetype = 'overflow'").fetchone()[0]
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
