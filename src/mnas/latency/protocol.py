"""The measurement protocol (measured here to give 1-3% spread between processes).

Each candidate is timed in >= 3 separate processes, interleaved with the other candidates (so a
slow period of the machine hits all of them alike). Inside a process: pin to one core per thread,
warm up >= 30 iterations and >= 0.5 s, time >= 60 iterations, and flag every iteration whose
process CPU time / wall time is below 0.9 (the process was preempted: a job on the same core
doubles latency at a clean-looking 0.6% CV). When more than 10% are flagged the timed loop is run
again (a bounded number of times) and the cleanest attempt kept. The result is the median of the
per-process medians, with the flagged fraction reported.

The CPU-time check cannot see a slow period caused outside this machine's scheduler (on a shared
virtual machine the other tenant sits on the host and slows a whole process by 10-40% at a clean
CPU/wall ratio). Such slowdowns only ever add time, so the `processes` fastest per-process medians
must agree within `max_spread` (5%); when they do not, the candidate gets another interleaved
round, up to `max_processes`, and the result is the median of those fastest processes (flagged
`stable=False` if they never agreed). On a quiet machine this is the plain median of medians.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mnas.errors import UserError
from mnas.latency.result import LatencyResult, ProcessSample, consensus, summarise
from mnas.latency.target import Target

if TYPE_CHECKING:
    from torch import nn

    from mnas.latency.backends.base import Runner
    from mnas.latency.cache import LatencyCache
    from mnas.space import Architecture


@dataclass(frozen=True)
class Protocol:
    """The knobs; the defaults are the minimums of the protocol (raising them is fine)."""

    warmup_iters: int = 30
    warmup_s: float = 0.5
    iters: int = 60
    preempt_ratio: float = 0.9
    max_flagged: float = 0.10
    retries: int = 2
    worker_timeout_s: float = 900.0
    max_spread: float = 0.05
    max_processes: int = 9


DEFAULT = object()  # "use the default cache"


# ---- inside a measuring process ---------------------------------------------------------------
def pin(cpus: Sequence[int]) -> None:
    """Pin this process to `cpus` (best effort where sched_setaffinity is missing)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


def time_runner(runner: "Runner", protocol: Protocol = Protocol()) -> ProcessSample:
    """Warm up, then time iterations. Iterations that look preempted are set aside; when more
    than `max_flagged` of an attempt is flagged, time another attempt (at most `retries` more)
    until `iters` clean iterations exist. The statistics use the clean iterations (all of them
    if fewer than half of `iters` are clean); the flagged fraction is reported."""
    t_end = time.perf_counter() + protocol.warmup_s
    i = 0
    while i < protocol.warmup_iters or time.perf_counter() < t_end:
        runner.run()
        i += 1
    every: list[float] = []
    clean: list[float] = []
    attempts = 0
    for attempts in range(1, protocol.retries + 2):
        times, flags = _timed_loop(runner, protocol)
        every += times
        clean += [t for t, f in zip(times, flags) if not f]
        if sum(flags) / len(flags) <= protocol.max_flagged or len(clean) >= protocol.iters:
            break
    use = clean if len(clean) >= protocol.iters // 2 else every
    sample = ProcessSample.from_times(use, 1 - len(clean) / len(every), attempts)
    sample.runs = len(every)
    return sample


def _timed_loop(runner: "Runner", protocol: Protocol) -> tuple[list[float], list[bool]]:
    wall, cpu = time.perf_counter_ns, time.process_time_ns
    times: list[float] = []
    flags: list[bool] = []
    for _ in range(protocol.iters):
        w0, c0 = wall(), cpu()
        device_ms = runner.device_timer() if runner.device_timer else None
        if device_ms is None:
            runner.run()
        w1, c1 = wall(), cpu()
        dw = max(w1 - w0, 1)
        flags.append((c1 - c0) / dw < protocol.preempt_ratio)
        times.append(device_ms if device_ms is not None else dw / 1e6)
    return times, flags


# ---- the orchestrating process ----------------------------------------------------------------
def measure_cpus(threads: int) -> list[int]:
    """Cores to pin to: $MNAS_LATENCY_CPUS ("3" or "2,3"), else the last `threads` allowed cores
    (core 0 usually takes most interrupts)."""
    env = os.environ.get("MNAS_LATENCY_CPUS")
    if env:
        try:
            return [int(c) for c in env.split(",") if c.strip()]
        except ValueError:
            raise UserError(f"MNAS_LATENCY_CPUS={env!r} is not a comma-separated list of core numbers") from None
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return allowed[-threads:] if allowed else []


def run_worker(path: Path, target: Target, protocol: Protocol = Protocol(),
               cpus: Sequence[int] | None = None, pack: int = 0) -> Any:
    """Time one exported model in a fresh process (python -m mnas.latency.worker): a
    ProcessSample, or with `pack=K` a list of K (one per unit of a latency-table pack)."""
    cpus = list(cpus) if cpus is not None else measure_cpus(target.threads)
    with tempfile.TemporaryDirectory(prefix="mnas-lat-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({"path": str(path), "target": target.to_dict(),
                                   "protocol": asdict(protocol), "cpus": cpus, "pack": pack}))
        try:
            proc = subprocess.run([sys.executable, "-m", "mnas.latency.worker", str(job), str(out)],
                                  capture_output=True, text=True, timeout=protocol.worker_timeout_s)
        except subprocess.TimeoutExpired:
            raise UserError(f"measuring {path.name} took over {protocol.worker_timeout_s:.0f} s; "
                            "the model is too large for this target or the machine is overloaded") from None
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            raise UserError(f"the {target.backend} worker failed on {path.name}: {why}")
        data = json.loads(out.read_text())
        if pack:
            return [ProcessSample(**d) for d in data]
        return ProcessSample(**data)


