"""mnas's temporary folders (`mnas.tempdirs`): removed when the block ends however it ends, and,
after a SIGKILL, by the next process that makes one; nothing that is not exactly such a folder of
a dead process is ever touched. Real processes, real signals, a private temp folder per test."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from mnas import tempdirs
from mnas.errors import Terminated, UserError
from mnas.tempdirs import building_dir, clean_partials, clean_stale, private_tempdir


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own system temp folder (what tempfile.gettempdir() answers), cleaned on first use."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(tempdirs, "_cleaned_in", None)
    return folder


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir()
    (path / "big.bin").write_bytes(b"x" * 1000)
    return path


def test_a_dead_process_folder_goes_and_nothing_else(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = dead_pid()
    stale = [_stale(tmp, f"mnas-{kind}-{dead}-0123abcd") for kind in tempdirs.KINDS]
    live = _stale(tmp, f"mnas-lat-{os.getpid()}-0123abcd")
    others = [_stale(tmp, name) for name in (
        f"mnas-lat-{dead}-0123abcd.keep",  # a suffix
        f"mnas-lat-{dead}-0123ABCD",  # not mnas's random part
        f"mnas-lat-{dead}-012",
        f"mnas-prof-{dead}-0123abcd",  # a kind mnas does not make here
        f"xmnas-lat-{dead}-0123abcd",
        f"mnas-lat-0{dead}-0123abcd",
        "mnas-salvage-abc",  # the old tempfile names: no pid, so nobody can know they are stale
        "unrelated",
    )]
    # A link named like a stale folder, to a folder holding a file: neither is touched.
    target = _stale(tmp, "precious")
    link = tmp / f"mnas-lut-{dead}-feedbeef"
    link.symlink_to(target, target_is_directory=True)
    file_named_so = tmp / f"mnas-score-{dead}-feedbeef"
    file_named_so.write_text("a file, not a folder")

    removed = clean_stale()
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale)
    for p in [live, *others, target]:
        assert (p / "big.bin").is_file(), p
    assert link.is_symlink() and (link / "big.bin").is_file() and file_named_so.is_file()
    assert clean_stale() == []


def test_only_this_users_unlocked_folders_go(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = dead_pid()
    locked = _stale(tmp, f"mnas-models-{dead}-00000001")
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:  # its owner alive in a pid namespace we cannot see: it holds the folder's lock
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert clean_stale() == [] and locked.is_dir()
    finally:
        os.close(fd)
    someone_elses = _stale(tmp, f"mnas-models-{dead}-00000002")
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)
    assert clean_stale() == [] and someone_elses.is_dir()
    monkeypatch.undo()
    assert sorted(clean_stale(folder=tmp)) == sorted([locked, someone_elses])


def test_private_tempdir_is_removed_however_the_block_ends(tmp: Path) -> None:
    with private_tempdir("salvage") as path:
        assert path.parent == tmp and path.name.startswith(f"mnas-salvage-{os.getpid()}-")
        assert tempdirs._NAME.fullmatch(path.name) and (path.stat().st_mode & 0o777) == 0o700
        (path / "sub").mkdir()
        (path / "sub" / "f").write_text("x")
    assert not path.exists()
    for exc in (RuntimeError("boom"), Terminated(), UserError("bad input")):
        with pytest.raises(type(exc)), private_tempdir("lat") as path:
            (path / "f").write_text("x")
            raise exc
        assert not path.exists()
    assert list(tmp.iterdir()) == []
    with pytest.raises(ValueError, match="unknown temporary folder kind"), private_tempdir("nope"):
        pass


def test_the_first_private_tempdir_of_a_process_cleans_up(tmp: Path) -> None:
    stale = _stale(tmp, f"mnas-lut-{dead_pid()}-abcdef01")
    with private_tempdir("score") as path:
        assert not stale.exists() and path.is_dir()
    later = _stale(tmp, f"mnas-lut-{dead_pid()}-abcdef02")
    with private_tempdir("score"):
        assert later.is_dir()  # once per process: one listdir, not one per folder made


HOLDER = textwrap.dedent("""
    import signal, sys, time
    from mnas.errors import Terminated
    from mnas.tempdirs import private_tempdir

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)  # as the mnas CLI does
    with private_tempdir("models") as path:
        (path / "model.onnx").write_bytes(b"x" * 100000)
        print(path, flush=True)
        time.sleep(600)
""")


def _holder(tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    assert path.parent == tmp and path.name.startswith(f"mnas-models-{proc.pid}-") and path.is_dir()
    return proc, path


def test_sigterm_removes_the_folder_and_sigkill_leaves_it_to_the_next_start(tmp: Path) -> None:
    proc, path = _holder(tmp)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert not path.exists()

    proc, path = _holder(tmp)
    assert clean_stale() == [] and path.is_dir()  # alive: kept
    proc.kill()
    proc.wait(timeout=60)
    assert (path / "model.onnx").is_file()  # SIGKILL runs nothing
    proc, fresh = _holder(tmp)  # the next process that makes one removes it
    try:
        deadline = time.time() + 10
        while path.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not path.exists() and fresh.is_dir()
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_building_dir_makes_the_folder_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "new-run"
    with building_dir(final) as partial:
        assert partial.name == f".new-run.partial-{os.getpid()}" and not final.exists()
        (partial / "trials.sqlite").write_text("x")
    assert (final / "trials.sqlite").is_file() and [p.name for p in tmp_path.iterdir()] == ["new-run"]

    other = tmp_path / "other"
    with pytest.raises(RuntimeError), building_dir(other) as partial:
        (partial / "half").write_text("x")
        raise RuntimeError("killed half way")
    assert not other.exists() and not partial.exists()

    # A stale partial folder of a dead process goes at the next build; a live one's stays.
    stale = _stale(tmp_path, f".other.partial-{dead_pid()}")
    live = _stale(tmp_path, f".other.partial-{os.getppid()}")
    not_ours = _stale(tmp_path, f".otherx.partial-{dead_pid()}")
    with building_dir(other):
        assert not stale.exists() and live.is_dir() and not_ours.is_dir()
    assert other.is_dir()
    assert clean_partials(tmp_path / "otherx") == [not_ours]

    # An empty folder is replaced; one that gained a file meanwhile is not, and nothing is lost.
    empty = tmp_path / "empty"
    empty.mkdir()
    with building_dir(empty) as partial:
        (partial / "f").write_text("x")
    assert (empty / "f").is_file()
    busy = tmp_path / "busy"
    with pytest.raises(UserError, match="cannot create .*busy"), building_dir(busy) as partial:
        busy.mkdir()
        (busy / "theirs").write_text("kept")
    assert (busy / "theirs").read_text() == "kept" and not partial.exists()
