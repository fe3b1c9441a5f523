"""Build latency lookup tables and validate each twice, independently; record build time (and where
it goes) and accuracy in docs/benchmarks/latency.md (section "Lookup-table accuracy and build time",
between the `lut2` markers, one row per table).

The latency issue's bar, per table: MAPE <= 3%, Kendall tau >= 0.95, 100% of 100 random
architectures within +-10%, in two validation runs whose ground truths agree within 2% MAPE; the
LiteRT table built in <= 1 hour. Each validation run measures the same random architectures
afresh (new processes; the exported files are reused) against the table's reference network, as
the table was built.

Full run (on a quiet machine; about 1 h per backend plus 2 x 100 validation models):
    python benchmarks/lut.py --backends onnxruntime,litert --space mnasnet --samples 100
Smoke run (a few units, seconds to minutes):
    python benchmarks/lut.py --backends onnxruntime --space mnasnet_cifar --units 12 --samples 3 \\
        --calibration 3 --doc /tmp/lut.md
Reduced run (only the units the calibration and validation architectures use):
    python benchmarks/lut.py --reduced --samples 20 --calibration 12
Refit the calibration of built tables and re-score their validations from the cached ground truth
(after a change to `mnas.latency.tables.calibration`, or with more calibration networks: only those not
cached are measured):
    python benchmarks/lut.py --backends onnxruntime --space mnasnet --recalibrate
Refine a built table first (`mnas latency refine-lut`: every layer timed in at least N processes,
in new packs), then refit and re-score as above:
    python benchmarks/lut.py --backends onnxruntime --space mnasnet --recalibrate --refine 6
Validate a built table afresh on other random architectures (an out-of-sample check of choices
made while looking at the first validation set):
    python benchmarks/lut.py --backends onnxruntime --space mnasnet --revalidate --seed 1777
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path
from typing import Any

from mnas.architecture import Architecture
from mnas.latency.backends.base import cpu_name
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.measuring import measure_many
from mnas.latency.tables.build import build_lut, calibrate, calibration_archs, refine_lut
from mnas.latency.tables.plot import scatter
from mnas.latency.tables.predict import LatencyTable
from mnas.latency.tables.units import arch_units, space_units
from mnas.latency.tables.validate import Validation, evaluate, validate_lut, validation_archs
from mnas.latency.target import Target
from mnas.space import SearchSpace

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "latency.md"
HEADING = "## Lookup-table accuracy and build time"
BEGIN, END = "<!-- lut2:begin -->", "<!-- lut2:end -->"
HEADER = ("| date | backend | space | units | build | layers: export CPU / waiting / measuring | calibration | "
          "validation 1: MAPE / tau / within 10% | validation 2: MAPE / tau / within 10% | ground truths agree "
          "(MAPE, within 2%) | bar met | load avg |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="onnxruntime,litert")
    ap.add_argument("--space", default="mnasnet")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--pack-size", type=int, default=None)
    ap.add_argument("--validations", type=int, default=2, help="independent validation runs")
    ap.add_argument("--reduced", action="store_true",
                    help="measure only the units the calibration and validation architectures use")
    ap.add_argument("--units", type=int, default=None, help="measure only the first N units (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the tables (default: $MNAS_CACHE_DIR/luts/)")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--recalibrate", action="store_true",
                    help="refit the calibration of the built table from cached measurements, re-score the validations")
    ap.add_argument("--refine", type=int, default=0,
                    help="with --recalibrate: first time every layer in at least this many processes (refine-lut)")
    ap.add_argument("--revalidate", action="store_true",
                    help="validate the built table afresh (--validations runs of --samples architectures)")
    ap.add_argument("--seed", type=int, default=777, help="seed of the random validation architectures")
    args = ap.parse_args()
    space = SearchSpace.load(args.space)
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        mode = recalibrate if args.recalibrate else revalidate if args.revalidate else run
        row = mode(space, backend, args)
        print({k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
        write_row(args.doc, row)


def _table_path(space: SearchSpace, backend: str, args: argparse.Namespace) -> tuple[Target, LatencyCache, Path]:
    target = Target(backend=backend, threads=args.threads, resolution=args.resolution or space.resolution,
                    num_classes=args.num_classes)
    cache = LatencyCache()
    folder = args.out or cache.path.parent / "luts"
    return target, cache, folder / f"{space.name}_{backend}_{target.fingerprint}.json"


def run(space: SearchSpace, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    target, cache, out = _table_path(space, backend, args)
    all_units = space_units(space, target.resolution, target.num_classes)
    units = all_units
    if args.reduced:
        wanted = {u.key for a in calibration_archs(space, args.calibration, resolution=target.resolution)
                  + validation_archs(space, args.samples, resolution=target.resolution)
                  for u in arch_units(a, target.resolution, target.num_classes)}
        units = [u for u in all_units if u.key in wanted]
    if args.units:
        units = units[:args.units]
    load = os.getloadavg()[0]
    t0 = time.time()
    table = build_lut(space, target, out, processes=args.processes, calibration=args.calibration,
                      pack_size=args.pack_size, cache=cache, units=units, force=True)
    build_s = time.time() - t0
    validations: list[Validation] = []
    for k in range(args.validations):  # independent: every run measures afresh (the files are reused)
        validations.append(validate_lut(LatencyTable.load(out), args.samples, processes=args.processes,
                                        cache=cache, fresh=True, plot=out.with_suffix(f".validation{k + 1}.png"),
                                        seed=args.seed))
    return _row(space, table, out, build_s, validations, partial=len(units) < len(all_units), load=load,
                calibration=f"{args.calibration} models, {table.build.get('calibration_s', 0.0):.0f} s", seed=args.seed,
                truth_processes=args.processes)


def revalidate(space: SearchSpace, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """The built table as it is, validated `--validations` times afresh on seed `--seed`."""
    target, cache, out = _table_path(space, backend, args)
    table = LatencyTable.load(out)
    load = os.getloadavg()[0]
    validations = [validate_lut(table, args.samples, processes=args.processes, cache=cache, fresh=True,
                                seed=args.seed, plot=out.with_suffix(f".seed{args.seed}.validation{k + 1}.png"))
                   for k in range(args.validations)]
    covered, total = table.coverage(space)
    c = table.calibration
    return _row(space, table, out, table.build["seconds"], validations, partial=covered < total, load=load,
                calibration=f"{c.get('samples', 0)} models (as in the table); validated afresh", seed=args.seed,
                truth_processes=args.processes)


def _row(space: SearchSpace, table: LatencyTable, out: Path, build_s: float, validations: list[Validation], *,
         partial: bool, load: float, calibration: str, seed: int = 777, truth_processes: int = 3) -> dict[str, Any]:
    target = table.target
    all_units = space_units(space, target.resolution, target.num_classes)
    b = table.build
    per_unit = b["layer_seconds"] / max(len(table.entries), 1)
    row: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "backend": target.backend, "space": space.name,
        "resolution": target.resolution, "units": len(table.entries), "space_units": len(all_units),
        "partial": partial, "build_s": build_s, "layer_s": b["layer_seconds"],
        "full_table_estimate_s": per_unit * len(all_units) + (build_s - b["layer_seconds"]),
        "export_cpu_s": b.get("export_cpu_s", 0.0), "wait_s": b.get("wait_s", 0.0), "measure_s": b.get("measure_s", 0.0),
        "export_workers": b.get("export_workers", 0), "calibration": calibration,
        "calibration_model": table.calibration.get("model", "scale, per unit, offset"),
        "fit_mape": table.calibration.get("fit_mape"),
        "reference_ms": table.reference.ms if table.reference else None,
        "validations": [{"mape": v.mape, "tau": v.kendall_tau, "within_10": v.within_10, "meets_bar": v.meets_bar,
                         "n": v.n} for v in validations], "seed": seed, "truth_processes": truth_processes,
        "load": load, "cpu": cpu_name(), "table": str(out),
    }
    if len(validations) >= 2:
        a, c = validations[0].measured_ms, validations[1].measured_ms
        dev = [abs(x / y - 1) for x, y in zip(a, c, strict=True)]
        row["agreement_mape"] = 100 * statistics.fmean(dev)
        row["agreement_within_2"] = 100 * sum(d <= 0.02 for d in dev) / len(dev)
    row["bar_met"] = (bool(validations) and all(v.meets_bar for v in validations)
                      and row.get("agreement_mape", 0.0) <= 2.0 and not partial)
    return row


def recalibrate(space: SearchSpace, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Refit the built table's calibration on `--calibration` networks (those not in the cache are
    measured, as the build measures them) and score it on the cached ground truths of the last
    `--validations` validation runs (a validation network missing from the cache is an error)."""
    target, cache, out = _table_path(space, backend, args)
    table = LatencyTable.load(out)
    if table.reference is None:
        raise SystemExit(f"{out} is an absolute (format 1) table; rebuild it")
    ref = table.reference

    def history(arch: Architecture) -> list[float]:
        found = [float(r.relative or 0.0) for r in cache.history(arch.id, target, ref.architecture().id)]
        if not found:
            raise SystemExit(f"{arch.id} has no cached measurement for {target.label}; run the full benchmark")
        return found

    old = table.calibration.get("model", "scale, per unit, offset")
    if args.refine:
        table = refine_lut(out, args.refine, pack_size=args.pack_size, cache=cache)
    runs = table.build.get("refined") or []
    refined = (f"; layers refined to {runs[-1]['processes']} processes ({sum(r['units'] for r in runs)} layer "
               f"re-timings, {sum(r['seconds'] for r in runs):.0f} s)") if runs else ""
    archs = calibration_archs(space, args.calibration, resolution=target.resolution)
    t0 = time.time()  # calibration networks not in the cache (a larger --calibration) are measured as the build does
    res = measure_many(archs, target, processes=args.processes, cache=cache, reference=ref.architecture())
    calibrate(table, archs, [float(r.relative or 0.0) for r in res])
    table.build["recalibration_s"] = time.time() - t0
    table.build["recalibrated_at"] = time.time()
    table.save(out)
    val = validation_archs(space, args.samples, args.seed, resolution=target.resolution)
    truths = [history(a) for a in val]
    runs = min(len(t) for t in truths)
    predicted = [table.predict(a, allow_missing=True) for a in val]
    validations = []
    for k in range(max(0, runs - args.validations), runs):
        measured = [t[k] * ref.ms for t in truths]
        validations.append(Validation(n=len(val), predict_us=0.0, predicted_ms=predicted, measured_ms=measured,
                                      arch_ids=[a.id for a in val], **evaluate(predicted, measured)))
        scatter(validations[-1], out.with_suffix(f".validation{len(validations)}.png"), title=f"LUT {target.label}")
    print(f"{out}: calibration {old!r} -> {table.calibration['model']!r} "
          f"(leave-one-out {table.calibration['loo_mape']:.2f}%)")
    b = table.build
    covered, total = table.coverage(space)
    return _row(space, table, out, b["seconds"], validations, partial=covered < total,
                load=os.getloadavg()[0],
                calibration=f"{args.calibration} models, refit ({table.build['recalibration_s']:.0f} s){refined}",
                seed=args.seed)


