"""A file from disk is data: crafted checkpoints and run stores never run code, and every
command-line usage error is one line with exit code 2 (a real `python -m mnas` subprocess)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnas import zoo
from mnas.errors import UserError
from mnas.model import build_model
from mnas.search.store import Store


def mnas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnas", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


class _Payload:
    """Unpickling this runs `touch MARKER`: what a hostile file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    arch = zoo.get("mnasnet_small")
    torch.save({"arch": arch.to_dict(), "num_classes": 10, "resolution": 32,
                "model": build_model(arch, num_classes=10).state_dict(), "evil": _Payload(marker)}, path)
    return path


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("command", [("arch", "show"), ("eval",), ("export",)])
@pytest.mark.slow
def test_crafted_checkpoint_is_refused_not_run(tmp_path, command):
    marker = tmp_path / "pwned"
    ckpt = _crafted_checkpoint(tmp_path / "checkpoint.pt", marker)
    line = _one_line_error(mnas(*command, str(ckpt)))
    assert "refusing to load" in line
    assert not marker.exists()


def test_crafted_strategy_state_in_a_store_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    with Store.create(run, {"reward": {"target_ms": 1.0}}):
        pass
    blob = _blob(_Payload(marker))
    with sqlite3.connect(run / "trials.sqlite") as db:
        db.execute("INSERT INTO checkpoint (id, step, phase, state, saved_at) VALUES (1, 0, 'ask', ?, 0)", (blob,))
    from mnas.search.store import load_state

    with Store.open(run) as store, pytest.raises(UserError, match="refusing to load"):
        load_state(store.checkpoint().state)
    assert not marker.exists()


def _blob(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"state": obj}, buffer)
    return buffer.getvalue()


@pytest.mark.slow
def test_search_resume_of_a_crafted_store_is_one_line(tmp_path, data_root):
    from test_search import write_config

    marker = tmp_path / "pwned"
    r = mnas("search", "--config", str(write_config(tmp_path, budget={"trials": 2})), "--out",
             str(tmp_path / "run"), "-q")
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "run" / "trials.sqlite") as db:
        db.execute("UPDATE checkpoint SET state = ?", (_blob(_Payload(marker)),))
        db.execute("UPDATE trials SET status = 'pending', told = 0 WHERE trial_id = 1")
    line = _one_line_error(mnas("search", "--resume", str(tmp_path / "run"), "-q"))
    assert "refusing to load" in line and not marker.exists()


@pytest.mark.slow
def test_checkpoints_written_by_mnas_load_with_weights_only(tmp_path):
    """The files mnas writes itself hold only tensors and plain data."""
    from mnas.latency.backends.torch_eager import BACKEND, load_module
    from mnas.latency.target import Target

    arch = zoo.get("mnasnet_small", 0.5)
    model = build_model(arch, num_classes=10).eval()
    path = BACKEND.export(model, tmp_path / "m.pt", Target(backend="torch", resolution=32, num_classes=10))
    torch.load(path, weights_only=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_module(path)(x), model(x))


USAGE_ERRORS = [
    (("serach",), "No such command 'serach'"),
    (("zoo", "--frob"), "No such option: --frob"),
    (("latency", "measure"), "Missing argument"),
    (("search", "--config"), "requires an argument"),
    (("arch", "show", "mnasnet_a1", "--resolution", "abc"), "Invalid value for '--resolution'"),
]


@pytest.mark.parametrize("args,expected", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_exit_2(args, expected):
    line = _one_line_error(mnas(*args))
    assert line.startswith("error: mnas") and expected in line and "--help" in line


@pytest.mark.parametrize("args", [(), ("latency",), ("arch",)])
def test_bare_groups_print_their_help(args):
    r = mnas(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Usage: mnas" in r.stdout and "Commands" in r.stdout
