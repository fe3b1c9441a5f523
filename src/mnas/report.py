"""Reports of a search run: the Pareto plot, the latency histogram, the reward curve, a leaderboard.

Everything is read from the run's store, so a report can be drawn while the search still runs (the
store is in WAL mode) and redrawn later with another reward: trials keep raw accuracy and latency.
Zoo reference models are placed on the same target as the candidates: measured through the latency
cache (so only the first report pays for it) or predicted by the run's LUT. Their proxy accuracy
is unknown (they were not trained in the run), so they are drawn as labelled latency markers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from mnas.config import SearchConfig, parse_config
from mnas.errors import UserError
from mnas.store import DB_NAME, Store
from mnas.trial import Trial

REFERENCE_MODELS = ("mnasnet_a1", "mnasnet_b1", "mnasnet_small", "mobilenet_v2")
LEADERBOARD_SIZE = 10


@dataclass(frozen=True)
class Reference:
    """A zoo model's latency on the run's target (or why it could not be had)."""

    name: str
    latency_ms: float | None
    how: str  # "measured" | "lut" | "error: ..."


@dataclass
class Run:
    run_dir: Path
    config: SearchConfig
    trials: list[Trial]

    @property
    def done(self) -> list[Trial]:
        return [t for t in self.trials if t.ok]


def load_run(run_dir: str | Path) -> Run:
    """The run's stored config and trials (read-only; works while a search writes)."""
    run_dir = Path(run_dir)
    with Store.open(run_dir) as store:
        config = parse_config(store.config, source=f"{run_dir / DB_NAME} (stored config)")
        trials = store.trials()
    return Run(run_dir, config, trials)


def pareto(run: Run) -> list[Trial]:
    from mnas.reward import pareto_front

    return pareto_front(run.done)


def trial_record(trial: Trial) -> dict[str, Any]:
    """A trial as JSON-able data (for --json and `mnas best`)."""
    return {
        "trial_id": trial.trial_id, "step": trial.step, "status": trial.status,
        "accuracy": trial.accuracy, "latency_ms": trial.latency_ms, "reward": trial.reward,
        "seconds": trial.seconds, "arch_id": trial.arch.id, "timm": trial.arch.to_timm_string(),
        "arch": trial.arch.to_dict(), "error": trial.error,
    }


def pick_best(run: Run, max_latency_ms: float | None = None) -> Trial:
    """The best model: highest reward; under a latency cap, the most accurate one that fits."""
    done = run.done
    if not done:
        raise UserError(f"{run.run_dir} has no finished trial yet; nothing to pick")
    if max_latency_ms is None:
        return max(done, key=lambda t: (t.reward, t.accuracy, -t.latency_ms))
    fits = [t for t in done if t.latency_ms <= max_latency_ms]
    if not fits:
        fastest = min(t.latency_ms for t in done)
        raise UserError(f"no finished trial runs within {max_latency_ms:g} ms (the fastest takes "
                        f"{fastest:.3f} ms); raise --max-latency")
    return max(fits, key=lambda t: (t.accuracy, -t.latency_ms))


# -- zoo references ----------------------------------------------------------------------------
def references(config: SearchConfig, names: tuple[str, ...] = REFERENCE_MODELS) -> list[Reference]:
    """Zoo models on the run's target: LUT prediction, or a cached real measurement."""
    from mnas import zoo
    from mnas.search.evaluation import latency_of

    out = []
    for name in names:
        try:
            value = latency_of(zoo.get(name), config)
            out.append(Reference(name, value, "lut" if config.latency.lut else "measured"))
        except Exception as exc:  # e.g. a LUT without this model's layers
            out.append(Reference(name, None, f"error: {' '.join(str(exc).split())[:200]}"))
    return out


