"""What one proxy training step costs on this CPU, and which memory layout makes it cheapest.

For references and sampled candidates of the search spaces, one SGD step of `--batch` CIFAR-10
images on one thread is timed with the model in channels_last and in contiguous (NCHW) layout,
the two engines alternating step by step in one process so a busy neighbour slows both alike; the
table gives each layout's median step and their ratio. It sizes the proxy's rungs (steps per
minute of one core) and picks `proxy.channels_last`'s default. Writes docs/benchmarks/proxy_step.md.

    python benchmarks/proxy_step.py [--steps 12] [--samples 4] [--out docs/benchmarks/proxy_step.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from doc_notes import hand_written
from mnas import zoo
from mnas.architecture import Architecture
from mnas.data import load_dataset
from mnas.space import SearchSpace
from mnas.train.proxy import ProxyTrainer
from mnas.train.settings import ProxyConfig

ROOT = Path(__file__).resolve().parents[1]
NOTES = "## Notes"
SPACES = ("mnasnet_cifar", str(ROOT / "examples/spaces/cifar_quick.yaml"))


def candidates(samples: int) -> list[tuple[str, Architecture]]:
    out = [(f"{name} x{w:g}", zoo.get(name, width_mult=w)) for name in ("mobilenet_v2", "mnasnet_a1")
           for w in (0.5, 0.75, 1.0)]
    for space_name in SPACES:
        space = SearchSpace.load(space_name)
        rng = random.Random(0)
        out += [(f"{space.name} #{i}", space.sample(rng)) for i in range(samples)]
    return out


def time_layouts(arch: Architecture, data: object, batch: int, steps: int) -> tuple[float, float]:
    """Median seconds per step with channels_last on and off, timed in alternation."""
    trainers = [ProxyTrainer(arch, data, ProxyConfig(steps=[10_000], batch_size=batch, channels_last=cl,  # type: ignore[arg-type]
                                                     device="cpu"), seed=0) for cl in (True, False)]
    loaders = [iter(t.engine.loader(t.data.train, train=True)) for t in trainers]
    times: list[list[float]] = [[], []]
    for i in range(steps + 2):
        for k, (t, loader) in enumerate(zip(trainers, loaders, strict=True)):
            x, y = next(loader)
            start = time.perf_counter()
            t.engine.optimizer.zero_grad(set_to_none=True)
            loss, _ = t.engine.step_fn(t.engine.model, x, y, i)
            t.engine.optimizer.step()
            if i >= 2:  # the first two steps allocate
                times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks/proxy_step.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("cifar10_subset", val_size=1000, seed=0)
    rows = []
    for label, arch in candidates(args.samples):
        cl, nchw = time_layouts(arch, data, args.batch, args.steps)
        rows.append((label, cl, nchw))
        print(f"{label:28s} channels_last {cl:.3f} s  nchw {nchw:.3f} s  ratio {cl / nchw:.2f}", flush=True)
    ratios = [cl / nchw for _, cl, nchw in rows]
    lines = [
        "# Proxy step cost and memory layout",
        "",
        f"Written by `benchmarks/proxy_step.py` on {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, one thread, batch {args.batch} of CIFAR-10 (32x32), "
        f"median of {args.steps} steps per layout, the two layouts alternating step by step in one process.",
        "",
        "| network | channels_last s/step | NCHW s/step | channels_last / NCHW |",
        "|---|---|---|---|",
        *[f"| {label} | {cl:.3f} | {nchw:.3f} | {cl / nchw:.2f} |" for label, cl, nchw in rows],
        "",
        f"Median ratio channels_last / NCHW: **{statistics.median(ratios):.2f}** "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}); the proxy's default layout is the faster one.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines) + hand_written(Path(args.out), NOTES))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
