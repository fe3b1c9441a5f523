"""Model files for measuring: whole networks and table packs, written atomically, optionally by a
pool of background converter processes.

LiteRT conversion costs about a second of CPU per layer, which would dominate a table build or a
batch of candidates; a pool of converter processes works while the measurements go on: one per
core that does not measure, pinned there at normal priority, and one on the measuring core(s) at
idle priority (SCHED_IDLE), which only uses the time the measurements leave. A measurement
disturbed by a converter on another core (shared caches, memory bandwidth) is what the reference
interleaving cancels.

The converters are `python -m mnas.latency.measure.exporter` processes fed one JSON job per line (not
multiprocessing: that re-imports the caller's main script in every child). They die with their
parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.latency.backends.base import Backend, get_backend
from mnas.latency.backends.registry import register_backend
from mnas.latency.measure.lifetime import die_with_parent, idle_priority
from mnas.latency.tables.units import Unit, unit_from_dict, unit_to_dict
from mnas.latency.target import Target
from mnas.paths import write_via

#: Seconds one export may take in a converter before the converter is stopped (MNAS_EXPORT_TIMEOUT).
DEFAULT_EXPORT_TIMEOUT_S = 600.0


def export_timeout() -> float:
    """MNAS_EXPORT_TIMEOUT (seconds, default 600): how long a converter may work on one export
    before it is killed and the export fails with one line."""
    text = os.environ.get("MNAS_EXPORT_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_EXPORT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UserError(f"MNAS_EXPORT_TIMEOUT={text[:40]!r} is not a positive number of seconds; set e.g. "
                        f"MNAS_EXPORT_TIMEOUT=600, or unset it for the default of {DEFAULT_EXPORT_TIMEOUT_S:g} s")
    return value


def arch_file(arch: Architecture, target: Target, folder: Path, backend: Backend) -> Path:
    """Where the file of `arch` for `target` lives (reused once written)."""
    return folder / f"{arch.id}_{backend.name}_r{target.resolution}_b{target.batch}_c{target.num_classes}{backend.suffix}"


def export_arch(arch: Architecture, target: Target, path: Path) -> Path:
    """Build `arch` with the target's class count and write the backend's file (atomically: a
    half-written file never poses as a model)."""
    from mnas.model import build_model  # lazy: measuring processes never build torch models

    if path.exists():
        return path
    backend = get_backend(target.backend)
    module = build_model(arch, num_classes=target.num_classes, dropout=0.0)
    return export_module(module, target, path, backend)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` next to `path`, then rename (`mnas.paths.write_via`): a reader never sees half
    a model file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_via(path, write)


def export_module(module: Any, target: Target, path: Path, backend: Backend) -> Path:
    return _write_atomically(path, lambda tmp: backend.export(module, tmp, target))


def export_pack(units: Sequence[Unit], target: Target, path: Path) -> Path:
    """One file holding every unit (atomically)."""
    backend = get_backend(target.backend)
    return _write_atomically(path, lambda tmp: backend.export_pack(units, tmp, target))


def _run_job(job: dict[str, Any]) -> tuple[str, float]:
    """(the file, CPU seconds its export took)."""
    target = Target.from_dict(job["target"])
    c0 = time.process_time()
    if job["kind"] == "arch":
        path = export_arch(Architecture.from_json(job["arch"]), target, Path(job["path"]))
    else:
        path = export_pack([unit_from_dict(u) for u in job["units"]], target, Path(job["path"]))
    return str(path), time.process_time() - c0


# ---- jobs and the pool -------------------------------------------------------------------------
class Job:
    """An export in progress: `result()` waits for it (or runs it here when there is no pool) and
    returns the file; `cpu_seconds` then says what the conversion cost."""

    def __init__(self, spec: dict[str, Any], inline: bool) -> None:
        self.spec = spec
        self.inline = inline
        self._done = threading.Event()
        self._value: tuple[str, float] | None = None
        self._error: str | None = None
        self.served: Callable[[], bool] = lambda: True  # False once no converter is left to do it

    def finish(self, value: tuple[str, float] | None, error: str | None = None) -> None:
        self._value, self._error = value, error
        self._done.set()

    def result(self) -> str:
        if self.inline and not self._done.is_set():
            self.finish(_run_job(self.spec))
        while not self._done.wait(1.0):  # each export is bounded by the converters' timeout
            if not self.served() and not self._done.is_set():
                self.finish(None, "no converter is left to do it (the pool was closed)")
        if self._error is not None or self._value is None:
            raise UserError(f"exporting {Path(self.spec['path']).name} failed: {self._error}")
        return self._value[0]

    @property
    def cpu_seconds(self) -> float:
        self.result()
        return self._value[1] if self._value is not None else 0.0


class Exporter:
    """Submit exports; with `workers == 0` they run in this process when their result is asked for."""

    def __init__(self, target: Target, workers: int, measuring: Sequence[int] = ()) -> None:
        self.target = target
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        self.threads: list[threading.Thread] = []
        self.timeout = export_timeout()
        self._closing = False
        backend = get_backend(target.backend)
        for i, (cpus, idle) in enumerate(placement(workers, measuring)):
            boot = json.dumps({"parent": os.getpid(), "backend": [backend.name, backend.module], "cpus": cpus,
                               "idle": idle})
            self.procs.append(self._start(boot))
            thread = threading.Thread(target=self._feed, args=(i, boot), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _start(boot: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "mnas.latency.measure.exporter", boot], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def _feed(self, index: int, boot: str) -> None:
        """Hand converter `index` one job at a time until the queue says stop. A converter that
        does not answer within `timeout` seconds is killed (its job fails with one line) and a
        fresh one takes the next job."""
        proc = self.procs[index]
        while True:
            job = self.jobs.get()
            if job is None:
                break
            if proc.poll() is not None and not self._closing:  # killed or died on an earlier job
                proc = self.procs[index] = self._start(boot)
            try:
                reply = self._ask(proc, job)
            except Exception as exc:  # never leave a job unanswered
                reply = {"error": f"the converter failed: {type(exc).__name__}: {exc}"}
            try:
                value = (str(reply["path"]), float(reply["cpu"])) if "path" in reply else None
            except (KeyError, TypeError, ValueError):
                value, reply = None, {"error": f"the converter answered {str(reply)[:100]}"}
            job.finish(value, None if value is not None else str(reply.get("error")))
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def _ask(self, proc: subprocess.Popen[str], job: Job) -> dict[str, Any]:
        """Send one job and read its answer, killing the converter after `timeout` seconds."""
        stdin: IO[str] | None = proc.stdin
        stdout: IO[str] | None = proc.stdout
        if stdin is None or stdout is None:
            return {"error": "the converter has no pipes"}
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            with contextlib.suppress(OSError):
                proc.kill()

        timer = threading.Timer(self.timeout, stop)
        timer.daemon = True
        timer.start()
        try:
            stdin.write(json.dumps(job.spec) + "\n")
            stdin.flush()
            line = stdout.readline()
        except OSError as exc:
            line, error = "", f"the converter failed: {exc}"
        else:
            error = f"the converter stopped (exit {proc.poll()})"
        finally:
            timer.cancel()
        if timed_out.is_set() or not line:  # reap it, so the next job starts a fresh converter
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=10)
        if timed_out.is_set():
            return {"error": f"no answer from the converter within {self.timeout:g} s, so it was stopped; a stuck "
                             "conversion? raise MNAS_EXPORT_TIMEOUT (seconds) if the model is just slow to convert"}
        if not line:
            return {"error": error}
        try:
            reply = json.loads(line)
        except ValueError:
            return {"error": f"the converter answered {line.strip()[:100]!r}"}
        return reply if isinstance(reply, dict) else {"error": f"the converter answered {line.strip()[:100]!r}"}

    def _submit(self, spec: dict[str, Any], path: Path) -> Job:
        job = Job(spec, inline=not self.procs or path.exists())
        if not job.inline:
            job.served = lambda: any(t.is_alive() for t in self.threads)
            self.jobs.put(job)
        return job

    def arch(self, arch: Architecture, path: Path) -> Job:
        return self._submit({"kind": "arch", "arch": arch.to_json(), "target": self.target.to_dict(),
                             "path": str(path)}, path)

    def pack(self, units: Sequence[Unit], path: Path) -> Job:
        return self._submit({"kind": "pack", "units": [unit_to_dict(u) for u in units],
                             "target": self.target.to_dict(), "path": str(path)}, path)

    def close(self, failed: bool = False) -> None:
        """Wait for the converters' work; on failure (or SIGTERM, Ctrl-C) stop them at once."""
        self._closing = failed
        if failed:
            for proc in self.procs:
                proc.kill()
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join(timeout=None if not failed else 5)
        for proc in self.procs:
            proc.wait()