def _resolve_cache(cache: Any) -> "LatencyCache | None":
    if cache is DEFAULT:
        from mnas.latency.cache import LatencyCache

        return LatencyCache()
    return cache


def _is_arch(item: Any) -> bool:
    from mnas.space import Architecture

    return isinstance(item, Architecture)


def export_for(item: "Architecture | nn.Module", target: Target, folder: Path, name: str) -> Path:
    """The model file the target's runtime loads (reused when already exported)."""
    from mnas.latency.backends import get_backend

    backend = get_backend("litert" if target.backend == "android" else target.backend)
    suffix = backend.suffix
    if _is_arch(item):
        path = folder / f"{item.id}_{backend.name}_r{target.resolution}_b{target.batch}_c{target.num_classes}{suffix}"
        if path.exists():
            return path
        from mnas.model import build_model

        module = build_model(item, num_classes=target.num_classes, dropout=0.0)
    else:
        path = folder / f"{name}{suffix}"
        module = item
    tmp = path.with_name(f".{os.getpid()}_{path.name}")
    backend.export(module, tmp, target)
    os.replace(tmp, path)  # atomic: a half-written file never poses as a model
    return path


def measure_many(items: Sequence["Architecture | nn.Module"], target: Target, *, processes: int = 3,
                 fresh: bool = False, cache: Any = DEFAULT, protocol: Protocol = Protocol(),
                 on_result: Callable[[int, LatencyResult], None] | None = None) -> list[LatencyResult]:
    """Measure every item with the protocol; processes are interleaved across the items.

    Architectures are looked up in (and stored to) the cache; modules are always measured.
    """
    if processes < 1:
        raise UserError(f"processes must be >= 1 (got {processes}); the protocol asks for 3")
    from mnas.latency.backends import get_backend

    backend = get_backend(target.backend)
    db = _resolve_cache(cache)
    results: list[LatencyResult | None] = [None] * len(items)
    todo: list[int] = []
    for i, item in enumerate(items):
        if db is not None and not fresh and _is_arch(item):
            hit = db.get(item.id, target)
            if hit is not None:
                results[i] = hit
                if on_result:
                    on_result(i, hit)
                continue
        todo.append(i)
    if todo:
        reason = backend.unavailable()
        if reason:
            raise UserError(f"backend {target.backend} cannot run here: {reason}")
        with tempfile.TemporaryDirectory(prefix="mnas-models-") as tmp:
            keep = db.models_dir if db is not None else Path(tmp)  # architectures' files are reused
            paths = {i: export_for(items[i], target, keep if _is_arch(items[i]) else Path(tmp), f"model{i}")
                     for i in todo}
            samples = _interleaved(paths, target, processes, protocol, backend)
        for i in todo:
            arch_id = items[i].id if _is_arch(items[i]) else None
            res = summarise(samples[i], target, arch_id, use=processes, max_spread=protocol.max_spread)
            if db is not None and arch_id is not None:
                db.put(arch_id, res)
            results[i] = res
            if on_result:
                on_result(i, res)
    return [r for r in results if r is not None]


def _interleaved(paths: dict[int, Path], target: Target, processes: int, protocol: Protocol,
                 backend: Any) -> dict[int, list[ProcessSample]]:
    """`processes` rounds over all candidates, then further rounds over those whose fastest
    `processes` medians disagree (see `consensus`), until they agree or reach `max_processes`."""
    order = list(paths)
    if target.backend == "android":
        samples = backend.measure_files(paths, target, processes, protocol)
    else:
        samples = {i: [] for i in order}
        cpus = measure_cpus(target.threads)
        for p in range(processes):
            k = p % len(order)
            for i in order[k:] + order[:k]:  # rotate: no candidate always runs first
                samples[i].append(run_worker(paths[i], target, protocol, cpus))
    while True:
        again = [i for i in order if len(samples[i]) < protocol.max_processes
                 and not consensus([s.median_ms for s in samples[i]], processes, protocol.max_spread)[1]]
        if not again:
            return samples
        if target.backend == "android":
            extra = backend.measure_files({i: paths[i] for i in again}, target, 1, protocol)
        else:
            extra = {i: [run_worker(paths[i], target, protocol, cpus)] for i in again}
        for i in again:
            samples[i] += extra[i]


def measure(item: "Architecture | nn.Module", target: Target | None = None, *, processes: int = 3,
            fresh: bool = False, cache: Any = DEFAULT, protocol: Protocol = Protocol()) -> LatencyResult:
    """Latency of one architecture or module on `target` (default: LiteRT, 1 thread, 224)."""
    return measure_many([item], target or Target(), processes=processes, fresh=fresh, cache=cache,
                        protocol=protocol)[0]

