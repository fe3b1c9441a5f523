"""The android backend end to end through a stand-in `adb` that records its arguments and replays
benchmark_model output; plus every clear error (no adb, no device, unauthorised, disconnect, hang)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from mnas.errors import UserError
from mnas.latency.backends.android import BACKEND, Adb
from mnas.latency.backends.base import ModelFile
from mnas.latency.measure.measuring import measure_rounds
from mnas.latency.measure.protocol import Protocol
from mnas.latency.measure.result import ReferenceLatency, summarise
from mnas.latency.target import Target

FIXTURES = Path(__file__).parent / "fixtures" / "adb"


@pytest.fixture
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in adb first on PATH (run by this interpreter); return its argument log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = (FIXTURES / "adb").read_text().split("\n", 1)[1]
    adb = bin_dir / "adb"
    adb.write_text(f"#!{sys.executable}\n__file__ = {str(FIXTURES / 'adb')!r}\n{script}")
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "adb_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("ADB", raising=False)
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("MNAS_ADB_RETRIES", "1")
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _files(tmp_path: Path) -> tuple[Path, list[ModelFile]]:
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake benchmark binary")
    models = []
    for i in range(2):
        path = tmp_path / f"model{i}.tflite"
        path.write_bytes(f"TFL3 model {i}".encode())
        models.append(ModelFile(path))
    return binary, models


def _reference(tmp_path: Path) -> Path:
    ref = tmp_path / "reference.tflite"
    ref.write_bytes(b"TFL3 reference")
    return ref


@pytest.mark.parametrize("output, expected_ms", [
    ("benchmark_new.txt", 58.016),            # median from the newer percentile line
    ("benchmark_summary.txt", 61.8024),       # Inference (avg)
    ("benchmark_old.txt", 1203.27),           # old form, exponent notation
    ("benchmark_old_inference.txt", 70.3902),
])
def test_measure_on_fake_phone(fake_adb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               output: str, expected_ms: float) -> None:
    """Absolute: every file timed `processes` times, round-robin, files pushed once."""
    monkeypatch.setenv("FAKE_ADB_OUTPUT", output)
    binary, models = _files(tmp_path)
    target = Target(backend="android", benchmark_binary=str(binary))
    samples = measure_rounds(dict(enumerate(models)), None, target, 3, Protocol(), BACKEND)
    assert set(samples) == {0, 1} and all(len(s) == 3 for s in samples.values())
    result = summarise([s[0] for s in samples[0]], target)
    assert result.median_ms == pytest.approx(expected_ms) and result.relative is None
    assert result.processes == 3

    calls = _calls(fake_adb)
    pushes = [c for c in calls if c[:3] == ["-s", "emulator-5554", "push"]]
    assert [Path(c[3]).name for c in pushes] == ["benchmark_model", "model0.tflite", "model1.tflite"]
    runs = [c[-1] for c in calls if "--graph" in c[-1]]
    assert len(runs) == 6  # 3 processes x 2 models
    graphs = [r.split("--graph=")[1].split()[0] for r in runs]
    assert graphs == ["/data/local/tmp/mnas/model0.tflite", "/data/local/tmp/mnas/model1.tflite",
                      "/data/local/tmp/mnas/model1.tflite", "/data/local/tmp/mnas/model0.tflite",
                      "/data/local/tmp/mnas/model0.tflite", "/data/local/tmp/mnas/model1.tflite"]
    for r in runs:  # fastest core of the fake big.LITTLE phone is cpu7 -> mask 0x80
        assert r.startswith("taskset 80 /data/local/tmp/mnas/benchmark_model ")
        assert "--num_threads=1" in r and "--warmup_runs=30" in r and "--num_runs=60" in r
    assert any("chmod 755 /data/local/tmp/mnas/benchmark_model" in c[-1] for c in calls)


@pytest.mark.parametrize("drift", [0.0, 0.05])
def test_relative_to_the_reference_on_a_throttling_phone(fake_adb: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, drift: float) -> None:
    """benchmark_model runs of the reference and the files in alternation (ref, model0, ref,
    model1, ref): each file's run is divided by the mean of the two reference runs around it, so
    a phone that slows down run after run (5% per run here) leaves the ratio exact."""
    monkeypatch.setenv("FAKE_ADB_OUTPUT", "benchmark_new.txt")  # the models: median 58016 us
    monkeypatch.setenv("FAKE_ADB_GRAPHS", '{"reference": "benchmark_summary.txt"}')  # avg 61802.4 us
    monkeypatch.setenv("FAKE_ADB_DRIFT", str(drift))
    binary, models = _files(tmp_path)
    target = Target(backend="android", benchmark_binary=str(binary))
    samples = measure_rounds(dict(enumerate(models)), _reference(tmp_path), target, 3, Protocol(), BACKEND)
    expected = 58016 / 61802.4
    ref = ReferenceLatency("mobilenet_v2", "id", 61.8024, 0.01, 0.0, 3, True, target)
    for i in (0, 1):
        per_process = [s[0] for s in samples[i]]
        assert [s.relative for s in per_process] == pytest.approx([expected] * 3, rel=1e-9)
        result = summarise(per_process, target, reference=ref)
        assert result.relative == pytest.approx(expected, rel=1e-9) and result.stable
        assert result.median_ms == pytest.approx(58.016, rel=1e-9)
        raw = sorted(s.median_ms for s in per_process)  # the phone's own times drift
        assert (raw[-1] / raw[0] > 1.2) == (drift > 0)
    runs = [c[-1].split("--graph=")[1].split()[0].rsplit("/", 1)[1] for c in _calls(fake_adb) if "--graph" in c[-1]]
    assert runs[:5] == ["reference.tflite", "model0.tflite", "reference.tflite", "model1.tflite", "reference.tflite"]
    pushes = [Path(c[3]).name for c in _calls(fake_adb) if c[:3] == ["-s", "emulator-5554", "push"]]
    assert sorted(pushes) == ["benchmark_model", "model0.tflite", "model1.tflite", "reference.tflite"]


def test_threads_pin_to_the_big_cores(fake_adb: Path, tmp_path: Path) -> None:
    binary, models = _files(tmp_path)
    target = Target(backend="android", threads=4, benchmark_binary=str(binary))
    BACKEND.measure_files(models[:1], None, target, Protocol(), [])
    run = [c[-1] for c in _calls(fake_adb) if "--graph" in c[-1]][0]
    assert run.startswith("taskset f0 ") and "--num_threads=4" in run


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ADB", raising=False)
    binary, models = _files(tmp_path)
    with pytest.raises(UserError) as exc:
        BACKEND.measure_files(models, None, Target(backend="android", benchmark_binary=str(binary)), Protocol(), [])
    assert "adb not found" in _one_line(exc)
    assert BACKEND.unavailable() is not None


@pytest.mark.parametrize("state, message", [
    ("unauthorized", "unauthorised"),
    ("none", "no Android device connected"),
    ("offline", "is offline"),
])
def test_device_states(fake_adb: Path, monkeypatch: pytest.MonkeyPatch, state: str, message: str) -> None:
    monkeypatch.setenv("FAKE_ADB_STATE", state)
    with pytest.raises(UserError) as exc:
        Adb().device()
    assert message in _one_line(exc)


def test_disconnect_is_retried_then_reported(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_STATE", "disconnect")
    adb = Adb(retries=1)
    assert adb.device() == "emulator-5554"
    with pytest.raises(UserError) as exc:
        adb.shell("echo hi")
    assert "failed after 2 tries" in _one_line(exc) and "not found" in str(exc.value)
    assert sum(1 for c in _calls(fake_adb) if "shell" in c) == 2


def test_hanging_adb_times_out(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_STATE", "hang")
    t = time.monotonic()
    with pytest.raises(UserError) as exc:
        Adb(timeout_s=1, retries=1).device()
    assert "timed out after 1 s" in _one_line(exc)
    assert time.monotonic() - t < 20


def test_android_target_needs_a_binary() -> None:
    with pytest.raises(UserError, match="benchmark_model"):
        Target(backend="android")
