"""Supernet costs and a first measurement; writes docs/benchmarks/supernet.md.

1. Scoring cost per candidate, phase by phase (extract, BN re-estimation, export, scoring pass), for
   mnasnet_cifar and slimmer spaces, several ways side by side: eager torch as mnas.train evaluates
   (contiguous, BN kept), eager torch with channels_last + BN folded, ONNX Runtime. An untrained
   supernet: the cost depends on the shapes only.
2. A first measurement: a supernet of a slim mnasnet_cifar trained on 10k CIFAR-10 training images
   with each sampling rule at the same wall-clock budget, then random candidates scored on 2,000
   held-out images: accuracy spread, best, training images/s, seconds per candidate; the two rules'
   rankings against each other and against MACs; how the BN re-estimation size moves the ranking.

Times are wall seconds and process CPU seconds (all threads); the machine is shared, so the CPU
seconds say what the work costs. On a machine at load 5 and more, use --threads 1: two OpenMP
threads then spend most of their CPU time waiting for each other (measured here: a 64-image SPOS
step cost 4.6 CPU s with two threads against about 0.6 with one).

    nice -n 10 python benchmarks/supernet.py [--quick] [--threads 2] [--out docs/benchmarks/supernet.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau, spearmanr

from doc_notes import hand_written
from mnas.architecture import Architecture
from mnas.data import DatasetSplits, load_dataset
from mnas.profile import count_macs
from mnas.space import SearchSpace
from mnas.supernet import (
    Supernet,
    accuracy,
    extract,
    fold_bn_,
    onnx_accuracy,
    onnx_session,
    reestimate_bn,
    score,
    scoring_data,
    train_supernet,
)

ROOT = Path(__file__).resolve().parents[1]


def space_variant(name: str, **changes: Any) -> SearchSpace:
    return SearchSpace.from_dict({**SearchSpace.cifar().to_dict(), "name": name, **changes})


SPACES = {
    "mnasnet_cifar (x0.75/1.0/1.25)": SearchSpace.cifar(),
    "slim (x0.25/0.35/0.5)": space_variant("mnasnet_cifar_slim", filter_multipliers=[0.25, 0.35, 0.5]),
    "slim, early downsampling (x0.25/0.35/0.5, strides 1,2,2,2,1,2,1)": space_variant(
        "mnasnet_cifar_slim_ds", filter_multipliers=[0.25, 0.35, 0.5], strides=[1, 2, 2, 2, 1, 2, 1]),
}
TRAIN_SPACE = "slim, early downsampling (x0.25/0.35/0.5, strides 1,2,2,2,1,2,1)"


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


@dataclass
class Way:
    label: str
    backend: str  # torch | onnxruntime
    channels_last: bool
    fold: bool
    batch: int


WAYS = [
    Way("torch eager, contiguous, BN kept (as mnas.train evaluates)", "torch", False, False, 500),
    Way("torch eager, channels_last, BN folded", "torch", True, True, 500),
    Way("onnxruntime, BN folded (export per candidate)", "onnxruntime", False, True, 500),
]


def cost_one(net: Supernet, arch: Architecture, data: DatasetSplits, way: Way, bn: tuple[int, int],
             images: int) -> dict[str, Clock]:
    sd = scoring_data(data, bn_batches=bn[0], bn_batch_size=bn[1], images=images, batch_size=way.batch,
                      channels_last=way.channels_last)
    clocks = {k: Clock() for k in ("extract", "bn", "export", "pass")}
    with clocks["extract"]:
        model = extract(net, arch)
        if way.channels_last:
            model = model.to(memory_format=torch.channels_last)
    with clocks["bn"]:
        reestimate_bn(model, sd.bn_batches)
        if way.fold:
            fold_bn_(model)
    if way.backend == "onnxruntime":
        arrays = sd.arrays()
        with clocks["export"]:
            session = onnx_session(model, net.resolution)
        with clocks["pass"]:
            onnx_accuracy(session, arrays)
    else:
        with clocks["pass"]:
            accuracy(model, sd.val_batches)
    return clocks


def scoring_costs(data: DatasetSplits, archs_per_space: int, bn: tuple[int, int], images: int,
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for label, space in SPACES.items():
        torch.manual_seed(0)
        net = Supernet(space, num_classes=10, resolution=32).eval()
        archs = [space.sample(1000 + i) for i in range(archs_per_space)]
        macs = [count_macs(extract(net, a), 32) / 1e6 for a in archs]
        for way in WAYS:
            # Steady state of a long scoring run: oneDNN / ONNX Runtime prepare kernels per new layer
            # shape, and the shapes of a space repeat, so one unmeasured candidate warms the caches.
            cost_one(net, space.sample(999), data, way, bn, images)
            runs = [cost_one(net, a, data, way, bn, images) for a in archs]
            row: dict[str, Any] = {"space": label, "way": way.label, "macs": statistics.median(macs)}
            for phase in ("extract", "bn", "export", "pass"):
                row[phase] = statistics.median(r[phase].wall for r in runs)
            row["total"] = statistics.median(sum(c.wall for c in r.values()) for r in runs)
            row["total_cpu"] = statistics.median(sum(c.cpu for c in r.values()) for r in runs)
            rows.append(row)
            log(f"cost {label} | {way.label}: {row['total']:.2f} s wall, {row['total_cpu']:.2f} s CPU")
    return rows


def cpu_seconds_per_step(space: SearchSpace, data: DatasetSplits, rule: str, num_random: int, steps: int) -> float:
    """A rule's training cost in process CPU seconds per step, on a throwaway supernet (CPU time, not
    wall time, so that two rules get the same compute on a shared machine)."""
    torch.manual_seed(0)
    probe = Supernet(space, num_classes=10, resolution=32)
    train_supernet(probe, data, epochs=1, max_steps=2, rule=rule, num_random=num_random)  # warm-up
    clock = Clock()
    with clock:
        train_supernet(probe, data, epochs=1, max_steps=steps, rule=rule, num_random=num_random)
    return clock.cpu / steps


def fastest_way(costs: list[dict[str, Any]], space_label: str) -> Way:
    rows = [r for r in costs if r["space"] == space_label]
    best = min(rows, key=lambda r: r["total_cpu"])
    return next(w for w in WAYS if w.label == best["way"])


def first_measurement(data: DatasetSplits, way: Way, args: argparse.Namespace,
                      log: Callable[[str], None]) -> dict[str, Any]:
    space = SPACES[TRAIN_SPACE]
    batch = 64
    steps_per_epoch = len(data.train) // batch
    archs = [space.sample(10_000 + i) for i in range(args.candidates)]
    out: dict[str, Any] = {"space": TRAIN_SPACE, "space_dict": space.to_dict(), "way": way.label, "rules": {}}
    probe = Supernet(space, num_classes=10, resolution=32)
    out["macs"] = [count_macs(extract(probe, a), 32) / 1e6 for a in archs]
    spos_cost = cpu_seconds_per_step(space, data, "spos", 0, steps=6)
    budget = args.spos_epochs * steps_per_epoch * spos_cost
    out["cpu_budget"] = budget
    for rule, num_random, n_scored in (("spos", 0, args.candidates), ("sandwich", 2, args.compare)):
        cost = spos_cost if rule == "spos" else cpu_seconds_per_step(space, data, rule, num_random, steps=3)
        epochs = round(budget / cost / steps_per_epoch, 2)
        log(f"{rule}: {cost:.2f} CPU s per step -> {epochs} epochs for {budget:.0f} CPU s")
        torch.manual_seed(0)
        net = Supernet(space, num_classes=10, resolution=32)
        clock = Clock()
        with clock:
            summary = train_supernet(net, data, epochs=epochs, batch_size=batch, lr=args.lr, rule=rule,
                                     num_random=num_random, seed=0)
        net.eval()
        log(f"{rule}: trained {summary['steps']} steps in {clock.wall:.0f} s ({clock.cpu:.0f} CPU s), "
            f"{summary['images_per_s']:.1f} images/s")
        sd = scoring_data(data, bn_batches=args.bn[0], bn_batch_size=args.bn[1], images=args.images,
                          batch_size=way.batch, channels_last=way.channels_last)
        seconds: list[float] = []

        def timed(i: int, arch: Architecture, acc: float, s: float, out: list[float] = seconds) -> None:
            out.append(s)

        score_clock = Clock()
        with score_clock:
            accs = score(net, archs[:n_scored], sd, backend=way.backend, fold_bn=way.fold, on_result=timed)
        log(f"{rule}: scored {n_scored} in {score_clock.wall:.0f} s ({score_clock.cpu:.0f} CPU s); best "
            f"{max(accs):.3f}, spread {max(accs) - min(accs):.3f}")
        record: dict[str, Any] = {
            "epochs": epochs, "steps": summary["steps"], "train_wall": clock.wall, "train_cpu": clock.cpu,
            "images_per_s": summary["images_per_s"], "records": summary["records"], "accs": accs,
            "score_wall": score_clock.wall, "score_cpu": score_clock.cpu, "per_candidate": statistics.median(seconds),
            "per_candidate_cpu": score_clock.cpu / n_scored, "num_random": num_random,
        }
        if rule == "spos" and args.bn_study:
            record["bn_study"] = bn_study(net, data, archs[: args.bn_study], way, args, log)
        out["rules"][rule] = record
    return out


def bn_study(net: Supernet, data: DatasetSplits, archs: list[Architecture], way: Way, args: argparse.Namespace,
             log: Callable[[str], None]) -> list[dict[str, Any]]:
    """How many BN batches: each setting's ranking against the largest setting's."""
    settings = [(1, 64), (2, 128), (6, 128)]
    accs: dict[tuple[int, int], list[float]] = {}
    per_candidate: dict[tuple[int, int], float] = {}
    for k, b in settings:
        sd = scoring_data(data, bn_batches=k, bn_batch_size=b, images=args.images, batch_size=way.batch,
                          channels_last=way.channels_last)
        clock = Clock()
        with clock:
            accs[(k, b)] = score(net, archs, sd, backend=way.backend, fold_bn=way.fold)
        per_candidate[(k, b)] = clock.wall / len(archs)
        log(f"bn study {k}x{b}: {per_candidate[(k, b)]:.2f} s per candidate")
    ref = accs[settings[-1]]
    return [{"bn": f"{k} x {b}", "tau": kendalltau(accs[(k, b)], ref)[0], "mean": statistics.mean(accs[(k, b)]),
             "s": per_candidate[(k, b)]} for k, b in settings]


# ---- the report --------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def write_report(path: Path, costs: list[dict[str, Any]], first: dict[str, Any] | None, args: argparse.Namespace,
                 conditions: dict[str, str]) -> None:
    lines = ["# Supernet benchmarks", "", "Written by `benchmarks/supernet.py`; rerun it to refresh.", "", "## Conditions", ""]
    lines += [f"- {k}: {v}" for k, v in conditions.items()]
    lines += ["", "## Scoring cost per candidate", "",
              f"Median over {args.cost_archs} random candidates per space of an untrained supernet (the cost depends on "
              f"the shapes only), after one unmeasured candidate that warms the kernel caches. BN re-estimation on "
              f"{args.bn[0]} x {args.bn[1]} training images, scoring pass on "
              f"{args.images} held-out images. Seconds of wall time per phase; the last column is process CPU "
              f"seconds (all threads): the work itself, what an idle machine takes with one thread. "
              "The issue's target: <= 2 s per candidate for mnasnet_cifar.", "",
              "| space | median MACs | way | extract | BN re-estimation | export | scoring pass | total (wall) | total (CPU s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in costs:
        export = _fmt(r["export"]) if r["export"] > 0 else "-"
        lines.append(f"| {r['space']} | {r['macs']:.0f}M | {r['way']} | {_fmt(r['extract'])} | {_fmt(r['bn'])} | {export} | "
                     f"{_fmt(r['pass'])} | **{_fmt(r['total'])}** | {_fmt(r['total_cpu'])} |")
    if first is not None:
        lines += _first_section(first, args)
    lines += ["", "## How to read these numbers", "", *NOTES]
    kept = hand_written(path, HAND_WRITTEN).rstrip()
    if kept:
        lines += ["", kept]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


HAND_WRITTEN = "## Diagnosis"  # sections from this heading on are written by hand and kept by reruns


def _first_section(first: dict[str, Any], args: argparse.Namespace) -> list[str]:
    space_yaml = "\n".join(f"{k}: {v}" for k, v in first["space_dict"].items())
    lines = ["", "## First measurement: supernet on 10k CIFAR-10 images, random candidates scored", "",
             f"Space: {first['space']}: mnasnet_cifar's choices (432^7 architectures) with narrower widths and the "
             "second stage downsampling (as YAML below). Data: 10,000 stratified CIFAR-10 training images; "
             f"{args.images} held-out training images score each candidate (the test set is not touched). Training: "
             f"`train_supernet`, SGD Nesterov, batch 64, peak lr {args.lr}, warm-up + cosine, label smoothing 0.1, "
             f"weight decay 5e-4; SPOS for {args.spos_epochs} epochs and the sandwich rule for the same process CPU "
             f"seconds ({first['cpu_budget']:.0f} CPU s, measured per step before each run). Scoring: BN re-estimated "
             f"on {args.bn[0]} x {args.bn[1]} training images, then the cheapest way of the cost table for this space "
             f"({first['way']}). Candidates: one uniform random sample; the sandwich supernet scores its first "
             f"{args.compare}.", "", "```yaml", space_yaml, "```", "",
             "| rule | epochs (steps) | training wall s (CPU s) | images/s (wall) | candidates | best | median | worst | "
             "spread | s per candidate wall (CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rule, r in first["rules"].items():
        accs = r["accs"]
        label = rule if rule == "spos" else f"sandwich (largest, smallest, {r['num_random']} random)"
        lines.append(f"| {label} | {r['epochs']} ({r['steps']}) | {r['train_wall']:.0f} ({r['train_cpu']:.0f}) | "
                     f"{r['images_per_s']:.1f} | {len(accs)} | {max(accs):.3f} | {statistics.median(accs):.3f} | "
                     f"{min(accs):.3f} | {max(accs) - min(accs):.3f} | {r['per_candidate']:.2f} "
                     f"({r['per_candidate_cpu']:.2f}) |")
    lines += ["", "Images/s counts batch images per second (the sandwich rule runs each image through 4 paths).", ""]
    rules = first["rules"]
    macs = first["macs"]
    lines += ["Rank agreement (Kendall tau / Spearman rho):", ""]
    for rule, r in rules.items():
        n = len(r["accs"])
        tau, rho = kendalltau(r["accs"], macs[:n])[0], spearmanr(r["accs"], macs[:n])[0]
        lines.append(f"- {rule} accuracy vs MACs over {n} candidates: tau {tau:.2f}, rho {rho:.2f}")
    if "spos" in rules and "sandwich" in rules:
        n = len(rules["sandwich"]["accs"])
        a, b = rules["spos"]["accs"][:n], rules["sandwich"]["accs"]
        lines.append(f"- spos vs sandwich over the same {n} candidates: tau {kendalltau(a, b)[0]:.2f}, "
                     f"rho {spearmanr(a, b)[0]:.2f}")
    for rule, r in rules.items():
        lines += ["", f"Training curve ({rule}): " + ", ".join(
            f"epoch {e['epoch']}: loss {e['train_loss']:.3f}, train acc {e['train_acc']:.3f}" for e in r["records"])]
    study = rules.get("spos", {}).get("bn_study")
    if study:
        lines += ["", f"BN re-estimation size (spos supernet, {args.bn_study} candidates, ranking against the 6 x 128 "
                  "setting):", "", "| BN batches x images | Kendall tau vs 6 x 128 | mean accuracy | s per candidate |",
                  "|---|---|---|---|"]
        lines += [f"| {s['bn']} | {s['tau']:.2f} | {s['mean']:.3f} | {s['s']:.2f} |" for s in study]
    return lines


NOTES = [
    "- The scoring pass is compute-bound: eager PyTorch on two cores runs these small depthwise-heavy networks at a "
    "few GMAC/s; ONNX Runtime fuses and runs them several times faster, and its in-memory export (TorchScript "
    "tracer) costs about a second per candidate, which it earns back at 2,000 images.",
    "- BN re-estimation runs BN in training mode in eager torch (batch statistics, no folding), so per image it costs "
    "about twice the folded scoring pass; it is also the first forward of a new network, which pays oneDNN's "
    "kernel preparation for layer shapes not seen before (the shapes of a space repeat, so this fades over a long "
    "scoring run). Keep it to a few hundred images.",
    "- Accuracy numbers of the first measurement are those of inherited weights after a few minutes of CPU "
    "training; they rank candidates, they are not what the candidates reach when trained alone. Ranking fidelity "
    "against stand-alone training is the issue's separate benchmark.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer candidates and a shorter training run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "supernet.md")
    parser.add_argument("--spos-epochs", type=float, default=3.0,
                        help="SPOS epochs; the sandwich rule gets the same CPU seconds")
    parser.add_argument("--candidates", type=int, default=50, help="candidates scored with the spos supernet")
    parser.add_argument("--compare", type=int, default=20, help="of those, scored with the sandwich supernet too")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--bn", type=int, nargs=2, default=(2, 128), metavar=("BATCHES", "SIZE"))
    parser.add_argument("--bn-study", type=int, default=10, help="candidates for the BN-size study (0: skip)")
    parser.add_argument("--cost-archs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--skip-training", action="store_true", help="only the scoring-cost table")
    parser.add_argument("--raw", type=Path, default=None, help="also save the measurements as JSON here")
    parser.add_argument("--from-raw", type=Path, default=None, help="rewrite the report from saved JSON, measure nothing")
    args = parser.parse_args()
    if args.from_raw is not None:
        saved = json.loads(args.from_raw.read_text())
        vars(args).update({k: v for k, v in saved["args"].items() if k not in ("out", "raw", "from_raw")})
        write_report(args.out, saved["costs"], saved["first"], args, saved["conditions"])
        print(f"wrote {args.out} from {args.from_raw}")
        return
    if args.quick:
        args.spos_epochs, args.candidates, args.compare, args.bn_study, args.cost_archs = 0.1, 6, 3, 3, 1
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    load_before = os.getloadavg()[0]
    log = lambda text: print(f"[{time.perf_counter() - t_start:6.0f} s] {text}", flush=True)
    data = load_dataset("cifar10", val_size=args.images, train_subset=10_000, seed=0)
    costs = scoring_costs(data, args.cost_archs, tuple(args.bn), args.images, log)
    first = None if args.skip_training else first_measurement(data, fastest_way(costs, TRAIN_SPACE), args, log)
    wall = time.perf_counter() - t_start
    conditions = {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores visible, torch threads {args.threads}",
        "torch": torch.__version__,
        "load average before / after": f"{load_before:.1f} / {os.getloadavg()[0]:.1f} (shared machine: compare wall "
                                       "with CPU seconds)",
        "process CPU share": f"{(time.process_time() - cpu_start) / wall / args.threads:.0%} of {args.threads} threads "
                             "over the run",
        "mode": "quick" if args.quick else "full",
        "wall time": f"{wall:.0f} s",
    }
    if args.raw is not None:
        plain_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.raw.write_text(json.dumps({"args": plain_args, "costs": costs, "first": first, "conditions": conditions}))
    write_report(args.out, costs, first, args, conditions)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
