"""Build and validate a latency lookup table; record build time and accuracy in
docs/benchmarks/latency.md (the section between the `lut` markers, one row per run).

Full run (the issue's bar: onnxruntime table for the default space within an hour here):
    python benchmarks/lut.py --backend onnxruntime --space mnasnet --samples 100
Reduced run (only the units the calibration and validation architectures use):
    python benchmarks/lut.py --samples 10 --calibration 12 --reduced
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

from mnas.latency import LatencyCache, Target, measure_many
from mnas.latency.lut import LatencyTable, build_lut, calibration_archs, validate_lut, validation_archs
from mnas.latency.units import arch_units, space_units
from mnas.space import SearchSpace

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "latency.md"
BEGIN, END = "<!-- lut:begin -->", "<!-- lut:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--space", default="mnasnet")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--pack-size", type=int, default=None)
    ap.add_argument("--reduced", action="store_true",
                    help="measure only the units the calibration and validation architectures use")
    ap.add_argument("--no-interleave", dest="interleave", action="store_false",
                    help="do not measure calibration and validation models together up front")
    ap.add_argument("--out", type=Path, default=None, help="table path (default: $MNAS_CACHE_DIR/luts/)")
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args()

    space = SearchSpace.load(args.space)
    target = Target(backend=args.backend, threads=args.threads, resolution=args.resolution or space.resolution)
    cache = LatencyCache()
    out = args.out or cache.path.parent / "luts" / f"{space.name}_{args.backend}_{target.fingerprint}.json"
    units = None
    all_units = space_units(space, target.resolution, target.num_classes)
    if args.reduced:
        wanted = {u.key for a in calibration_archs(space, args.calibration) + validation_archs(space, args.samples)
                  for u in arch_units(a, target.resolution, target.num_classes)}
        units = [u for u in all_units if u.key in wanted]
    load = os.getloadavg()[0]
    upfront_calibration_s = 0.0
    if args.interleave:  # calibration and validation models measured together, same conditions
        t = time.time()
        measure_many(calibration_archs(space, args.calibration) + validation_archs(space, args.samples),
                     target, processes=args.processes, cache=cache)
        share = args.calibration / max(args.calibration + args.samples, 1)
        upfront_calibration_s = (time.time() - t) * share  # the calibration models' part counts as build
    t0 = time.time() - upfront_calibration_s
    table = build_lut(space, target, out, processes=args.processes, calibration=args.calibration,
                      pack_size=args.pack_size, cache=cache, units=units)
    build_s = time.time() - t0
    plot = out.with_suffix(".validation.png")
    t1 = time.time()
    v = validate_lut(LatencyTable.load(out), args.samples, processes=args.processes, cache=cache, plot=plot)
    validate_s = time.time() - t1
    n_units = len(table.entries)
    per_unit = table.build["layer_seconds"] / max(n_units, 1)
    row = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "backend": args.backend, "space": space.name, "resolution": target.resolution,
        "units": n_units, "space_units": len(all_units), "reduced": args.reduced,
        "build_s": build_s, "layer_s": table.build["layer_seconds"],
        "full_table_estimate_s": per_unit * len(all_units) + (build_s - table.build["layer_seconds"]),
        "calibration": args.calibration, "fit_mape": table.calibration.get("fit_mape"),
        "samples": v.n, "mape": v.mape, "rmse_ms": v.rmse_ms, "tau": v.kendall_tau,
        "within_5": v.within_5, "within_10": v.within_10, "predict_us": v.predict_us,
        "meets_bar": v.meets_bar, "validate_s": validate_s, "load": load,
        "cpu": platform.processor() or platform.machine(), "plot": str(plot), "table": str(out),
    }
    print(json.dumps(row, indent=1))
    write_row(args.doc, row)


def write_row(doc: Path, row: dict) -> None:
    """Append a row to the LUT section of the benchmark doc (created if missing)."""
    line = (f"| {row['date']} | {row['backend']} | {row['space']} @{row['resolution']} | "
            f"{row['units']}/{row['space_units']}{' (reduced)' if row['reduced'] else ''} | "
            f"{row['layer_s']:.0f} s (full table est. {row['full_table_estimate_s'] / 60:.0f} min) | "
            f"{row['build_s']:.0f} s | {row['calibration']} | {row['samples']} | {row['mape']:.2f}% | "
            f"{row['rmse_ms']:.3f} | {row['tau']:.3f} | {row['within_5']:.0f}% | {row['within_10']:.0f}% | "
            f"{row['predict_us']:.0f} us | {row['load']:.1f} |")
    header = ("| date | backend | space | units measured | layer time | build total | calib. models | "
              "validated | MAPE | RMSE ms | Kendall tau | within 5% | within 10% | predict | load avg |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        body, tail = rest.split(END, 1)
        rows = [ln for ln in body.strip().splitlines() if ln.startswith("| 20")]
        text = head + BEGIN + "\n" + header + "\n" + "\n".join(rows + [line]) + "\n" + END + tail
    else:
        text += f"\n## Lookup-table accuracy and build time\n\n{BEGIN}\n{header}\n{line}\n{END}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


if __name__ == "__main__":
    main()