def write_row(doc: Path, row: dict[str, Any]) -> None:
    """Append a row to the LUT section of the benchmark doc (created if missing)."""
    units = f"{row['units']}/{row['space_units']}"
    build = f"{row['build_s'] / 60:.1f} min"
    if row["partial"]:
        build += f" (full table est. {row['full_table_estimate_s'] / 60:.0f} min)"
    seed = f", seed {row['seed']}" if row.get("seed", 777) != 777 else ""
    if row.get("truth_processes", 3) != 3:  # each network's ground truth pools this many processes
        seed += f", {row['truth_processes']} processes"
    val = [f"{v['mape']:.2f}% / {v['tau']:.3f} / {v['within_10']:.0f}% (n={v['n']}{seed})" for v in row["validations"]]
    val += ["-"] * (2 - len(val))
    agree = (f"{row['agreement_mape']:.2f}%, {row['agreement_within_2']:.0f}%" if "agreement_mape" in row else "-")
    line = (f"| {row['date']} | {row['backend']} | {row['space']} @{row['resolution']} | {units} | {build} | "
            f"{row['export_cpu_s']:.0f} s / {row['wait_s']:.0f} s / {row['measure_s']:.0f} s "
            f"({row['export_workers']} converters) | {row['calibration']}: {row['calibration_model']} | "
            f"{val[0]} | {val[1]} | {agree} | {'yes' if row['bar_met'] else 'no'} | {row['load']:.1f} |")
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        body, tail = rest.split(END, 1)
        rows = [ln for ln in body.strip().splitlines() if ln.startswith("| 20")]
        text = head + BEGIN + "\n" + HEADER + "\n" + "\n".join(rows + [line]) + "\n" + END + tail
    else:
        block = (f"\nTables relative to the reference network (one row per table; `{Path(__file__).name}`):\n\n"
                 f"{BEGIN}\n{HEADER}\n{line}\n{END}\n")
        if HEADING in text:
            at = text.index(HEADING) + len(HEADING)
            text = text[:at] + "\n" + block + text[at:]
        else:
            text += f"\n{HEADING}\n{block}"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
