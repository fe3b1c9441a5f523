"""Outputs never destroy what exists: `mnas export`, `mnas best --export` and `mnas report` refuse
an existing file (without --force), a file the run needs (even with --force), an empty path and a
planted symbolic link, before any work; a full disk is one line and the previous file is kept.
Bounds instead of hangs: `store check` on a huge trial id, `supernet eval sample:N`, `--num-random`,
long latency target names, SIGTERM in supernet training. Real CLI in a subprocess, real files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import SEARCH_CONFIG, mnas, one_line, search_run, snapshot
from cli_helpers import trained_run as make_trained_run
from mnas.errors import UserError
from mnas.paths import output_file, write_text
from mnas.search.config import parse_config
from mnas.search.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trained_run(tmp_path: Path) -> Path:
    return make_trained_run(tmp_path / "run")


# ---- mnas export ---------------------------------------------------------------------------------
def test_export_never_replaces_the_checkpoint_even_with_force(trained_run: Path) -> None:
    before = snapshot(trained_run)
    for extra in ([], ["--force"]):
        line = one_line(mnas("export", str(trained_run), "--format", "torchscript", "--out",
                             str(trained_run / "checkpoint.pt"), *extra))
        assert "checkpoint.pt" in line and "never replaced" in line
    line = one_line(mnas("export", str(trained_run), "--out", str(trained_run / "metrics.jsonl"), "--force"))
    assert "never replaced" in line
    assert snapshot(trained_run) == before


def test_export_replaces_an_existing_file_only_with_force(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier export")
    line = one_line(mnas("export", str(trained_run), "--format", "torchscript", "--out", str(out)))
    assert "already exists" in line and "--force" in line
    assert out.read_bytes() == b"an earlier export"
    r = mnas("export", str(trained_run), "--format", "torchscript", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert torch.jit.load(str(out))(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "run"]  # no temp file left behind
    # the default output (next to the checkpoint) is refused the second time too
    assert mnas("export", str(trained_run), "--format", "onnx").returncode == 0
    assert "already exists" in one_line(mnas("export", str(trained_run), "--format", "onnx"))


@pytest.mark.parametrize("argv, needle", [
    (["--out", ""], "--out was given an empty value"),
    (["--out", "{tmp}"], "is a folder"),
])
def test_export_refuses_an_empty_or_folder_path(trained_run: Path, tmp_path: Path, argv: list[str], needle: str) -> None:
    before = snapshot(tmp_path)
    line = one_line(mnas("export", str(trained_run), *[a.replace("{tmp}", str(tmp_path)) for a in argv]))
    assert needle in line
    assert snapshot(tmp_path) == before


def test_export_refuses_a_planted_symlink_and_leaves_its_target(trained_run: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "model.onnx"
    link.symlink_to(precious)
    for extra in ([], ["--force"]):
        line = one_line(mnas("export", str(trained_run), "--out", str(link), *extra))
        assert "symbolic link" in line
    assert precious.read_text() == "keep me" and link.is_symlink()


def test_export_on_a_full_disk_keeps_the_previous_file(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"a good export")
    r = mnas("export", str(trained_run), "--format", "torchscript", "--out", str(out), "--force",
             limit_file_bytes=4096)
    line = one_line(r)
    assert str(out) in line and "previous file was kept" in line
    assert out.read_bytes() == b"a good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "run"]


# ---- mnas best --export and mnas report ----------------------------------------------------------------
def test_best_export_refuses_existing_files_and_links_then_force_replaces(tmp_path: Path) -> None:
    run = search_run(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "arch.json").write_text("my own arch.json")
    line = one_line(mnas("best", str(run), "--export", str(out)))
    assert "arch.json already exists" in line and "--force" in line
    assert sorted(p.name for p in out.iterdir()) == ["arch.json"]
    assert "--export was given an empty value" in one_line(mnas("best", str(run), "--export", ""))
    assert "--force" in one_line(mnas("best", str(run), "--force"))

    precious = tmp_path / "precious.onnx"
    precious.write_bytes(b"someone else's model")
    (out / "model.onnx").symlink_to(precious)
    assert "symbolic link" in one_line(mnas("best", str(run), "--export", str(out), "--force"))
    assert precious.read_bytes() == b"someone else's model"

    (out / "model.onnx").unlink()
    r = mnas("best", str(run), "--export", str(out), "--force")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert json.loads((out / "arch.json").read_text())["blocks"] and (out / "model.onnx").stat().st_size > 1000
    assert (out / "arch.timm.txt").read_text().strip() == record["timm"]
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "arch.timm.txt", "model.onnx"]


def test_report_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    run = search_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("report.md", "pareto.png"):
        (elsewhere / name).write_text(f"not yours: {name}")
        (run / name).symlink_to(elsewhere / name)
    line = one_line(mnas("report", str(run), "--no-zoo"))
    assert "symbolic link" in line
    assert snapshot(elsewhere) == {"report.md": b"not yours: report.md", "pareto.png": b"not yours: pareto.png"}
    assert not (run / "latency_hist.png").exists()  # refused before any work

    for name in ("report.md", "pareto.png"):  # its own earlier outputs are redrawn
        (run / name).unlink()
        (run / name).write_text("an earlier report")
    r = mnas("report", str(run), "--no-zoo")
    assert r.returncode == 0, r.stderr
    assert (run / "report.md").read_text().startswith("# Search report")
    assert (run / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".png", ".md"))]


def test_a_long_target_name_is_refused_at_once(tmp_path: Path) -> None:
    long_name = "x" * 200_000
    with pytest.raises(UserError, match="at most 64"):
        parse_config({**SEARCH_CONFIG, "latency": {**SEARCH_CONFIG["latency"], "name": long_name}})
    with pytest.raises(UserError, match="one printable line"):
        parse_config({**SEARCH_CONFIG, "latency": {**SEARCH_CONFIG["latency"], "name": "a\nb"}})
    assert parse_config({**SEARCH_CONFIG, "latency": {**SEARCH_CONFIG["latency"], "name": "p" * 64}}).primary.label == "p" * 64
    run = search_run(tmp_path / "run", {**SEARCH_CONFIG, "latency": {**SEARCH_CONFIG["latency"], "name": long_name}})
    t0 = time.monotonic()
    line = one_line(mnas("report", str(run), "--no-zoo"))
    assert "at most 64" in line and len(line) < 400 and time.monotonic() - t0 < 60
    assert not (run / "report.md").exists()


# ---- the helpers themselves --------------------------------------------------------------------------
def test_output_file_checks(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is empty"):
        output_file("", "--out")
    (tmp_path / "trials.sqlite").write_text("a store")
    with pytest.raises(UserError, match="never replaced"):
        output_file(tmp_path / "trials.sqlite", "--out", force=True)
    src = tmp_path / "in.pt"
    src.write_text("input")
    with pytest.raises(UserError, match="reads"):
        output_file(tmp_path / "." / "in.pt", "--out", force=True, inputs=[src])
    assert output_file(tmp_path / "new" / "x.onnx", "--out") == tmp_path / "new" / "x.onnx"
    target = tmp_path / "target.txt"
    target.write_text("target")
    (tmp_path / "link.md").symlink_to(target)
    with pytest.raises(UserError, match="symbolic link"):
        write_text(tmp_path / "link.md", "through the link?")  # refused at write time too
    assert target.read_text() == "target"


# ---- bounds instead of hangs ---------------------------------------------------------------------------
def test_store_check_with_a_huge_trial_id_answers_at_once(tmp_path: Path) -> None:
    run = search_run(tmp_path / "run", trial_ids=(0, 1))
    with sqlite3.connect(run / "trials.sqlite") as db:
        db.execute("UPDATE trials SET trial_id = ? WHERE trial_id = 1", (10**12,))
    t0 = time.monotonic()
    r = mnas("store", "check", str(run), timeout=120)
    assert time.monotonic() - t0 < 60
    assert r.returncode in (0, 1), r.stderr  # (its hand-made strategy state does not fit a strategy: damaged)
    assert "2 trial(s) readable (ids 0..1000000000000)" in r.stdout
    assert f"{10**12 - 1:,} lost (1, 2, 3" in r.stdout


@pytest.mark.parametrize("argv, needle", [
    (["supernet", "eval", "{tmp}/sn", "sample:999999999999"], "N from 1 to 10,000"),
    (["supernet", "eval", "{tmp}/sn", "sample:6000", "sample:6000"], "at most 10,000"),
    (["supernet", "eval", "{tmp}/sn", "sample:²"], "sample:N"),
    (["supernet", "train", "--num-random", "100000", "--out", "{tmp}/sn"], "0 to 16"),
])
def test_supernet_counts_are_bounded(tmp_path: Path, argv: list[str], needle: str) -> None:
    t0 = time.monotonic()
    line = one_line(mnas(*[a.replace("{tmp}", str(tmp_path)) for a in argv], timeout=120))
    assert needle in line and time.monotonic() - t0 < 60
    assert not (tmp_path / "sn").exists()


@pytest.mark.slow
def test_sigterm_stops_supernet_training_within_a_second_or_two(tmp_path: Path, data_root: Path) -> None:
    """One path of this step takes about 16 s forward and backward on a 2-core CPU, a step 18 of
    them: a flag read between steps (or between paths) would answer after many seconds."""
    out = tmp_path / "sn"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnas", "supernet", "train", "--data", "cifar10_subset", "--data-root", str(data_root),
         "--train-subset", "1024", "--val-size", "256", "--batch-size", "256", "--num-random", "16", "--epochs", "1",
         "--out", str(out), "--device", "cpu", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(25)  # loaded and training (a step takes minutes here)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]  # 128 + SIGTERM
    assert json.loads(stdout)["status"] == "interrupted" and (out / "checkpoint.pt").is_file()
    assert elapsed < 6, elapsed  # the checkpoint save and the exit included
    assert "Traceback" not in stderr


# ---- a full disk mid-work: one line with what was kept and the way on -------------------------------
@pytest.mark.slow
def test_a_full_disk_mid_search_keeps_the_trials_and_says_how_to_resume(tmp_path: Path, data_root: Path,
                                                                        monkeypatch) -> None:
    from test_search import write_config

    monkeypatch.setenv("MNAS_DATA", str(data_root))
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "cache"))
    config = write_config(tmp_path, budget={"trials": 6, "batch_size": 2})
    # the same search once with room: its latencies are cached, so below only the run folder grows
    assert mnas("search", "-c", str(config), "--out", str(tmp_path / "warm"), "-q").returncode == 0
    run = tmp_path / "run"
    line = one_line(mnas("search", "-c", str(config), "--out", str(run), "-q", limit_file_bytes=64 * 1024))
    assert "is the disk full?" in line and f"continue with: mnas search --resume {run}" in line
    r = mnas("search", "--resume", str(run), "-q")  # space again: it goes on and finishes
    assert r.returncode == 0, r.stderr[-2000:]
    with Store.open(run) as store:
        assert len([t for t in store.trials() if t.status == "done"]) == 6


@pytest.mark.slow
def test_a_full_disk_mid_build_lut_says_the_same_command_goes_on(tmp_path: Path, monkeypatch) -> None:
    import yaml

    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "cache"))
    space = {"name": "tiny", "base_filters": [8, 16], "base_layers": [1, 1], "strides": [1, 2], "ops": ["ds"],
             "kernels": [3], "se_ratios": [0], "skips": ["identity"], "filter_multipliers": [1.0], "layer_deltas": [0],
             "stem_filters": 8, "stem_stride": 1, "head_filters": 32, "resolution": 32}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    out = tmp_path / "lut.json"
    # the reference measured once with room (the cache holds it), so below only the build's own files grow
    assert mnas("latency", "reference", "-b", "onnxruntime", "-r", "32", "--num-classes", "10").returncode == 0
    line = one_line(mnas("latency", "build-lut", "-b", "onnxruntime", "--space", str(tmp_path / "space.yaml"),
                         "--num-classes", "10", "--calibration", "0", "-p", "1", "--out", str(out),
                         limit_file_bytes=2048))
    assert "could not write" in line and "File too large" in line
    assert "no pack was finished; free some space and run the same command again" in line
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_mid_search_exits_143_with_the_resume_command(tmp_path: Path, data_root: Path, monkeypatch) -> None:
    from test_search import write_config

    monkeypatch.setenv("MNAS_DATA", str(data_root))
    config = write_config(tmp_path, budget={"trials": 40, "batch_size": 2})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mnas", "search", "-c", str(config), "--out", str(run), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "trials.sqlite").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM, as the README says
    said = " ".join((out + err).split())  # rich wraps long lines
    assert f"Continue with: mnas search --resume {run}" in said and "Traceback" not in err
