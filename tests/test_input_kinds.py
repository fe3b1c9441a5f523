"""Each kind of input, over every command that takes it (issue #28, part 9): the real CLI in a
fresh process, one line on stderr, exit 2, no traceback, before any work, and nothing that existed
is changed. A new command that takes a kind is covered by adding it to that kind's list.

Kinds: an architecture (zoo name, string or file), an output path, a search config, a run store, a
count a user sizes. Each list names the commands; each case is one bad value of the kind.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from cli_helpers import SEARCH_CONFIG, mnas, one_line, search_run, snapshot, trained_run

pytestmark = pytest.mark.slow  # a fresh interpreter per case (about 3 s each)

QUICK_S = 60  # "before any work": far less than training or measuring would take on a busy machine


def refused(argv: list[str], cwd: Path) -> str:
    """The one line `argv` is refused with, before any work; run in `cwd` (the test's folder,
    whose snapshot is compared), so a stray write is seen."""
    t0 = time.monotonic()
    line = one_line(mnas(*argv, cwd=cwd))
    assert time.monotonic() - t0 < QUICK_S, f"{argv} took {time.monotonic() - t0:.0f} s: not before work"
    return line


def fill(argv: list[str], **values: str) -> list[str]:
    return [a.format(**values) for a in argv]


# ---- fixtures: a trained run, a search run, a search config ---------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """Everything a command may need, in one folder whose snapshot is compared after each case."""
    trained_run(tmp_path / "trained")
    search_run(tmp_path / "run")
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(SEARCH_CONFIG))
    (tmp_path / "existing.file").write_text("keep me")
    (tmp_path / "link").symlink_to(tmp_path / "existing.file")
    (tmp_path / "full_folder").mkdir()
    (tmp_path / "full_folder" / "x").write_text("keep me too")
    return {"tmp": str(tmp_path), "trained": str(tmp_path / "trained"), "run": str(tmp_path / "run"),
            "config": str(tmp_path / "search.yaml")}


# ---- kind 1: an architecture --------------------------------------------------------------------------
TAKES_AN_ARCH = {
    "arch show": ["arch", "show", "{arch}"],
    "train": ["train", "{arch}", "--data", "cifar10_subset", "--epochs", "1", "--out", "{tmp}/new_train"],
    "latency measure": ["latency", "measure", "{arch}", "-b", "onnxruntime", "-r", "32"],
}
BAD_ARCHS = {
    "unknown token": ("ir_r1_k3_s1_e6_c16_foo", "unknown or malformed token 'foo'"),
    "full-width digit": ("ds_r1_k\uff13_s1_c16", "unknown or malformed token 'k\uff13'"),
    "unknown name": ("resnet50", "'resnet50' is not a zoo model, a file or an architecture string"),
    "over-long name": ("x" * 300, "cannot be looked up as a file (File name too long)"),
    "deeply nested JSON file": ("{tmp}/deep.json", "more than 32 levels deep"),
    "JSON of another shape": ("{tmp}/list.json", "{tmp}/list.json"),
    "non-UTF-8 file": ("{tmp}/latin1.json", "not UTF-8"),
}


@pytest.mark.parametrize("bad", list(BAD_ARCHS))
@pytest.mark.parametrize("command", list(TAKES_AN_ARCH))
def test_an_architecture_is_checked_by_every_command_that_takes_one(command: str, bad: str, world, tmp_path) -> None:
    (tmp_path / "deep.json").write_text('{"blocks": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "latin1.json").write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    before = snapshot(tmp_path)
    text, needle = BAD_ARCHS[bad]
    line = refused(fill(TAKES_AN_ARCH[command], arch=text.format(**world), **world), tmp_path)
    assert needle.format(**world) in line, line
    assert snapshot(tmp_path) == before


# ---- kind 2: an output path ---------------------------------------------------------------------------
# {out} is where the command writes: "file" one file, "folder" a new run's folder, "files" a folder that
# receives named files (each refused if it exists; what else the folder holds is left as it is).
WRITES = {
    "export": (["export", "{trained}", "--format", "onnx", "--out", "{out}"], "file"),
    "build-lut": (["latency", "build-lut", "-b", "onnxruntime", "--space", "mnasnet_cifar", "--out", "{out}"], "file"),
    "best --export": (["best", "{run}", "--export", "{out}"], "files"),
    "train": (["train", "mnasnet_small", "--data", "cifar10_subset", "--epochs", "1", "--out", "{out}"], "folder"),
    "search": (["search", "-c", "{config}", "--out", "{out}"], "folder"),
    "store recover": (["store", "recover", "{run}", "--out", "{out}"], "folder"),
}
BAD_OUTPUTS = {  # path, then what each shape says ("a|b": either); None: accepted, nothing changed
    "empty": ("", {"file": "was given an empty value", "folder": "was given an empty value",
                   "files": "was given an empty value"}),
    "a planted link": ("{tmp}/link", {"file": "symbolic link", "folder": "symbolic link|is a file",
                                      "files": "symbolic link|is a file"}),
    "an existing file": ("{tmp}/existing.file", {"file": "--force", "folder": "is a file", "files": "is a file"}),
    "a run's checkpoint": ("{trained}/checkpoint.pt", {"file": "never replaced", "folder": "is a file",
                                                       "files": "is a file"}),
    "a folder that holds files": ("{tmp}/full_folder", {"file": "is a folder", "folder": "is not empty", "files": None}),
}


@pytest.mark.parametrize("bad", list(BAD_OUTPUTS))
@pytest.mark.parametrize("command", list(WRITES))
def test_an_output_path_is_checked_by_every_command_that_writes(command: str, bad: str, world, tmp_path) -> None:
    argv, shape = WRITES[command]
    path, says = BAD_OUTPUTS[bad]
    before = snapshot(tmp_path)
    if says[shape] is None:  # accepted: the named files are added, nothing there before changes
        r = mnas(*fill(argv, out=path.format(**world), **world), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        after = snapshot(tmp_path)
        assert {k: v for k, v in after.items() if k in before} == before
        return
    line = refused(fill(argv, out=path.format(**world), **world), tmp_path)
    assert any(n in line for n in says[shape].split("|")), line
    assert snapshot(tmp_path) == before


# ---- kind 3: a search config ----------------------------------------------------------------------------
READS_A_CONFIG = {
    "search": ["search", "-c", "{cfg}", "--out", "{tmp}/new_run"],
    "store recover": ["store", "recover", "{tmp}/no_run", "--config", "{cfg}", "--out", "{tmp}/new_run"],
}
BAD_CONFIGS = {
    "a boolean for a number": ("proxy: {batch_size: true}\n", "true is a boolean, not a number"),
    "a key twice": ("proxy: {batch_size: 8, batch_size: 16}\n", "key 'batch_size' appears twice"),
    "an unbounded count": ("latency: {processes: 100000}\n", "less than or equal to 64"),
    "an infinite number": ("proxy: {lr: .inf}\n", "inf is not a finite number"),
    "an unknown key": ("proxy: {learning_rate: 0.1}\n", "learning_rate"),
    "not UTF-8": (b"proxy: {lr: 0.1}  # caf\xe9\n", "UTF-8"),
}


@pytest.mark.parametrize("bad", list(BAD_CONFIGS))
@pytest.mark.parametrize("command", list(READS_A_CONFIG))
def test_a_config_is_checked_by_every_command_that_reads_one(command: str, bad: str, world, tmp_path) -> None:
    text, needle = BAD_CONFIGS[bad]
    cfg = tmp_path / "bad.yaml"
    head = b"space: mnasnet_cifar\nreward: {target_ms: 2}\n"
    cfg.write_bytes(head + (text if isinstance(text, bytes) else text.encode()))
    before = snapshot(tmp_path)
    line = refused(fill(READS_A_CONFIG[command], cfg=str(cfg), **world), tmp_path)
    assert needle in line and str(cfg) in line, line
    assert snapshot(tmp_path) == before


# ---- kind 4: a run store --------------------------------------------------------------------------------
READS_A_STORE = {
    "report": ["report", "{store}"],
    "best": ["best", "{store}"],
    "search --resume": ["search", "--resume", "{store}"],
    "store recover": ["store", "recover", "{store}", "--out", "{tmp}/recovered"],
}


def _truncated(run: Path) -> None:
    db = run / "trials.sqlite"
    db.write_bytes(db.read_bytes()[:1024])


def _newer_schema(run: Path) -> None:
    with closing(sqlite3.connect(run / "trials.sqlite")) as conn, conn:  # closed: the WAL folded in
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")


BAD_STORES = {
    "no run": (None, "holds no search run"),
    "a truncated store": (_truncated, "trials.sqlite"),
    "a newer schema": (_newer_schema, "schema"),
}


@pytest.mark.parametrize("bad", list(BAD_STORES))
@pytest.mark.parametrize("command", list(READS_A_STORE))
def test_a_store_is_checked_by_every_command_that_reads_one(command: str, bad: str, world, tmp_path) -> None:
    damage, needle = BAD_STORES[bad]
    store = tmp_path / "victim"
    if damage is None:
        store.mkdir()
    else:
        search_run(store)
        damage(store)
    before = snapshot(tmp_path)
    line = refused(fill(READS_A_STORE[command], store=str(store), **world), tmp_path)
    assert needle in line, line
    assert snapshot(tmp_path) == before
    if damage is not None:  # and the store's own check agrees that it cannot be read as it is
        r = mnas("store", "check", str(store))
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r.stderr


# ---- kind 5: a count a user sizes ---------------------------------------------------------------------
COUNTS = {
    "eval --batch-size 0": (["eval", "{trained}", "--batch-size", "0"], "--batch-size"),
    "eval --batch-size -5": (["eval", "{trained}", "--batch-size", "-5"], "--batch-size"),
    "train --seed -1": (["train", "mnasnet_small", "--data", "cifar10_subset", "--seed", "-1", "--out", "{tmp}/t"],
                        "--seed"),
    "latency measure --processes": (["latency", "measure", "mnasnet_small", "-b", "onnxruntime", "-p", "100000"],
                                    "--processes must lie in 1..64"),
    "latency measure --resolution": (["latency", "measure", "mnasnet_small", "-b", "onnxruntime", "-r", "100000"],
                                     "--resolution must lie in 8..1024"),
    "build-lut --calibration": (["latency", "build-lut", "--calibration", "1000000000", "--out", "{tmp}/t.json"],
                                "--calibration must lie in 0..10000"),
    "validate-lut --samples": (["latency", "validate-lut", "{tmp}/t.json", "--samples", "1000000000"],
                               "--samples must lie in 2..10000"),
    "supernet train --num-random": (["supernet", "train", "--num-random", "100000", "--out", "{tmp}/sn"], "0 to 16"),
}


@pytest.mark.parametrize("case", list(COUNTS))
def test_every_count_is_bounded(case: str, world, tmp_path) -> None:
    argv, needle = COUNTS[case]
    before = snapshot(tmp_path)
    line = refused(fill(argv, **world), tmp_path)
    assert needle in line, line
    assert snapshot(tmp_path) == before
