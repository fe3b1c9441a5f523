"""PPO knob variants against random search on the NAS-Bench-201 settings of search_strategies.py.

Writes docs/benchmarks/search_ppo_tuning.md: per variant, in how many settings it beats random
search (one-sided Mann-Whitney U over the seeds' best rewards, p < 0.05) at one budget, its mean
regret, and the settings it does not win. Same protocol, settings, seeds and sharing as
`benchmarks/search_strategies.py` (both run the real search loop over the table with
`mnas.search.nb201.search`); cheaper, because it runs PPO and random only, to one budget, so
several knob sets can be compared before a full rerun there.

    python benchmarks/ppo_tuning.py --budget 200 --seeds 20 --variant '{}' --variant '{"top_k": 8}'
    python benchmarks/ppo_tuning.py --budget 500 --at 200 --first-seed 20   # two budgets, fresh seeds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from doc_notes import hand_written
from mnas.search import nb201
from mnas.strategies import make_strategy

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "search_ppo_tuning.md"


def _job(args: tuple[str, dict[str, Any], int, nb201.Setting, int]) -> list[tuple[int, ...]]:
    name, knobs, seed, setting, budget = args
    return [tuple(c) for c in nb201.search(name, name, knobs, seed, setting, budget)["cells"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", nargs="?", type=Path, default=nb201.default_table_path())
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--at", type=int, action="append", default=[],
                    help="also score each search at this smaller budget (repeatable)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first..first+seeds-1 (a fresh range confirms a variant chosen on seeds 0..19)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--variant", action="append", default=None, help="PPO knobs as JSON (repeatable)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    table = nb201.load_table(args.table)
    for v in variants:  # bad knobs stop here, before any search
        make_strategy("ppo", nb201.NB201Space(), 0, v)
    settings = nb201.make_settings(table)
    start, t0 = dt.datetime.now(dt.UTC), time.time()
    jobs: dict[tuple[str, int, str], tuple[str, dict[str, Any], int, nb201.Setting, int]] = {}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        jobs[("random", seed, "any")] = ("random", {}, seed, settings[0], args.budget)
        for v in variants:
            for s in settings:
                jobs.setdefault((json.dumps(v, sort_keys=True), seed, nb201.problem("ppo", s)),
                                ("ppo", v, seed, s, args.budget))
    cells: dict[tuple[str, int, str], list[tuple[int, ...]]] = {}
    with multiprocessing.get_context("fork").Pool(args.workers, nb201.use_table, (table,)) as pool:
        keys = list(jobs)
        for key, found in zip(keys, pool.imap(_job, [jobs[k] for k in keys]), strict=True):
            cells[key] = found
    budgets = sorted({args.budget, *(n for n in args.at if 0 < n < args.budget)})
    optimum = {s.label: max(s.reward()(acc, lats[s.device]) for acc, lats in table.values()) for s in settings}
    rows = []
    for label, n in [(label, n) for label in ["random"] + [json.dumps(v, sort_keys=True) for v in variants]
                     for n in budgets]:
        wins, regrets, lost = 0, [], []
        for s in settings:
            reward = s.reward()

            def best(key: str, seed: int, s: nb201.Setting = s, reward: Any = reward, n: int = n) -> float:
                problem = "any" if key == "random" else nb201.problem("ppo", s)
                return max(reward(table[c][0], table[c][1][s.device]) for c in cells[(key, seed, problem)][:n])

            mine = [best(label, k) for k in seeds]
            regrets.append(1e3 * statistics.mean(optimum[s.label] - b for b in mine))
            if label != "random":
                p = nb201.p_greater(mine, [best("random", k) for k in seeds])
                wins += p < nb201.ALPHA
                if p >= nb201.ALPHA:
                    lost.append(f"{s.label} ({p:.2f})")
        rows.append((label, n, wins, statistics.mean(regrets), lost))
        print(label, n, wins, f"{statistics.mean(regrets):.2f}", flush=True)
    write(args, rows, len(settings), start, time.time() - t0)


def write(args: argparse.Namespace, rows: list[tuple[str, int, int, float, list[str]]], n: int, start: dt.datetime,
          elapsed: float) -> None:
    lines = ["# PPO knobs against random search (NAS-Bench-201, real device latency)", "",
             f"Written by `python benchmarks/ppo_tuning.py` on {start:%Y-%m-%d %H:%M} UTC ({elapsed / 60:.0f} min, "
             f"{args.workers} worker(s)): the {n} settings and protocol of "
             "`benchmarks/search_strategies.py` (docs/benchmarks/search.md), seeds "
             f"{args.first_seed}..{args.first_seed + args.seeds - 1}, PPO and random search only, "
             f"to {args.budget} evaluated cells. Wins: settings where PPO beats random (one-sided "
             "Mann-Whitney U, p < 0.05) among the first `cells` evaluated; regret in 1e-3 reward, "
             "mean over settings and seeds.", "",
             f"| PPO knobs (changes from the defaults) | cells | wins (of {n}) | mean regret | "
             "settings not won (p) |", "|---|---:|---:|---:|---|"]
    for label, budget, wins, regret, lost in rows:
        name = "random search" if label == "random" else f"`{label}`"
        lines.append(f"| {name} | {budget} | {'-' if label == 'random' else wins} | {regret:.2f} | "
                     f"{', '.join(lost) or '-'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    notes = hand_written(args.out, "## Reading", "## Reading\n\n(to be written)\n")
    args.out.write_text("\n".join(lines) + "\n\n" + notes)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
