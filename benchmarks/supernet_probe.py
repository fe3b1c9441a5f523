"""Which choices stop a CPU supernet from learning; writes docs/benchmarks/supernet_probe.md.

One SPOS supernet per row, each trained for the same number of steps (batch 64, 10k CIFAR-10
training images, SGD Nesterov, 30 warm-up steps into a cosine decay, label smoothing 0.1), then its
largest, smallest and a few random paths scored (BN re-estimated on 2 x 128 training images, top-1
on 1,000 held-out images). The rows start from one path (every decision has one choice) and open
one decision of the space at a time, then all of them; "residual scale" rows keep the supernet's
zero-initialised residual scales, "scale fixed at 1" rows freeze them at one (the supernet as it was
before the scales: every residual body at full strength from the start).

Steps, not seconds, bound each run, so a busy machine changes the wall time, not the result.
Rows run in `--jobs` processes of one torch thread each.

    nice -n 10 python benchmarks/supernet_probe.py [--steps 200] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from mnas.data import BatchLoader, load_dataset
from mnas.space import SearchSpace
from mnas.supernet import Supernet, SupernetStep, random_path, score
from mnas.supernet.training import supernet_param_groups

ROOT = Path(__file__).resolve().parents[1]
SPACE_FILE = ROOT / "examples" / "spaces" / "cifar_quick.yaml"
ONE_PATH = {"ops": [{"op": "mbconv", "expand": 6}], "kernels": [3], "se_ratios": [0], "skips": ["identity"],
            "filter_multipliers": [1.0], "layer_deltas": [0]}


@dataclass(frozen=True)
class Row:
    label: str
    opened: tuple[str, ...]  # decisions that keep the space's choices; the others get ONE_PATH's
    scales: bool = True  # False: residual scales frozen at 1
    lr: float = 0.05
    narrowed: tuple[tuple[str, object], ...] = ()  # opened decisions given fewer choices than the space's
    skeleton: tuple[tuple[str, object], ...] = ()  # space fields other than decisions, changed for this row


MBCONV_ONLY = (("ops", [{"op": "mbconv", "expand": 3}, {"op": "mbconv", "expand": 6}]),)
OFA_LIKE = ("ops", "kernels", "se_ratios", "layer_deltas")  # Once-for-All's kind of space: no op or skip choice
SHALLOW = (("base_layers", [1, 1, 2, 2, 1, 2, 1]), ("head_filters", 512))  # 10 layers instead of 17: a cheaper step


ROWS = [
    Row("one path", ()),
    Row("one path, scale fixed at 1", (), scales=False),
    Row("filters open", ("filter_multipliers",)),
    Row("layers open", ("layer_deltas",)),
    Row("kernels open", ("kernels",)),
    Row("SE open", ("se_ratios",)),
    Row("skips open", ("skips",)),
    Row("ops open", ("ops",)),
    Row("expansion open (mbconv3, mbconv6)", ("ops",), narrowed=MBCONV_ONLY),
    Row("MBConv expansion, kernels, SE, layers open", OFA_LIKE, narrowed=MBCONV_ONLY),
    Row("the same and filters open", (*OFA_LIKE, "filter_multipliers"), narrowed=MBCONV_ONLY),
    Row("the same, shallower (layers 1,1,2,2,1,2,1, head 512)", (*OFA_LIKE, "filter_multipliers"),
        narrowed=MBCONV_ONLY, skeleton=SHALLOW),
    Row("all open", tuple(ONE_PATH)),
    Row("all open, scale fixed at 1", tuple(ONE_PATH), scales=False),
]


@dataclass
class Result:
    row: Row
    curve: list[str] = field(default_factory=list)
    largest: float = math.nan
    smallest: float = math.nan
    random: list[float] = field(default_factory=list)
    seconds: float = 0.0


def probe(row: Row, steps: int, candidates: int, data_root: str | None, lr: float | None = None) -> Result:
    torch.set_num_threads(1)
    if lr is not None:
        row = replace(row, lr=lr)
    base = SearchSpace.load(SPACE_FILE).to_dict()
    space = SearchSpace.from_dict({**base, **{k: v for k, v in ONE_PATH.items() if k not in row.opened},
                                   **dict(row.narrowed), **dict(row.skeleton)})
    data = load_dataset("cifar10", data_root, val_size=1000, train_subset=10_000, seed=0)
    torch.manual_seed(0)
    net = Supernet(space, num_classes=10, resolution=32, dropout=0.0).to(memory_format=torch.channels_last)
    if not row.scales:
        for name, p in net.named_parameters():
            if ".residual_scales." in name:
                p.requires_grad_(False)
                p.data.fill_(1.0)
    step_fn = SupernetStep(net, rule="spos", label_smoothing=0.1)
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in supernet_param_groups(net, 5e-4)]
    opt = torch.optim.SGD(groups, lr=row.lr, momentum=0.9, nesterov=True)
    result = Result(row)
    start = time.perf_counter()
    losses: list[float] = []
    accs: list[float] = []
    step = 0
    net.train()
    while step < steps:
        for x, y in BatchLoader(data, data.train, 64, train=True, seed=0, epoch=step, channels_last=True):
            for g in opt.param_groups:
                g["lr"] = row.lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
            opt.zero_grad()
            loss, logits = step_fn(net, x, y, step)
            opt.step()
            losses.append(float(loss))
            accs.append(float((logits.argmax(1) == y).float().mean()))
            step += 1
            if step % (steps // 4) == 0:
                k = steps // 4
                result.curve.append(f"{sum(losses[-k:]) / k:.2f} / {sum(accs[-k:]) / k:.2f}")
            if step >= steps:
                break
    archs = [net.largest(), net.smallest()] + [random_path(space, 123, i) for i in range(candidates)]
    accs_scored = score(net, archs, data, bn_batches=2, images=1000)
    result.largest, result.smallest, result.random = accs_scored[0], accs_scored[1], sorted(accs_scored[2:])
    result.seconds = time.perf_counter() - start
    return result


def write(results: list[Result], args: argparse.Namespace, wall: float, out: Path) -> None:
    space = SearchSpace.load(SPACE_FILE)
    lines = [
        "# Supernet probe: which choices stop a CPU supernet from learning",
        "",
        "Written by `benchmarks/supernet_probe.py`; rerun it to refresh.",
        "",
        "## Conditions",
        "",
        f"- date (UTC): {datetime.now(UTC):%Y-%m-%d %H:%M}",
        f"- cpu: {platform.machine()}, {os.cpu_count()} cores visible, {args.jobs} runs at a time, 1 torch thread each",
        f"- torch: {torch.__version__}",
        f"- wall time: {wall:.0f} s",
        f"- space: `{SPACE_FILE.relative_to(ROOT)}` ({space.name}); a closed decision keeps one choice:",
        f"  `{json.dumps(ONE_PATH)}`",
        f"- training: SPOS, {args.steps} steps of 64 images (10k CIFAR-10 training images), SGD Nesterov 0.9,",
        "  peak lr as listed, 30 warm-up steps, cosine to 0, weight decay 5e-4, label smoothing 0.1, no dropout",
        f"- scoring: BN re-estimated on 2 x 128 training images, top-1 on 1,000 held-out images; {args.candidates}"
        " random paths (seed 123)",
        "",
        "Train loss / train accuracy are means over each quarter of the run (chance: 2.30 / 0.10).",
        "",
        "| row | residual scales | lr | train loss / acc by quarter | largest | smallest | random paths (sorted) | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.row.label} | {'zero start' if r.row.scales else 'fixed at 1'} | {r.row.lr} | "
                     f"{' -> '.join(r.curve)} | {r.largest:.3f} | {r.smallest:.3f} | "
                     f"{' '.join(f'{a:.2f}' for a in r.random)} | {r.seconds:.0f} |")
    lines += ["", READING, "", args.reading or kept_reading(out) or "(no reading written for this run)", ""]
    out.write_text("\n".join(lines))


READING = "## Reading"


def kept_reading(doc: Path) -> str:
    """The hand-written reading of an earlier run (kept when --reading is not given; check it still holds)."""
    if not doc.exists() or READING not in doc.read_text():
        return ""
    return doc.read_text().split(READING, 1)[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of every row (default: each row's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--only", default="", help="row labels separated by '|' (default: all)")
    parser.add_argument("--reading", default="", help="text for the Reading section")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "supernet_probe.md")
    args = parser.parse_args()
    wanted = [w.strip() for w in args.only.split("|") if w.strip()]
    unknown = [w for w in wanted if w not in {r.label for r in ROWS}]
    if unknown:
        parser.error(f"--only: no row {unknown[0]!r}; rows: {' | '.join(r.label for r in ROWS)}")
    rows = [r for r in ROWS if not wanted or r.label in wanted]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(probe, rows, [args.steps] * len(rows), [args.candidates] * len(rows),
                                [args.data_root] * len(rows), [args.lr] * len(rows)))
    for r in results:
        print(r.row.label, r.curve, f"{r.largest:.3f} {r.smallest:.3f}", r.random, flush=True)
    write(results, args, time.perf_counter() - start, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
