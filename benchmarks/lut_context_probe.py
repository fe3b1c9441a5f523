"""Do table units cost the same inside a network as on their own? (onnxruntime, per-node profiler)

The onnxruntime table's remaining error is systematic (docs/benchmarks/latency.md: networks with
many kernel-3 layers run faster than the table says). A table unit is timed in a pack, on an input
of its own; inside a network its input is the previous layer's output, which may still sit in the
caches. This probe times, for a few random architectures of the default space, in the same
processes and against the same reference:

- `chain`: the architecture's units chained as the network runs them (stem -> layers -> head), each
  unit's time read from ORT's per-node profiler as the table's packs are;
- `isolated`: the same units as a table pack (independent inputs);
- `whole`: the network itself (as `mnas latency measure` times it).

and writes docs/benchmarks/lut_context_probe.md: how chain and isolated sums compare with the whole
network, and the ratio chain / isolated per kind of unit. No table is needed.

    python benchmarks/lut_context_probe.py --archs 24 --processes 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from doc_notes import hand_written
from mnas.latency.backends.base import ModelFile, get_backend
from mnas.latency.measure.exporter import export_arch
from mnas.latency.measure.measuring import measure_rounds, reference_arch
from mnas.latency.measure.protocol import DEFAULT_PROTOCOL
from mnas.latency.measure.sample import ProcessSample
from mnas.latency.tables.calibration import has_se, has_shortcut, unit_family
from mnas.latency.tables.units import HeadConfig, StemConfig, Unit, arch_units, build_unit
from mnas.latency.tables.validate import evaluate, validation_archs
from mnas.latency.target import Target
from mnas.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks" / "lut_context_probe.md"


class ChainModule(nn.Module):
    """The units in sequence, named `units.<i>` like a pack's, so the profiler's node names say
    which unit a node belongs to."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.units = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.units:
            x = m(x)
        return x