def placement(workers: int, measuring: Sequence[int]) -> list[tuple[list[int], bool]]:
    """(cores, idle priority) per converter: the non-measuring cores first, at normal priority;
    the rest on the measuring cores (or anywhere) at idle priority."""
    others = [c for c in all_cores() if c not in measuring]
    out: list[tuple[list[int], bool]] = [([c], False) for c in others[:workers]]
    while len(out) < workers:
        out.append((list(measuring) or all_cores(), True))
    return out


def all_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def pool_size(jobs: int, backend: Backend, many: bool = False) -> int:
    """Background converters for `jobs` exports: one per core for slow converters (or for `many`
    exports, e.g. a table's packs, where the start-up pays off), else none."""
    if not (backend.parallel_export or many) or jobs < 2:
        return 0
    return max(1, min(jobs, len(all_cores())))


@contextlib.contextmanager
def exporter(target: Target, workers: int, measuring: Sequence[int] = ()) -> Iterator[Exporter]:
    """Converters for `target`'s files; `measuring`: the cores measurements are pinned to."""
    ex = Exporter(target, workers, measuring)
    try:
        yield ex
    except BaseException:
        ex.close(failed=True)
        raise
    ex.close()


# ---- a converter process -----------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """Convert jobs read from stdin, one JSON line each; answer one JSON line each on stdout."""
    boot = json.loads(argv[0])
    die_with_parent(boot["parent"])
    if boot.get("cpus") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(boot["cpus"]))
    if boot.get("idle"):
        idle_priority()
    register_backend(*boot["backend"])
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # converters print; keep the answer channel clean
    for line in sys.stdin:
        job: dict[str, Any] = json.loads(line)
        try:
            path, cpu = _run_job(job)
            reply: dict[str, Any] = {"path": path, "cpu": cpu}
        except Exception as exc:  # a bad model: report it, keep converting the others
            reply = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
        answers.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["DEFAULT_EXPORT_TIMEOUT_S", "Exporter", "Job", "arch_file", "export_arch", "export_module", "export_pack",
           "export_timeout", "exporter", "pool_size"]
