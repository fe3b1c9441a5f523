"""Does the search's proxy rank networks as longer training does? Writes docs/benchmarks/fidelity.md.

At least 12 architectures spread over latency (candidates of `make run`'s space, picked at even
latency quantiles of a larger sample, plus the two reference networks) are each trained with
`make run`'s proxy up to its top rung with 2 seeds, and once for `--long` steps (at least 6x the
top rung) with one cosine schedule. The table gives Kendall tau of proxy accuracy against long
accuracy (the bar: >= 0.5), beside the seed-to-seed tau of the proxy (how much of the ranking is
noise) and the tau of MACs against long accuracy (does the proxy know more than size?).

Resumable: every finished training is saved at once in docs/benchmarks/fidelity_results.json
(keyed by architecture id, kind and seed), so a run can span several sittings; rerun the same
command to go on. Trainings run in `--workers` processes, one thread each.

    nice -n 10 python benchmarks/fidelity.py [--config examples/quick.yaml] [--long 1500] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from mnas.architecture import Architecture
from mnas.profile import profile
from mnas.search.config import SearchConfig, load_config
from mnas.search.loop import reference_trials
from mnas.search.trust import kendall_tau
from mnas.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/benchmarks/fidelity.md"
RESULTS = ROOT / "docs/benchmarks/fidelity_results.json"


def pick_architectures(config: SearchConfig, count: int, pool: int, seed: int) -> list[tuple[str, Architecture]]:
    """`count - refs` candidates at even latency quantiles of `pool` samples, plus the references."""
    from mnas.search.accuracy import accuracy_model

    space = SearchSpace.load(config.space)
    refs = {t.reference: t.arch for t in reference_trials(config, space, accuracy_model(config))}
    rng = random.Random(seed)
    sample = []
    seen: set[str] = set()
    while len(sample) < pool:
        arch = space.sample(rng)
        if arch.id not in seen:
            seen.add(arch.id)
            sample.append(arch)
    model = config.primary.to_model()
    lat = [e.ms for e in model.estimate_many(sample)]
    order = sorted(range(len(sample)), key=lambda i: lat[i])
    k = count - len(refs)
    picks = [order[round(j * (len(order) - 1) / max(1, k - 1))] for j in range(k)]
    return [(f"candidate {i}", sample[i]) for i in picks] + [(str(name), arch) for name, arch in refs.items()]


def train_one(config_json: str, arch_json: str, kind: str, seed: int, long_steps: int) -> dict[str, Any]:
    """One training: the search's proxy to its top rung, or `long_steps` steps of one cosine."""
    import torch

    from mnas.search.accuracy import dataset
    from mnas.train.proxy import train_proxy

    torch.set_num_threads(1)
    config = SearchConfig.model_validate_json(config_json)
    arch = Architecture.from_json(arch_json)
    proxy = config.proxy
    if kind == "long":
        proxy = proxy.model_copy(update={"steps": [long_steps]})
    result = train_proxy(arch, dataset(config.data), proxy, seed=seed)
    return {"accuracy": result.val_acc if result.ok else None, "status": result.status, "steps": result.steps,
            "seconds": result.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples/quick.yaml"))
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--pool", type=int, default=48)
    parser.add_argument("--long", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from mnas.search.loop import prepare

    config = prepare(load_config(args.config)).config
    top = config.proxy.steps[-1] if config.proxy.steps else None
    if top is None or args.long < 6 * top:
        raise SystemExit(f"--long {args.long} must be at least 6x the proxy's top rung ({top})")
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "networks" not in results:
        picked = pick_architectures(config, args.count, args.pool, args.seed)
        model = config.primary.to_model()
        res = config.primary.resolution or 32
        results = {"config": args.config, "long": args.long, "rungs": config.proxy.steps, "networks": [
            {"name": name, "arch": arch.to_json(), "id": arch.id, "latency_ms": model.estimate(arch).ms,
             "macs": profile(arch.for_resolution(res), res, config.primary.num_classes or 10).macs}
            for name, arch in picked], "runs": {}}
        _save(results)
    jobs = [(net, kind, seed) for net in results["networks"] for kind, seed in
            (("proxy", 0), ("proxy", 1), ("long", 0))
            if f"{net['id']}/{kind}/{seed}" not in results["runs"]]
    jobs.sort(key=lambda j: j[1] == "long")  # the proxy runs first: the seed tau comes early
    print(f"{len(jobs)} trainings to go", flush=True)
    config_json = config.model_dump_json()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        todo = {pool.submit(train_one, config_json, net["arch"], kind, seed, args.long): (net, kind, seed)
                for net, kind, seed in jobs}
        while todo:
            done, _ = wait(list(todo), return_when=FIRST_COMPLETED)
            for future in done:
                net, kind, seed = todo.pop(future)
                results["runs"][f"{net['id']}/{kind}/{seed}"] = future.result()
                _save(results)
                print(f"{net['name']:24s} {kind:5s} seed {seed}: {future.result()}", flush=True)
                write_doc(results)
    write_doc(results)


def _save(results: dict[str, Any]) -> None:
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, RESULTS)


def write_doc(results: dict[str, Any]) -> None:
    runs = results["runs"]

    def acc(net: dict[str, Any], kind: str, seed: int) -> float | None:
        run = runs.get(f"{net['id']}/{kind}/{seed}")
        return run["accuracy"] if run else None

    nets = results["networks"]
    rows = []
    for net in sorted(nets, key=lambda n: n["latency_ms"]):
        cells = [acc(net, "proxy", 0), acc(net, "proxy", 1), acc(net, "long", 0)]
        rows.append(f"| {net['name']} | `{net['id']}` | {net['latency_ms']:.3f} | {net['macs'] / 1e6:.1f} | "
                    + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")

    def tau(xs: list[Any], ys: list[Any]) -> tuple[int, float]:
        pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
        return len(pairs), kendall_tau([p[0] for p in pairs], [p[1] for p in pairs])

    p0 = [acc(n, "proxy", 0) for n in nets]
    p1 = [acc(n, "proxy", 1) for n in nets]
    pm = [statistics.mean([a, b]) if a is not None and b is not None else None for a, b in zip(p0, p1, strict=True)]
    long = [acc(n, "long", 0) for n in nets]
    macs = [float(n["macs"]) for n in nets]
    n_pl, t_pl = tau(p0, long)
    n_ml, t_ml = tau(pm, long)
    n_ss, t_ss = tau(p0, p1)
    n_cl, t_cl = tau(macs, long)
    spread = [abs(a - b) for a, b in zip(p0, p1, strict=True) if a is not None and b is not None]
    complete = n_pl == len(nets)
    verdict = ("**met**" if t_pl >= 0.5 else "**not met**") if complete else "pending (not every network has run)"
    rungs = " -> ".join(map(str, results["rungs"]))
    lines = [
        "# Proxy fidelity: the search's proxy against longer training",
        "",
        f"Written by `benchmarks/fidelity.py` ({time.strftime('%Y-%m-%d')}); config `{Path(results['config']).name}` "
        f"(proxy rungs {rungs} steps, one warm-up + cosine over the top rung, trained straight through); long training: "
        f"{results['long']} steps of one cosine, same recipe otherwise; held-out split of the training set; "
        f"latency: the config's first target. {len(runs)} of {3 * len(nets)} trainings done.",
        "",
        f"- proxy (seed 0) vs long: Kendall tau **{t_pl:.2f}** over {n_pl} networks (bar >= 0.5: {verdict})",
        f"- proxy (mean of 2 seeds) vs long: tau {t_ml:.2f} over {n_ml}",
        f"- proxy seed 0 vs seed 1: tau {t_ss:.2f} over {n_ss} (mean |difference| "
        f"{statistics.mean(spread) if spread else float('nan'):.3f})",
        f"- MACs vs long: tau {t_cl:.2f} over {n_cl}",
        "",
        "| network | arch id | latency (ms) | MMACs | proxy seed 0 | proxy seed 1 | long |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    DOC.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