def export_chain(units: Sequence[Unit], path: Path, resolution: int) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        chain = ChainModule([build_unit(u) for u in units]).eval()
    x = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        torch.onnx.export(chain, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x0"], output_names=[f"y{len(units) - 1}"])
    return path


def kind(u: Unit) -> str:
    """What the per-kind table groups by: op (MBConv with its expansion), kernel, SE."""
    if isinstance(u, StemConfig):
        return "stem"
    if isinstance(u, HeadConfig):
        return "head"
    op = f"mbconv{u.expand:g}" if u.op == "mbconv" else u.op
    return f"{op} k{u.kernel}{' se' if u.se_ratio else ''}"


def stage(u: Unit) -> str:
    size = u.input_size
    return "112+" if size >= 112 else "28-56" if size >= 28 else "7-14"


def median_rel(per_proc: list[list[ProcessSample]], part: int) -> float:
    return statistics.median(float(p[part].relative or 0.0) for p in per_proc)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time every network three ways; returns the raw figures (relative to the reference, median
    over the processes) with what the run was."""
    space = SearchSpace.load("mnasnet")
    target = Target(backend="onnxruntime", threads=1, resolution=args.resolution, num_classes=1000)
    backend = get_backend(target.backend)
    archs = validation_archs(space, args.archs, args.seed, args.resolution)
    start, t0 = dt.datetime.now(dt.UTC), time.time()
    with tempfile.TemporaryDirectory(prefix="mnas-ctx-") as tmp:
        folder = Path(tmp)
        _, ref_arch = reference_arch("mobilenet_v2", target)
        ref_file = export_arch(ref_arch, target, folder / f"ref{backend.suffix}")
        files: dict[int, ModelFile] = {}
        units_of: list[list[Unit]] = []
        for i, a in enumerate(archs):
            units = arch_units(a, target.resolution, target.num_classes)
            units_of.append(units)
            files[3 * i] = ModelFile(export_chain(units, folder / f"chain{i}.onnx", target.resolution),
                                     parts=len(units))
            files[3 * i + 1] = ModelFile(backend.export_pack(units, folder / f"iso{i}.onnx", target),
                                         parts=len(units))
            files[3 * i + 2] = ModelFile(export_arch(a, target, folder / f"whole{i}.onnx"))
        export_s = time.time() - t0
        m = time.time()
        samples = measure_rounds(files, ref_file, target, args.processes, DEFAULT_PROTOCOL, backend)
        measure_s = time.time() - m
    nets = []
    for i, (a, units) in enumerate(zip(archs, units_of, strict=True)):
        chain = [median_rel(samples[3 * i], k) for k in range(len(units))]
        iso = [median_rel(samples[3 * i + 1], k) for k in range(len(units))]
        nets.append({"arch": a.id, "whole": median_rel(samples[3 * i + 2], 0), "units": [
            {"key": u.key, "kind": kind(u), "stage": stage(u), "family": unit_family(u), "se": has_se(u),
             "shortcut": has_shortcut(u), "chain": c, "isolated": s} for u, c, s in zip(units, chain, iso, strict=True)]})
    meta = {"started": f"{start:%Y-%m-%d %H:%M}", "archs": len(archs), "seed": args.seed, "resolution": args.resolution,
            "processes": args.processes, "export_s": export_s, "measure_s": measure_s}
    return {"meta": meta, "networks": nets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=24)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=4777)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--raw", type=Path, default=None, help="also write every unit's figures as JSON here")
    ap.add_argument("--from-raw", type=Path, default=None, help="render a --raw file again instead of measuring")
    args = ap.parse_args()
    data = json.loads(args.from_raw.read_text()) if args.from_raw else measure(args)
    if args.raw and not args.from_raw:
        args.raw.write_text(json.dumps(data, indent=1))
    write(args.out, data)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares of y on the columns of x with rows weighted by 1/y (relative errors count
    alike, as in mnas.latency.tables.calibration)."""
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    return coef


def loo_predictions(raw: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each network's whole latency predicted from its isolated units by a model fitted on the
    other networks (leave-one-out), for several ways of adding the units up."""
    fams = sorted({u["family"] for r in raw for u in r["units"]})
    whole = np.array([r["whole"] for r in raw])
    iso_sum = np.array([sum(u["isolated"] for u in r["units"]) for r in raw])
    per_fam = np.array([[sum(u["isolated"] for u in r["units"] if u["family"] == f) for f in fams] for r in raw])
    counts = np.array([[sum(u["se"] for u in r["units"]), sum(u["shortcut"] for u in r["units"])] for r in raw])
    out: dict[str, list[float]] = defaultdict(list)
    for i in range(len(raw)):
        rest = [j for j in range(len(raw)) if j != i]
        out["one scale"].append(float(_fit(iso_sum[rest, None], whole[rest])[0] * iso_sum[i]))
        x = np.hstack([per_fam, counts])
        out["scale per family, per SE and shortcut unit"].append(float(x[i] @ _fit(x[rest], whole[rest])))
        for label, key in (("context factor per kind", ("kind",)), ("context factor per kind and input size",
                                                                       ("kind", "stage"))):
            logs: dict[tuple[str, ...], list[float]] = defaultdict(list)
            by_kind: dict[tuple[str, ...], list[float]] = defaultdict(list)
            for j in rest:
                for u in raw[j]["units"]:
                    if u["chain"] > 0 and u["isolated"] > 0:
                        r = math.log(u["chain"] / u["isolated"])
                        logs[tuple(u[k] for k in key)].append(r)
                        by_kind[(u["kind"],)].append(r)

            def factor(u: dict[str, Any], logs: Any = logs, by_kind: Any = by_kind, key: Any = key) -> float:
                v = logs.get(tuple(u[k] for k in key)) or by_kind.get((u["kind"],)) or [0.0]
                return math.exp(statistics.fmean(v))

            corrected = np.array([sum(u["isolated"] * factor(u) for u in r["units"]) for r in raw])
            out[label].append(float(_fit(corrected[rest, None], whole[rest])[0] * corrected[i]))
    return out


def loo_lines(raw: list[dict[str, Any]]) -> list[str]:
    whole = [r["whole"] for r in raw]
    lines = ["## Whole networks predicted from their isolated units (leave-one-out over the networks)", "",
             "Each model is fitted on the other networks (the calibration's weighting: relative errors) and "
             "predicts the one left out. The context factors are the geometric mean of chain / isolated per "
             "kind of unit over the other networks' units (falling back to the kind when a kind and input size "
             "has no instance there), then one scale.", "",
             "| from the isolated units | MAPE | sd of log error | Kendall tau | within 2% |",
             "|---|---:|---:|---:|---:|"]
    for label, pred in loo_predictions(raw).items():
        err = [math.log(p / w) for p, w in zip(pred, whole, strict=True)]
        ape = [abs(p / w - 1) for p, w in zip(pred, whole, strict=True)]
        lines.append(f"| {label} | {100 * statistics.fmean(ape):.2f}% | {100 * statistics.pstdev(err):.2f}% | "
                     f"{evaluate(pred, whole)['kendall_tau']:.3f} | {100 * sum(a <= 0.02 for a in ape) / len(ape):.0f}% |")
    chain = [sum(u["chain"] for u in r["units"]) for r in raw]
    err = [math.log(c / w) for c, w in zip(chain, whole, strict=True)]
    mape = statistics.fmean(abs(c / w - 1) for c, w in zip(chain, whole, strict=True))
    lines.append(f"| (the chain's own sum, no fit) | {100 * mape:.2f}% | {100 * statistics.pstdev(err):.2f}% | "
                 f"{evaluate(chain, whole)['kendall_tau']:.3f} | - |")
    return lines + [""]


def _corr(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx and sy else float("nan")


def write(out: Path, data: dict[str, Any]) -> None:
    meta, raw = data["meta"], data["networks"]
    by_kind: dict[str, list[float]] = defaultdict(list)
    by_stage: dict[str, list[float]] = defaultdict(list)
    rows = []
    for r in raw:
        layers = [u for u in r["units"] if u["kind"] not in ("stem", "head")]
        for u in r["units"]:
            if u["chain"] > 0 and u["isolated"] > 0:
                by_kind[u["kind"]].append(math.log(u["chain"] / u["isolated"]))
                by_stage[f"{u['kind'].split()[0]} @ {u['stage']}"].append(math.log(u["chain"] / u["isolated"]))
        k3 = sum(" k3" in u["kind"] for u in layers) / max(len(layers), 1)
        rows.append((r["arch"], r["whole"], sum(u["chain"] for u in r["units"]),
                     sum(u["isolated"] for u in r["units"]), k3))
    chain_err = [math.log(c / w) for _, w, c, _, _ in rows]
    iso_err = [math.log(s / w) for _, w, _, s, _ in rows]
    # one scale per sum (what a one-term calibration would fit), then what is left
    iso_left = [e - statistics.fmean(iso_err) for e in iso_err]
    chain_left = [e - statistics.fmean(chain_err) for e in chain_err]
    k3s = [r[4] for r in rows]
    pct = 100.0
    lines = [
        "# Table units inside a network and on their own (onnxruntime, per-node profiler)", "",
        f"Written by `python benchmarks/lut_context_probe.py` on {meta['started']} UTC: {len(rows)} random "
        f"architectures of the default space (`validation_archs`, seed {meta['seed']}) at {meta['resolution']} px, "
        f"1 thread, each timed three ways in the same {meta['processes']}+ processes against mobilenet_v2 (relative "
        "figures, median over processes): `whole` the network; `chain` its units chained as the network runs "
        "them, each unit's time from the per-node profiler; `isolated` the same units as a table pack "
        f"(independent inputs). Export {meta['export_s']:.0f} s, measuring {meta['measure_s']:.0f} s.", "",
        "## Sums against the whole network", "",
        "| | sum / whole: median | sd of log(sum / whole) | after one scale: sd | corr. with kernel-3 share |",
        "|---|---:|---:|---:|---:|",
        f"| chain | {statistics.median(math.exp(e) for e in chain_err):.3f} | {pct * statistics.pstdev(chain_err):.2f}% "
        f"| {pct * statistics.pstdev(chain_left):.2f}% | {_corr(chain_left, k3s):+.2f} |",
        f"| isolated | {statistics.median(math.exp(e) for e in iso_err):.3f} | {pct * statistics.pstdev(iso_err):.2f}% "
        f"| {pct * statistics.pstdev(iso_left):.2f}% | {_corr(iso_left, k3s):+.2f} |",
        "", *loo_lines(raw), "## Chain / isolated per kind of unit", "",
        "Geometric mean of chain / isolated over the unit instances of each kind (n), and the sd of the log "
        "ratio.", "",
        "| kind | n | chain / isolated | sd |", "|---|---:|---:|---:|",
    ]
    for name in sorted(by_kind):
        v = by_kind[name]
        lines.append(f"| {name} | {len(v)} | {math.exp(statistics.fmean(v)):.3f} | "
                     f"{pct * (statistics.pstdev(v) if len(v) > 1 else 0):.1f}% |")
    lines += ["", "## Chain / isolated per op and input size", "", "| op @ input size | n | chain / isolated |",
              "|---|---:|---:|"]
    for name in sorted(by_stage):
        v = by_stage[name]
        lines.append(f"| {name} | {len(v)} | {math.exp(statistics.fmean(v)):.3f} |")
    lines += ["", "## Every network", "", "| arch | whole | chain sum | isolated sum | kernel-3 share |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| `{a}` | {w:.4f} | {c:.4f} | {s:.4f} | {k:.2f} |" for a, w, c, s, k in rows]
    notes = hand_written(out, "## Reading", "## Reading\n\n(to be written)\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n\n" + notes)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