# -- plots -------------------------------------------------------------------------------------
def plot_pareto(run: Run, refs: list[Reference], path: Path) -> Path:
    """Accuracy vs latency of every sampled model, the Pareto front, the target, zoo markers."""
    done = run.done
    fig, ax = plt.subplots(figsize=(7, 5))
    if done:
        points = ax.scatter([t.latency_ms for t in done], [t.accuracy for t in done],
                            c=[t.step for t in done], cmap="viridis", s=18, alpha=0.8,
                            label="sampled models")
        bar = fig.colorbar(points, ax=ax, label="search step")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        front = sorted(pareto(run), key=lambda t: t.latency_ms)
        xs = [t.latency_ms for t in front]
        ys = [t.accuracy for t in front]
        ax.step(xs, ys, where="post", color="tab:red", lw=1.5, label="Pareto front")
        ax.scatter(xs, ys, facecolors="none", edgecolors="tab:red", s=60)
    ax.axvline(run.config.reward.target_ms, color="black", ls=":", lw=1,
               label=f"target T = {run.config.reward.target_ms:g} ms")
    placed = False
    for ref in refs:
        if ref.latency_ms is None:
            continue
        ax.axvline(ref.latency_ms, color="gray", ls="--", lw=0.8,
                   label=None if placed else "zoo models (same target)")
        ax.annotate(ref.name, (ref.latency_ms, 0.98), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color="dimgray")
        placed = True
    xs_all = [t.latency_ms for t in done] + [r.latency_ms for r in refs if r.latency_ms]
    if xs_all and max(xs_all) > 20 * min(xs_all):
        ax.set_xscale("log")  # zoo models can be far slower than a small-target search
    failed = sum(t.status == "failed" for t in run.trials)
    ax.set_xlabel(f"latency (ms) on {_target_label(run.config)}")
    ax.set_ylabel("proxy accuracy")
    ax.set_title(f"{len(done)} models, {failed} failed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_latency_hist(run: Run, path: Path) -> Path:
    """How the sampled models' latencies spread around the target (paper fig. 6, bottom)."""
    lats = [t.latency_ms for t in run.trials if t.latency_ms is not None]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if lats:
        ax.hist(lats, bins=min(40, max(5, int(math.sqrt(len(lats))) * 2)), color="tab:blue",
                alpha=0.8)
    ax.axvline(run.config.reward.target_ms, color="black", ls=":", lw=1, label="target T")
    ax.set_xlabel(f"latency (ms) on {_target_label(run.config)}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("models")
    ax.set_title(f"latency of {len(lats)} sampled models")
    ax.legend(fontsize=8)
    return _save(fig, path)


def reward_by_step(run: Run) -> list[tuple[int, float, float, float]]:
    """(step, best in step, mean in step, best so far) over steps with a finished trial."""
    steps: dict[int, list[float]] = {}
    for t in run.done:
        steps.setdefault(t.step, []).append(t.reward)
    rows, running = [], -math.inf
    for step in sorted(steps):
        values = steps[step]
        running = max(running, max(values))
        rows.append((step, max(values), sum(values) / len(values), running))
    return rows


def plot_reward_curve(run: Run, path: Path) -> Path:
    """Best and mean reward per step, and the best so far: is the strategy learning?"""
    rows = reward_by_step(run)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if rows:
        steps = [r[0] for r in rows]
        ax.plot(steps, [r[2] for r in rows], marker="o", ms=3, label="mean reward of step")
        ax.plot(steps, [r[1] for r in rows], marker="^", ms=3, label="best reward of step")
        ax.plot(steps, [r[3] for r in rows], color="black", lw=1, ls="--", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("search step (one strategy batch)")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _target_label(config: SearchConfig) -> str:
    lat = config.latency
    if lat.lut:
        return f"LUT {Path(lat.lut).name}"
    return f"{lat.backend}, {lat.threads} thread(s), {lat.resolution}px"


# -- the markdown report -----------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def leaderboard(run: Run, size: int = LEADERBOARD_SIZE) -> list[Trial]:
    return sorted(run.done, key=lambda t: (-t.reward, t.latency_ms))[:size]


def render_markdown(run: Run, refs: list[Reference]) -> str:
    c = run.config
    counts = {s: sum(t.status == s for t in run.trials) for s in ("done", "failed", "pending", "running")}
    r = c.reward.to_reward()
    reward = f"preset {c.reward.preset}" if c.reward.preset else f"alpha {r.alpha:g}, beta {r.beta:g}"
    lines = [
        f"# Search report: {run.run_dir.name}",
        "",
        f"- space: `{c.space}`; strategy: `{c.strategy.name}`; seed {c.seed}",
        f"- latency target: {_target_label(c)}; reward T = {c.reward.target_ms:g} ms, {reward}",
        f"- proxy: {c.data.dataset} (train subset {c.data.train_subset or 'all'}, val "
        f"{c.data.val_size}), {c.proxy.epochs:g} epoch(s), batch {c.proxy.batch_size}"
        + (f", at most {c.proxy.max_steps} steps" if c.proxy.max_steps else ""),
        f"- trials: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['pending'] + counts['running']} unfinished, budget {c.budget.trials}",
        "",
        "![Pareto](pareto.png)",
        "",
        "![latency histogram](latency_hist.png) ![reward curve](reward_curve.png)",
        "",
        "## Leaderboard (by reward)",
        "",
        "| rank | trial | step | reward | accuracy | latency (ms) | arch id | timm arch |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for rank, t in enumerate(leaderboard(run), start=1):
        lines.append(f"| {rank} | {t.trial_id} | {t.step} | {t.reward:.4f} | {t.accuracy:.4f} | "
                     f"{t.latency_ms:.3f} | `{t.arch.id}` | `{t.arch.to_timm_string()}` |")
    if not run.done:
        lines.append("| - | no finished trial yet | | | | | | |")
    lines += ["", "## Pareto front (accuracy up, latency down)", "",
              "| trial | accuracy | latency (ms) | reward |", "|---:|---:|---:|---:|"]
    for t in sorted(pareto(run), key=lambda t: t.latency_ms):
        lines.append(f"| {t.trial_id} | {t.accuracy:.4f} | {t.latency_ms:.3f} | {t.reward:.4f} |")
    if refs:
        lines += ["", "## Zoo reference models on the same target", "",
                  "| model | latency (ms) | how |", "|---|---:|---|"]
        for r in refs:
            lines.append(f"| {r.name} | {_fmt(r.latency_ms, '.3f')} | {r.how} |")
    failed = [t for t in run.trials if t.status == "failed"]
    if failed:
        lines += ["", "## Failed trials", "", "| trial | step | error |", "|---:|---:|---|"]
        for t in failed[:50]:
            lines.append(f"| {t.trial_id} | {t.step} | {(t.error or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReportFiles:
    pareto: Path
    latency_hist: Path
    reward_curve: Path
    markdown: Path


def write_report(run_dir: str | Path, *, zoo: bool = True) -> ReportFiles:
    """Draw the three plots and write report.md into the run directory."""
    run = load_run(run_dir)
    refs = references(run.config) if zoo else []
    out = run.run_dir
    files = ReportFiles(
        plot_pareto(run, refs, out / "pareto.png"),
        plot_latency_hist(run, out / "latency_hist.png"),
        plot_reward_curve(run, out / "reward_curve.png"),
        out / "report.md",
    )
    files.markdown.write_text(render_markdown(run, refs))
    return files


def pareto_json(run_dir: str | Path) -> str:
    """The Pareto set as JSON text (fast to slow)."""
    run = load_run(run_dir)
    front = sorted(pareto(run), key=lambda t: t.latency_ms)
    return json.dumps([trial_record(t) for t in front], indent=2)
