"""The zoo on litert, onnxruntime and torch side by side; repeatability and cost per backend.

Writes docs/benchmarks/latency.md (keeping the lookup-table section that benchmarks/lut.py owns).
    python benchmarks/latency.py                      # everything (run on a quiet machine)
    python benchmarks/latency.py --quick              # reduced: fewer models, 1 repeat
Measurements use the protocol (3 processes, pinned core, 1 thread) with a private cache, so
every number here was measured by this run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

from scipy.stats import kendalltau

from mnas import zoo
from mnas.latency import LatencyCache, Target, measure, measure_many
from mnas.latency.target import _cpu_name
from mnas.profile import profile

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "latency.md"
BEGIN, END = "<!-- lut:begin -->", "<!-- lut:end -->"
TABLE6 = ["a1_mbconv3_k3", "a1_mbconv3_k5", "mnasnet_a1", "a1_mbconv6_k3", "a1_mbconv6_k5"]
WIDTHS = [0.35, 0.5, 0.75, 1.0, 1.4]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="litert,onnxruntime,torch")
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="repeated measure calls for repeatability")
    ap.add_argument("--quick", action="store_true", help="fewer models and repeats (a smoke run)")
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    models = [(n, zoo.get(n), zoo.resolution(n)) for n in zoo.list()]
    models += [(f"mnasnet_a1_x{w:g}", zoo.get("mnasnet_a1", w), 224) for w in WIDTHS if w != 1.0]
    if args.quick:
        keep = {"mobilenet_v2", "mnasnet_b1", "mnasnet_a1", "a1_mbconv3_k3", "a1_mbconv6_k5", "mnasnet_a1_x0.5"}
        models = [m for m in models if m[0] in keep]
        args.repeats = min(args.repeats, 2)
    conditions = {"start": _now(), "load_start": os.getloadavg(), "cpu": _cpu_name(),
                  "cores": len(os.sched_getaffinity(0))}

    with tempfile.TemporaryDirectory(prefix="mnas-bench-") as tmp:
        cache = LatencyCache(Path(tmp) / "lat.sqlite")
        lat: dict[str, dict[str, object]] = {}
        cost: dict[str, dict[str, float]] = {}
        for b in backends:
            lat[b] = {}
            for res in sorted({r for _, _, r in models}):
                group = [m for m in models if m[2] == res]
                t = time.time()
                results = measure_many([a for _, a, _ in group], Target(backend=b, resolution=res),
                                       processes=args.processes, cache=cache)
                cost.setdefault(b, {"seconds": 0.0, "models": 0})
                cost[b]["seconds"] += time.time() - t
                cost[b]["models"] += len(group)
                for (name, _, _), r in zip(group, results):
                    lat[b][name] = r
        repeat = _repeatability(backends, args.repeats, args.processes, cache)
    conditions.update(end=_now(), load_end=os.getloadavg())
    write_doc(args.doc, models, backends, lat, cost, repeat, conditions, args)


def _repeatability(backends, repeats, processes, cache):
    """Repeated fresh `measure` calls of two networks: spread between calls, and the cost of a
    call with the converted file already on disk."""
    out = {}
    for b in backends:
        for name in ("mobilenet_v2", "mnasnet_a1"):
            arch = zoo.get(name)
            meds, secs = [], []
            for _ in range(repeats):
                t = time.time()
                r = measure(arch, Target(backend=b), processes=processes, cache=cache, fresh=True)
                secs.append(time.time() - t)
                meds.append(r.median_ms)
                pre = r.preempted_fraction
            out[(b, name)] = {"medians": meds, "spread": (max(meds) - min(meds)) / statistics.median(meds),
                              "seconds": statistics.median(secs), "preempted": pre}
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_doc(doc, models, backends, lat, cost, repeat, cond, args) -> None:
    lines = ["# Latency benchmarks", "",
             "Written by `benchmarks/latency.py` (zoo, repeatability, cost) and `benchmarks/lut.py` "
             "(lookup tables). Protocol: each network in "
             f"{args.processes} separate processes interleaved with the others, pinned to one core, one "
             "thread, >= 30 warm-up iterations and >= 0.5 s, >= 60 timed iterations; median of the "
             "per-process medians. Batch 1, fp32.", "",
             "## Conditions", "",
             f"- run: {cond['start']} to {cond['end']}{' (--quick: reduced model set)' if args.quick else ''}",
             f"- CPU: {cond['cpu']}, {cond['cores']} cores visible; "
             f"load average {cond['load_start'][0]:.1f} at start, {cond['load_end'][0]:.1f} at end",
             f"- runtimes: " + ", ".join(Target(backend=b).runtime_version for b in backends),
             ]
    if cond["load_start"][0] > 1.5 or cond["load_end"][0] > 1.5:
        lines += ["- **the machine was shared with other jobs during this run**: absolute numbers are "
                  "inflated and noisy (see the preempted column); rerun on a quiet machine for "
                  "publishable numbers."]
    lines += ["", "## The zoo side by side", ""]
    head = "| model | input | params (M) | MACs (M) | " + " | ".join(f"{b} ms" for b in backends)
    head += " | " + " | ".join(f"{b} preempted" for b in backends) + " |"
    lines += [head, "|" + "---|" * (4 + 2 * len(backends))]
    macs = {}
    for name, arch, res in models:
        p = profile(arch, resolution=res)
        macs[name] = p.macs
        lines.append(f"| {name} | {res} | {p.params / 1e6:.2f} | {p.macs / 1e6:.0f} | "
                     + " | ".join(f"{lat[b][name].median_ms:.2f}" for b in backends) + " | "
                     + " | ".join(f"{100 * lat[b][name].preempted_fraction:.0f}%" for b in backends) + " |")
    lines += ["", "## What the numbers say", ""]
    names = [m[0] for m in models]
    for b in backends:
        t6 = [n for n in TABLE6 if n in lat[b]]
        order = sorted(t6, key=lambda n: lat[b][n].median_ms)
        ok = len(t6) < 3 or (order[0] == "a1_mbconv3_k3" and order[-1] == "a1_mbconv6_k5"
                             and order.index("mnasnet_a1") not in (0, len(order) - 1))
        lines.append(f"- **{b}**, table-6 order fastest to slowest: {' < '.join(order)} — "
                     f"{'agrees with' if ok else 'differs from'} the paper (MBConv3-k3-only fastest, "
                     "MBConv6-k5-only slowest, A1 in between).")
        if "mnasnet_b1" in lat[b] and "mobilenet_v2" in lat[b]:
            ratio = lat[b]["mnasnet_b1"].median_ms / lat[b]["mobilenet_v2"].median_ms
            lines.append(f"  mnasnet_b1 / mobilenet_v2 = {ratio:.2f} (MACs ratio "
                         f"{macs['mnasnet_b1'] / macs['mobilenet_v2']:.2f}).")
        tau = kendalltau([macs[n] for n in names], [lat[b][n].median_ms for n in names]).statistic
        lines.append(f"  Kendall tau between MACs and {b} latency over the zoo: {tau:.2f}.")
    for i, a in enumerate(backends):
        for b in backends[i + 1:]:
            tau = kendalltau([lat[a][n].median_ms for n in names], [lat[b][n].median_ms for n in names]).statistic
            lines.append(f"- Kendall tau between {a} and {b} rankings: {tau:.2f}.")
    lines += ["", "## Repeatability and cost per backend", "",
              f"Each network measured {args.repeats} times with `fresh=True` (new processes each time, "
              "converted file reused). Spread = (max - min) / median of the repeated results. Cost of the "
              "zoo pass = wall time of `measure_many` per network, conversion included.", "",
              "| backend | network | repeated medians (ms) | spread | s per measure call (file cached) | "
              "s per network incl. conversion |", "|---|---|---|---|---|---|"]
    for (b, name), r in repeat.items():
        per = cost[b]["seconds"] / max(cost[b]["models"], 1)
        lines.append(f"| {b} | {name} | {', '.join(f'{m:.2f}' for m in r['medians'])} | "
                     f"{100 * r['spread']:.1f}% | {r['seconds']:.1f} | {per:.1f} |")
    old = doc.read_text() if doc.exists() else ""
    lut = ""
    if BEGIN in old and END in old:
        start = old.rfind("\n## ", 0, old.index(BEGIN))
        lut = old[start:].rstrip("\n") + "\n"  # the LUT section and its notes, owned by lut.py
    else:
        lut = ("\n## Lookup-table accuracy and build time\n\nRun `python benchmarks/lut.py` to add rows.\n\n"
               f"{BEGIN}\n{END}\n")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n" + lut)
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
