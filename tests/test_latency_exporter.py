"""Background converters: real exports in `python -m mnas.latency.measure.exporter` processes (idle
priority, dying with their parent), the same files as inline exports, one clear line on failure;
and a script without a main guard can use them (no re-import of the caller's main module)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mnas.errors import UserError
from mnas.latency.backends.base import get_backend
from mnas.latency.backends.ort import OrtBackend
from mnas.latency.measure.exporter import all_cores, arch_file, exporter, placement
from mnas.latency.tables.units import space_units
from mnas.latency.target import Target
from mnas.space import SearchSpace

ORT32 = Target(backend="onnxruntime", resolution=32, num_classes=10)


@pytest.mark.slow
def test_pool_exports_packs_and_archs(tmp_path: Path) -> None:
    space = SearchSpace.cifar()
    units = space_units(space, 32, 10)
    be = get_backend("onnxruntime")
    archs = [space.sample(i) for i in range(2)]
    measuring = [all_cores()[-1]]
    with exporter(ORT32, 2, measuring) as ex:
        assert len(ex.procs) == 2
        pids = [p.pid for p in ex.procs]
        jobs = [ex.pack(units[:3], tmp_path / "p0.onnx"), ex.pack(units[3:6], tmp_path / "p1.onnx")]
        jobs += [ex.arch(a, arch_file(a, ORT32, tmp_path, be)) for a in archs]
        paths = [Path(j.result()) for j in jobs]
        assert all(p.stat().st_size > 1000 for p in paths) and all(j.cpu_seconds > 0 for j in jobs)
        for pid, (cpus, idle) in zip(pids, placement(2, measuring), strict=True):
            # on the measuring core only at idle priority: converters yield to measurements
            assert os.sched_getaffinity(pid) == set(cpus) and (cpus == measuring) == idle
            assert (os.sched_getscheduler(pid) == os.SCHED_IDLE) == idle
        again = ex.arch(archs[0], arch_file(archs[0], ORT32, tmp_path, be))
        assert again.inline and again.result() == str(paths[2])  # an existing file is reused
    assert all(p.poll() is not None for p in ex.procs)  # closed with the context


@pytest.mark.slow
def test_a_failed_export_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    with exporter(ORT32, 1) as ex:
        job = ex.arch(SearchSpace.cifar().sample(0), tmp_path / "afile" / "m.onnx")
        with pytest.raises(UserError) as exc:
            job.result()
        ok = ex.arch(SearchSpace.cifar().sample(1), tmp_path / "m1.onnx")  # the converter goes on
        assert Path(ok.result()).exists()
    assert "exporting m.onnx failed" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.slow
def test_a_script_without_main_guard_can_build_with_converters(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from mnas.latency.target import Target
        from mnas.latency.measure.exporter import exporter
        from mnas.latency.tables.units import space_units
        from mnas.space import SearchSpace
        units = space_units(SearchSpace.cifar(), 32, 10)
        with exporter(Target(backend="onnxruntime", resolution=32, num_classes=10), 2) as ex:
            print(Path(ex.pack(units[:2], Path({str(tmp_path)!r}) / "p.onnx").result()).name)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == ["p.onnx"]  # once: the script ran once


class StuckBackend(OrtBackend):
    """ONNX Runtime, except that a file named stuck* never finishes converting (a hung converter)."""

    name = "stuck"

    def export(self, module, path: Path, target: Target) -> Path:  # type: ignore[no-untyped-def]
        if "stuck" in path.name:
            time.sleep(3600)
        return super().export(module, path, target)


BACKEND = StuckBackend()


@pytest.mark.slow
def test_a_stuck_converter_is_killed_after_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mnas.latency.backends.registry import register_backend, unregister_backend

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MNAS_EXPORT_TIMEOUT", "5")
    register_backend("stuck", __name__)
    target = Target(backend="stuck", resolution=32, num_classes=10)
    try:
        with exporter(target, 1) as ex:
            pid = ex.procs[0].pid
            stuck = ex.arch(SearchSpace.cifar().sample(0), tmp_path / "stuck.onnx")
            t0 = time.monotonic()
            with pytest.raises(UserError) as exc:
                stuck.result()
            assert time.monotonic() - t0 < 60
            ok = ex.arch(SearchSpace.cifar().sample(1), tmp_path / "m1.onnx")  # a fresh converter goes on
            assert Path(ok.result()).stat().st_size > 1000 and ex.procs[0].pid != pid
    finally:
        unregister_backend("stuck")
    message = str(exc.value)
    assert "exporting stuck.onnx failed" in message and "within 5 s" in message and "MNAS_EXPORT_TIMEOUT" in message
    assert "\n" not in message and not (tmp_path / "stuck.onnx").exists()


def test_a_bad_export_timeout_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnas.latency.measure.exporter import export_timeout

    for bad in ("abc", "0", "-3", "inf", "nan"):
        monkeypatch.setenv("MNAS_EXPORT_TIMEOUT", bad)
        with pytest.raises(UserError, match="MNAS_EXPORT_TIMEOUT=.* is not a positive number of seconds"):
            export_timeout()
    monkeypatch.setenv("MNAS_EXPORT_TIMEOUT", "2.5")
    assert export_timeout() == 2.5
    monkeypatch.delenv("MNAS_EXPORT_TIMEOUT")
    assert export_timeout() == 600
