"""Repeatability of absolute vs relative latency, and the zoo side by side.

Writes docs/benchmarks/latency.md (keeping the lookup-table section that benchmarks/lut.py owns).

Repeatability (the latency issue's bar: relative CV <= 2%, five fresh calls within +-2% of their
median): every model is measured with `--calls` fresh `mnas latency measure NAME --fresh --json`
calls (new processes each time, as a user would), on a quiet machine and again while a busy
process keeps every other core loaded (`--busy`). Per model: the CV over the calls of the
candidate's own absolute time (`raw_ms`, what the protocol reported before reference
interleaving) and of the relative figure (candidate / mobilenet_v2 timed in the same processes),
side by side, and the largest deviation of a call from the median.

    python benchmarks/latency.py                                  # 5 models x 5 calls, quiet + busy
    python benchmarks/latency.py --models mnasnet_a1,mobilenet_v2 --calls 2 --busy quiet --doc /tmp/x.md
    python benchmarks/latency.py --zoo                            # also the zoo table per backend
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnas import zoo
from mnas.latency.backends.base import cpu_name
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.measuring import cores, measure_cpus, measure_many, reference_latency
from mnas.latency.target import Target

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "latency.md"
LUT_HEADING = "\n## Lookup-table accuracy and build time"
READING = "**Reading.**"  # where the hand-written part of the repeatability section starts
MODELS = "mnasnet_a1,mobilenet_v2,mnasnet_b1,mnasnet_small,a1_mbconv6_k5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="onnxruntime,litert")
    ap.add_argument("--models", default=MODELS, help="zoo names for the repeatability study")
    ap.add_argument("--calls", type=int, default=5, help="fresh measure calls per model (>= 5 for the bar)")
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--busy", default="quiet,busy", help="conditions: quiet, busy (other cores loaded), or both")
    ap.add_argument("--zoo", action="store_true", help="also the zoo side by side per backend")
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    conditions = [c.strip() for c in args.busy.split(",") if c.strip()]
    if args.calls < 2 or any(c not in ("quiet", "busy") for c in conditions):
        raise SystemExit("--calls must be >= 2 and --busy a list of quiet, busy")
    info = {"start": _now(), "load_start": os.getloadavg(), "cpu": cpu_name(), "cores": len(cores()),
            "pinned": measure_cpus(1)}
    with tempfile.TemporaryDirectory(prefix="mnas-bench-") as tmp:
        cache_dir = Path(tmp) / "cache"
        repeat: dict[tuple[str, str, str], dict[str, Any]] = {}
        refs: dict[str, Any] = {}
        for b in backends:
            # the reference latency: measured once per target (full protocol), before any call
            refs[b] = reference_latency(Target(backend=b), cache=LatencyCache(cache_dir / "latency.sqlite"))
            for cond in conditions:
                with _busy_other_cores(cond == "busy"):
                    for name in models:
                        repeat[(b, cond, name)] = _calls(name, b, args.calls, args.processes, cache_dir)
                        print(b, cond, name, _summary(repeat[(b, cond, name)]), flush=True)
        zoo_rows = _zoo(backends, args.processes, LatencyCache(cache_dir / "latency.sqlite")) if args.zoo else None
    info.update(end=_now(), load_end=os.getloadavg())
    write_doc(args.doc, backends, models, conditions, repeat, refs, zoo_rows, info, args)


def _calls(name: str, backend: str, calls: int, processes: int, cache_dir: Path) -> dict[str, Any]:
    """`calls` fresh CLI measurements of one model: what a user sees, each in new processes."""
    rows = []
    for _ in range(calls):
        t = time.time()
        proc = subprocess.run([sys.executable, "-m", "mnas", "latency", "measure", name, "-b", backend, "--fresh",
                               "--json", "-p", str(processes)], capture_output=True, text=True,
                              env={**os.environ, "MNAS_CACHE_DIR": str(cache_dir)}, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"measure {name} on {backend} failed: {proc.stderr.strip().splitlines()[-1:]}")
        d = json.loads(proc.stdout)
        rows.append({"relative": d["relative"], "raw_ms": d["raw_ms"], "ms": d["median_ms"], "seconds": time.time() - t,
                     "processes": d["processes"], "stable": d["stable"], "preempted": d["preempted_fraction"]})
    return {"rows": rows, "relative": _stats([r["relative"] for r in rows]), "raw": _stats([r["raw_ms"] for r in rows])}


def _stats(values: list[float]) -> dict[str, float]:
    mid = statistics.median(values)
    return {"median": mid, "cv": statistics.pstdev(values) / statistics.fmean(values),
            "max_dev": max(abs(v / mid - 1) for v in values)}


def _summary(r: dict[str, Any]) -> str:
    return (f"relative {r['relative']['median']:.4f} cv {100 * r['relative']['cv']:.2f}% | "
            f"raw {r['raw']['median']:.3f} ms cv {100 * r['raw']['cv']:.2f}%")


@contextlib.contextmanager
def _busy_other_cores(on: bool) -> Iterator[None]:
    """A process spinning on every core but the measuring one (the issue's 'another process keeps
    the other core busy')."""
    if not on:
        yield
        return
    others = [c for c in cores() if c not in measure_cpus(1)] or cores()
    code = f"import os; os.sched_setaffinity(0, {set(others)!r})\nwhile True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in others]
    try:
        time.sleep(1.0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _zoo(backends: list[str], processes: int, cache: LatencyCache) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    names = zoo.list()
    for b in backends:
        for res in sorted({zoo.resolution(n) for n in names}):
            group = [n for n in names if zoo.resolution(n) == res]
            t = time.time()
            results = measure_many([zoo.get(n) for n in group], Target(backend=b, resolution=res), processes=processes,
                                   cache=cache, fresh=True)
            per = (time.time() - t) / len(group)
            for n, r in zip(group, results, strict=True):
                rows.setdefault(n, {"resolution": res})[b] = {"ms": r.median_ms, "relative": r.relative,
                                                              "raw_ms": r.raw_ms, "seconds": per}
    return rows


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_doc(doc: Path, backends: list[str], models: list[str], conditions: list[str],
              repeat: dict[tuple[str, str, str], dict[str, Any]], refs: dict[str, Any], zoo_rows: dict[str, Any] | None,
              info: dict[str, Any], args: argparse.Namespace) -> None:
    lines = ["# Latency benchmarks", "",
             "Written by `benchmarks/latency.py` (repeatability, zoo) and `benchmarks/lut.py` (lookup tables). "
             "Protocol: every measuring process is pinned to one core and times the candidate and the reference "
             "network (mobilenet_v2 at the target's resolution) in alternation, one inference each; >= 30 warm-up "
             "rounds and >= 0.5 s, >= 60 timed rounds; >= 3 processes. `relative` = median over the process's "
             "calls of candidate / mean of the two reference calls around it, then the median of the 3 "
             "per-process ratios that lie closest together; ms = relative x the reference's latency on the "
             "target (measured once with the full protocol, cached). `raw ms` = the candidate's own absolute "
             "time (median of the 3 fastest per-process medians), i.e. what the protocol reported before.", "",
             "## Conditions", "",
             f"- run: {info['start']} to {info['end']}",
             f"- CPU: {info['cpu']}, {info['cores']} cores visible; measuring pinned to core(s) {info['pinned']}; "
             f"load average {info['load_start'][0]:.1f} at start, {info['load_end'][0]:.1f} at end",
             "- runtimes: " + ", ".join(Target(backend=b).runtime_version for b in backends),
             "- busy: " + ("a process spinning on every other core during those calls" if "busy" in conditions
                           else "not run")]
    for b in backends:
        r = refs[b]
        lines.append(f"- reference on {b}: mobilenet_v2 = {r.ms:.3f} ms at 224 px, measured {r.date}, "
                     f"{r.spread_text()}")
    lines += ["", "## Repeatability: absolute vs relative", "",
              f"{args.calls} fresh `mnas latency measure NAME -b BACKEND --fresh --json` calls per model "
              "(new processes each call). CV over the calls; max dev = the largest |call / median - 1|. "
              "The bar: relative within +-2% of the median in every call (and CV <= 2%).", "",
              "| backend | condition | model | raw ms (median) | raw CV | raw max dev | relative (median) | "
              "relative CV | relative max dev | within +-2% | s per call |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (b, cond, name), r in repeat.items():
        ok = r["relative"]["max_dev"] <= 0.02
        secs = statistics.median(x["seconds"] for x in r["rows"])
        lines.append(f"| {b} | {cond} | {name} | {r['raw']['median']:.3f} | {100 * r['raw']['cv']:.2f}% | "
                     f"{100 * r['raw']['max_dev']:.1f}% | {r['relative']['median']:.4f} | "
                     f"{100 * r['relative']['cv']:.2f}% | {100 * r['relative']['max_dev']:.1f}% | "
                     f"{'yes' if ok else 'no'} | {secs:.0f} |")
    lines += ["", "Every call (relative / raw ms):", ""]
    for (b, cond, name), r in repeat.items():
        lines.append(f"- {b} {cond} {name}: " + ", ".join(f"{x['relative']:.4f} / {x['raw_ms']:.2f}" for x in r["rows"]))
    old = doc.read_text() if doc.exists() else ""
    generated = old[:old.index(LUT_HEADING)] if LUT_HEADING in old else old
    if READING in generated:  # hand-written readings (and other hosts' runs) stay below the new tables
        kept = generated[generated.index(READING):]
        lines += ["", kept[:kept.index("\n## ")] if "\n## " in kept else kept.rstrip("\n")]
    if zoo_rows:
        lines += ["", "## The zoo side by side", "",
                  "| model | input | " + " | ".join(f"{b} ms | {b} x mobilenet_v2" for b in backends) + " |",
                  "|---|---|" + "---|---|" * len(backends)]
        for name, row in zoo_rows.items():
            lines.append(f"| {name} | {row['resolution']} | " + " | ".join(
                f"{row[b]['ms']:.2f} | {row[b]['relative']:.3f}" for b in backends) + " |")
    if LUT_HEADING in old:
        lut = old[old.index(LUT_HEADING):].rstrip("\n") + "\n"  # the LUT section and its notes, owned by lut.py
    else:
        lut = f"{LUT_HEADING}\n\nRun `python benchmarks/lut.py` to add rows.\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n" + lut)
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
