"""`mnas latency ...` with bad input: every mistake is one line and exit 2 before any work, nothing
that exists is overwritten; and a killed command leaves no worker process and no temp folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnas.latency.measure.result import ReferenceLatency
from mnas.latency.tables.predict import LatencyTable
from mnas.latency.tables.units import space_units, unit_to_dict
from mnas.latency.target import Target
from mnas.space import SearchSpace

CORES = len(os.sched_getaffinity(0))


def mnas(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mnas", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def mnas_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (fast): exit code and output as if run."""
    from mnas.cli.app import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def table_file(tmp_path_factory) -> Path:
    """A finished table (synthetic entries: nothing to measure)."""
    space = SearchSpace.cifar()
    target = Target(backend="onnxruntime", resolution=32, num_classes=10)
    units = space_units(space, 32, 10)[:100]
    ref = ReferenceLatency("mobilenet_v2", "x", 4.0, 0.01, 1.8e9, 3, True, target)
    table = LatencyTable(target=target, space=space.to_dict(), reference=ref,
                         entries={u.key: {"relative": 0.01, "median_ms": 0.04, "unit": unit_to_dict(u)} for u in units})
    return table.save(tmp_path_factory.mktemp("tables") / "good.json")


@pytest.mark.parametrize("args, message", [
    (("measure", "mnasnet_a1", "--backend", "tensorrt"),
     "unknown backend 'tensorrt'; choose one of litert, onnxruntime, torch, android"),
    (("measure", "mnasnet_a1", "-b", "onnxruntime", "--threads", "1000"),
     f"--threads 1000 is more than the {CORES} cores here; use at most {CORES} (or --force-threads to measure anyway)"),
    (("measure", "mnasnet_a1", "-b", "onnxruntime", "-r", "0"), "--resolution must lie in 8..1024 (got 0)"),
    (("measure", "mnasnet_a1", "-b", "onnxruntime", "--processes", "0"), "--processes must lie in 1..64 (got 0)"),
    (("measure", "mnasnet_a1", "-b", "onnxruntime", "--threads", "0"), "--threads must be >= 1 (got 0)"),
    (("reference", "-b", "onnxruntime", "--threads", str(CORES + 1)), f"--threads {CORES + 1} is more than"),
    (("build-lut", "-b", "onnxruntime", "-r", "0", "--out", "{tmp}/t.json"), "--resolution must lie in 8..1024 (got 0)"),
    (("build-lut", "-b", "onnxruntime", "--threads", str(CORES + 1), "--out", "{tmp}/t.json"),
     f"--threads {CORES + 1} is more than"),
    (("build-lut", "-b", "android", "--out", "{tmp}/t.json"), "latency tables cannot be built for the android backend"),
    (("build-lut", "--out", "{tmp}"), "is a folder; give a file name inside it"),
    (("build-lut", "--out", "{tmp}/file/t.json"), "is a file, not a folder"),
    (("build-lut", "--processes", "0", "--out", "{tmp}/t.json"), "--processes must lie in 1..64"),
    (("validate-lut", "{tmp}"), "is a directory, not a latency table"),
    (("refine-lut", "{tmp}/missing.json"), "does not exist"),
    (("refine-lut", "{tmp}/binary.json", "-p", "0"), "--processes must lie in 1..64 (got 0)"),
    (("refine-lut", "{tmp}/binary.json"), "is not a latency table written by `mnas latency build-lut` (it is a binary file)"),
    (("validate-lut", "{tmp}/binary.json"), "is not a latency table written by `mnas latency build-lut` (it is a binary file)"),
    (("validate-lut", "{tmp}/missing.json"), "does not exist"),
    (("measure", "mnasnet_a1", "-b", "onnxruntime", "-r", "100000"), "--resolution must lie in 8..1024 (got 100000)"),
    (("measure", "mnasnet_a1", "-b", "onnxruntime", "--processes", "100000"), "--processes must lie in 1..64"),
    (("build-lut", "--calibration", "1000000000", "--out", "{tmp}/t.json"), "--calibration must lie in 0..10000"),
    (("build-lut", "--pack-size", "1000000000", "--out", "{tmp}/t.json"), "--pack-size must lie in 1..10000"),
    (("refine-lut", "{tmp}/binary.json", "-p", "1000000"), "--processes must lie in 1..64 (got 1000000)"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path: Path, capsys, args, message: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 8)
    t = time.monotonic()
    line = one_line(mnas_here(capsys, "latency", *[a.format(tmp=tmp_path) for a in args]))
    assert message in line
    assert time.monotonic() - t < 5  # nothing was measured


@pytest.mark.slow
def test_a_usage_error_in_a_fresh_process_has_no_traceback() -> None:
    line = one_line(mnas("latency", "measure", "mnasnet_a1", "-b", "onnxruntime", "--threads", "1000"))
    assert "--threads 1000 is more than" in line


@pytest.mark.parametrize("extra", [("--pack-size", "-3"), ("--pack-size", "0"), ()])
def test_an_existing_table_is_never_overwritten(table_file: Path, capsys, extra) -> None:
    before = table_file.read_bytes()
    line = one_line(mnas_here(capsys, "latency", "build-lut", "-b", "onnxruntime", "--space", "mnasnet_cifar",
                              "--out", str(table_file), *extra))
    assert ("--pack-size must lie in 1..10000" in line) if extra else ("already exists; pass --force" in line)
    assert table_file.read_bytes() == before
    line = one_line(mnas_here(capsys, "latency", "build-lut", "--out", str(table_file), "--force", *extra)) \
        if extra else None
    assert line is None or "--pack-size must lie in 1..10000" in line
    assert table_file.read_bytes() == before


def test_force_threads_passes_the_core_check() -> None:
    from mnas.cli.latency import _target

    assert _target("onnxruntime", CORES + 1, 32, force_threads=True).threads == CORES + 1


@pytest.mark.slow
def test_validate_warns_about_a_table_covering_few_layers(table_file: Path, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning comes before any measuring (here measuring then stops on a bad core list)."""
    monkeypatch.setenv("MNAS_LATENCY_CPUS", "x")
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path))
    proc = mnas_here(capsys, "latency", "validate-lut", str(table_file), "--samples", "2")
    assert "warning: the table holds 100 of the" in proc.stderr and "layer configurations of its space" in proc.stderr
    assert "MNAS_LATENCY_CPUS='x'" in one_line(proc)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_measurement_leaves_no_worker_and_no_temp_folder(tmp_path: Path, sig: int) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "MNAS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "mnas", "latency", "measure", "mobilenet_v2", "-b", "onnxruntime",
                             "-r", "32", "--fresh", "--reference", "none"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    worker = None
    deadline = time.monotonic() + 120
    while worker is None and time.monotonic() < deadline and proc.poll() is None:
        worker = next((c for c in _children(proc.pid) if "mnas.latency.measure.worker" in _cmdline(c)), None)
        time.sleep(0.05)
    assert worker is not None, "no measuring worker started"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:  # unwound like Ctrl-C, exit 128 + SIGTERM
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
    if sig == signal.SIGTERM:
        assert [p.name for p in tmp.iterdir() if p.name.startswith("mnas-")] == []
    else:  # SIGKILL cannot be handled: the job folder stays, but the worker died before finishing it
        assert list(tmp.glob("mnas-lat-*/job.json")) and not list(tmp.glob("mnas-lat-*/result.json"))


@pytest.mark.slow
def test_measure_json_reports_relative_and_the_reference(capsys, tmp_path: Path, monkeypatch) -> None:
    import json

    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path))
    proc = mnas_here(capsys, "latency", "measure", "mnasnet_small", "-b", "onnxruntime", "-r", "32", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["reference"] == "mobilenet_v2" and d["relative"] > 0 and d["raw_ms"] > 0
    assert d["median_ms"] == pytest.approx(d["relative"] * d["reference_ms"])
    assert d["reference_date"].endswith("UTC") and d["reference_spread"] >= 0 and d["processes"] >= 3
    text = mnas_here(capsys, "latency", "measure", "mnasnet_small", "-b", "onnxruntime", "-r", "32")
    assert "(cached)" in text.stdout and "x mobilenet_v2" in text.stdout and "measured 20" in text.stdout


# ---- #28 item 3: a table is validated when it is loaded, by every command ----------------------
def _broken(table_file: Path, folder: Path, how: str) -> Path:
    import json
    import math

    d = json.loads(table_file.read_text())
    key = next(iter(d["entries"]))
    if how in ("nan", "inf", "zero", "negative", "missing"):
        value = {"nan": math.nan, "inf": math.inf, "zero": 0.0, "negative": -0.01}.get(how)
        if value is None:
            del d["entries"][key]["relative"]
        else:
            d["entries"][key]["relative"] = value
    elif how == "empty":
        d["entries"] = {}
    elif how == "format9":
        d["format"] = 9
    elif how == "format_text":
        d["format"] = "two"
    elif how == "reference":
        d["reference"]["ms"] = -1.0
    elif how == "no_reference":
        d["reference"] = None
    elif how == "calibration":
        d["calibration"]["scale"] = math.nan
    elif how == "calibration_zero":
        d["calibration"]["scale"] = 0.0
    out = folder / f"{how}.json"
    out.write_text(json.dumps(d))  # json writes NaN / Infinity, as a hand-edited or broken file may hold
    return out


BROKEN = [
    ("nan", "have no finite positive relative"), ("inf", "have no finite positive relative"),
    ("zero", "have no finite positive relative"), ("negative", "have no finite positive relative"),
    ("missing", "have no finite positive relative"), ("empty", "holds no entries"),
    ("format9", "is a format 9 latency table, newer than this mnas reads"),
    ("format_text", "unknown latency table format 'two'"),
    ("reference", "the reference's latency is -1.0, not a positive number of ms"),
    ("no_reference", "without its reference latency"),
    ("calibration", "calibration scale is nan, not a finite number"),
    ("calibration_zero", "calibration scale is 0.0, not positive"),
]


@pytest.mark.parametrize("how, message", BROKEN)
def test_a_broken_table_is_refused_when_loaded(table_file: Path, tmp_path: Path, how: str, message: str) -> None:
    from mnas.errors import UserError

    bad = _broken(table_file, tmp_path, how)
    with pytest.raises(UserError, match="rebuild it with `mnas latency build-lut`") as err:
        LatencyTable.load(bad)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate-lut", "refine-lut"])
@pytest.mark.parametrize("how", ["nan", "format9", "calibration"])
def test_every_command_refuses_a_broken_table_before_work(table_file: Path, tmp_path: Path, command: str,
                                                          how: str) -> None:
    """In a fresh process: one line, exit 2, no plot written, the table untouched."""
    bad = _broken(table_file, tmp_path, how)
    before = bad.read_bytes()
    t = time.monotonic()
    line = one_line(mnas("latency", command, str(bad), env={"MNAS_CACHE_DIR": str(tmp_path / "cache")}))
    assert dict(BROKEN)[how] in line and "nan%" not in line
    assert time.monotonic() - t < 30
    assert bad.read_bytes() == before and not list(tmp_path.glob("*.png"))


def test_validate_checks_its_plot_path_before_measuring(table_file: Path, tmp_path: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "file").write_text("x")
    t = time.monotonic()
    line = one_line(mnas_here(capsys, "latency", "validate-lut", str(table_file), "--samples", "2",
                              "--plot", str(tmp_path / "file" / "plot.png")))
    assert "is a file, not a folder" in line and time.monotonic() - t < 5
    (tmp_path / "dir.png").mkdir()
    line = one_line(mnas_here(capsys, "latency", "validate-lut", str(table_file), "--plot", str(tmp_path / "dir.png")))
    assert "is a folder" in line
    line = one_line(mnas_here(capsys, "latency", "validate-lut", str(table_file), "--plot", str(table_file)))
    assert "is the file this command reads" in line


def test_validate_and_refine_in_an_unwritable_folder_are_one_line(table_file: Path, tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """(os.access is what a non-root user would be told; the tests may run as root.)"""
    import shutil

    folder = tmp_path / "ro"
    folder.mkdir()
    lut = Path(shutil.copy(table_file, folder / "t.json"))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == folder else real(p, mode, *a, **k))
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "cache"))
    line = one_line(mnas_here(capsys, "latency", "refine-lut", str(lut)))
    assert f"its folder {folder} is not writable" in line
    line = one_line(mnas_here(capsys, "latency", "validate-lut", str(lut), "--samples", "2"))
    assert "cannot be written" in line and str(folder) in line


@pytest.mark.slow
def test_a_search_refuses_a_broken_table_before_work(table_file: Path, tmp_path: Path) -> None:
    """A search whose latency target is a broken table stops with the table's one line (fresh process)."""
    bad = _broken(table_file, tmp_path, "nan")
    config = tmp_path / "search.yaml"
    config.write_text(f"space: mnasnet_cifar\ndata: {{dataset: cifar10_subset}}\nlatency: {{lut: {bad}}}\n"
                      "reward: {target_ms: 5.0}\nbudget: {trials: 2}\n")
    line = one_line(mnas("search", "--config", str(config), "--out", str(tmp_path / "run"),
                         env={"MNAS_CACHE_DIR": str(tmp_path / "cache")}))
    assert "have no finite positive relative" in line and not (tmp_path / "run" / "trials.sqlite").exists()
