"""Reports of a search run: Pareto fronts (one per latency target), the latency histogram, the
reward curve, a leaderboard.

Everything is read from the run's store, so a report can be drawn while the search still runs (the
store is in WAL mode) and redrawn later with another reward: trials keep raw accuracy and latency,
on every target. Zoo reference models are placed on each target through the same `LatencyModel`
the search used (measured through the latency cache, so only the first report pays for it, or
predicted by the target's table). Their proxy accuracy is unknown (they were not trained in the
run), so they are drawn as labelled latency markers. Repeats (proposals answered from an earlier
trial) are counted, never drawn or ranked twice.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from mnas import zoo
from mnas.config import LatencyConfig, SearchConfig, parse_config
from mnas.errors import UserError
from mnas.paths import write_bytes, write_text
from mnas.reward import pareto_indices
from mnas.store import DB_NAME, Store
from mnas.trial import Trial

REFERENCE_MODELS = ("mnasnet_a1", "mnasnet_b1", "mnasnet_small", "mobilenet_v2")
LEADERBOARD_SIZE = 10


@dataclass(frozen=True)
class Reference:
    """A zoo model's latency on one target (or why it could not be had)."""

    name: str
    latency_ms: float | None
    how: str  # "measured" | "cached" | "lut" | "error: ..."


@dataclass
class Run:
    run_dir: Path
    config: SearchConfig
    trials: list[Trial]

    @property
    def done(self) -> list[Trial]:
        """Finished trials with a reward, each architecture once (repeats left out)."""
        return [t for t in self.trials if t.ok and not t.is_repeat]

    @property
    def repeats(self) -> int:
        return sum(t.is_repeat for t in self.trials)


def load_run(run_dir: str | Path) -> Run:
    """The run's stored config and trials (read-only; works while a search writes)."""
    run_dir = Path(run_dir)
    with Store.open(run_dir) as store:
        config = parse_config(store.config, source=f"{run_dir / DB_NAME} (stored config)")
        trials = store.trials()
    return Run(run_dir, config, trials)


def accuracy(t: Trial) -> float:
    assert t.accuracy is not None, t
    return float(t.accuracy)


def latency(t: Trial, target: LatencyConfig | None = None, config: SearchConfig | None = None) -> float | None:
    """The trial's latency on `target` (its first target's when None); None if not measured there."""
    if target is None or (config is not None and target is config.primary):
        return t.latency_ms
    return (t.latencies or {}).get(target.label)


def reward(t: Trial) -> float:
    assert t.reward is not None, t
    return float(t.reward)


def pareto(run: Run, target: LatencyConfig | None = None) -> list[Trial]:
    """The done trials no other beats on both accuracy (up) and latency on `target` (down)."""
    usable = [t for t in run.done if latency(t, target, run.config) is not None]
    points = [(accuracy(t), float(latency(t, target, run.config) or 0.0)) for t in usable]
    return [usable[i] for i in pareto_indices(points)]


def trial_record(trial: Trial) -> dict[str, Any]:
    """A trial as JSON-able data (for --json and `mnas best`)."""
    return {
        "trial_id": trial.trial_id, "step": trial.step, "status": trial.status,
        "accuracy": trial.accuracy, "latency_ms": trial.latency_ms, "latencies": trial.latencies,
        "relative_latency": trial.relative, "reward": trial.reward, "seconds": trial.seconds,
        "arch_id": trial.arch.id, "timm": trial.arch.to_timm_string(), "arch": trial.arch.to_dict(),
        "error": trial.error, "repeat_of": trial.repeat_of, "logp": trial.logp,
    }


def pick_best(run: Run, max_latency_ms: float | None = None) -> Trial:
    """The best model: highest reward; under a latency cap, the most accurate one that fits."""
    done = run.done
    if not done:
        raise UserError(f"{run.run_dir} has no finished trial yet; nothing to pick")
    if max_latency_ms is None:
        return max(done, key=lambda t: (reward(t), accuracy(t), -float(t.latency_ms or 0.0)))
    fits = [t for t in done if t.latency_ms is not None and t.latency_ms <= max_latency_ms]
    if not fits:
        fastest = min(float(t.latency_ms or math.inf) for t in done)
        raise UserError(f"no finished trial runs within {max_latency_ms:g} ms (the fastest takes "
                        f"{fastest:.3f} ms); raise --max-latency")
    return max(fits, key=lambda t: (accuracy(t), -float(t.latency_ms or 0.0)))


# -- zoo references ----------------------------------------------------------------------------
def references(target: LatencyConfig, names: tuple[str, ...] = REFERENCE_MODELS) -> list[Reference]:
    """Zoo models on one target, through its `LatencyModel` (a table, or cached measurements)."""
    try:
        model = target.to_model()
    except Exception as exc:  # e.g. the table was moved away since the search
        return [Reference(n, None, f"error: {' '.join(str(exc).split())[:200]}") for n in names]
    out = []
    for name in names:
        try:
            est = model.estimate(zoo.get(name))
            out.append(Reference(name, est.ms, est.how))
        except Exception as exc:  # e.g. a table without this model's layers
            out.append(Reference(name, None, f"error: {' '.join(str(exc).split())[:200]}"))
    return out


def reference_line(target: LatencyConfig) -> str:
    """'mobilenet_v2 = 3.512 ms (2026-11-30 08:35 UTC, spread 1.2% over 3 processes)': what relative
    latencies are relative to."""
    try:
        ref = target.to_model().reference_latency()
    except Exception as exc:
        return f"reference {target.reference}: unavailable ({' '.join(str(exc).split())[:120]})"
    unstable = "" if ref.stable else "; unstable: `mnas latency reference --fresh` with this target measures it again"
    return f"{ref.name} = {ref.ms:.3f} ms ({ref.date}, {ref.spread_text()}{unstable})"


# -- plots -------------------------------------------------------------------------------------
def _front_axes(ax: Axes, run: Run, target: LatencyConfig, refs: list[Reference], with_target: bool) -> None:
    done = [t for t in run.done if latency(t, target, run.config) is not None]
    if done:
        points = ax.scatter([float(latency(t, target, run.config) or 0.0) for t in done], [accuracy(t) for t in done],
                            c=[t.step for t in done], cmap="viridis", s=14, alpha=0.8, label="sampled models")
        bar = ax.figure.colorbar(points, ax=ax, label="search step")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        front = pareto(run, target)
        xs = [float(latency(t, target, run.config) or 0.0) for t in front]
        ys = [accuracy(t) for t in front]
        ax.step(xs, ys, where="post", color="tab:red", lw=1.5, label="Pareto front")
        ax.scatter(xs, ys, facecolors="none", edgecolors="tab:red", s=50)
    if with_target:
        t_ms = run.config.reward.target_ms or 0.0
        ax.axvline(t_ms, color="black", ls=":", lw=1, label=f"target T = {t_ms:.3g} ms")
    placed = False
    for ref in refs:
        if ref.latency_ms is None:
            continue
        ax.axvline(ref.latency_ms, color="gray", ls="--", lw=0.8, label=None if placed else "zoo models (same target)")
        ax.annotate(ref.name, (ref.latency_ms, 0.98), xycoords=("data", "axes fraction"), rotation=90, va="top",
                    ha="right", fontsize=7, color="dimgray")
        placed = True
    xs_all = [float(latency(t, target, run.config) or 0.0) for t in done] + [r.latency_ms for r in refs if r.latency_ms]
    if xs_all and max(xs_all) > 20 * min(xs_all):
        ax.set_xscale("log")  # zoo models can be far slower than a small-target search
    ax.set_xlabel(f"latency (ms) on {target_label(target)}")
    ax.set_ylabel("accuracy (held-out)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_pareto(run: Run, refs: dict[str, list[Reference]], path: Path) -> Path:
    """Accuracy vs latency of every sampled model and the Pareto front, one panel per target
    (one search serves every device: accuracy does not depend on it)."""
    targets = run.config.latency
    fig, axes = plt.subplots(1, len(targets), figsize=(7 * len(targets), 5), squeeze=False)
    for i, (ax, target) in enumerate(zip(axes[0], targets, strict=True)):
        _front_axes(ax, run, target, refs.get(target.label, []), with_target=i == 0)
    failed = sum(t.status == "failed" for t in run.trials)
    fig.suptitle(f"{len(run.done)} models, {failed} failed, {run.repeats} repeats")
    return _save(fig, path)


def plot_latency_hist(run: Run, path: Path) -> Path:
    """How the sampled models' latencies spread around the target (paper fig. 6, bottom)."""
    lats = [float(t.latency_ms) for t in run.trials if t.latency_ms is not None and not t.is_repeat]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if lats:
        ax.hist(lats, bins=min(40, max(5, int(math.sqrt(len(lats))) * 2)), color="tab:blue", alpha=0.8)
    ax.axvline(run.config.reward.target_ms or 0.0, color="black", ls=":", lw=1, label="target T")
    ax.set_xlabel(f"latency (ms) on {target_label(run.config.primary)}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("models")
    ax.set_title(f"latency of {len(lats)} sampled models")
    ax.legend(fontsize=8)
    return _save(fig, path)


def reward_by_step(run: Run) -> list[tuple[int, float, float, float]]:
    """(step, best in step, mean in step, best so far) over steps with a finished trial."""
    steps: dict[int, list[float]] = {}
    for t in run.done:
        steps.setdefault(t.step, []).append(reward(t))
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
    """Drawn in memory, then written whole and renamed into place (never through a link)."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def target_label(t: LatencyConfig) -> str:
    if t.lut:
        return f"{t.label} (LUT {Path(t.lut).name})"
    return f"{t.label} ({t.backend}, {t.threads} thread(s), {t.resolution}px)"


# -- the markdown report -----------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def leaderboard(run: Run, size: int = LEADERBOARD_SIZE) -> list[Trial]:
    return sorted(run.done, key=lambda t: (-reward(t), float(t.latency_ms or 0.0)))[:size]


def render_markdown(run: Run, refs: dict[str, list[Reference]]) -> str:
    c = run.config
    counts = {s: sum(t.status == s and not t.is_repeat for t in run.trials) for s in ("done", "failed", "pending", "running")}
    r = c.reward.to_reward()
    rule = f"preset {c.reward.preset}" if c.reward.preset else f"alpha {r.alpha:g}, beta {r.beta:g}"
    t_text = f"{c.reward.target} = {r.target_ms:.3f} ms" if c.reward.target else f"{r.target_ms:g} ms"
    proxy = (f"supernet `{c.proxy.path}` (inherited weights, BN re-estimated on {c.proxy.bn_batches} batches, "
             f"{c.proxy.score_images} held-out images)" if c.proxy.kind == "supernet" else
             f"{c.proxy.epochs:g} epoch(s) of training, batch {c.proxy.batch_size}"
             + (f", at most {c.proxy.max_steps} steps" if c.proxy.max_steps else ""))
    lines = [
        f"# Search report: {run.run_dir.name}",
        "",
        f"- space: `{c.space}`; strategy: `{c.strategy.name}`; seed {c.seed}",
        f"- reward: T = {t_text} on {target_label(c.primary)}, {rule}",
        "- latency targets: " + "; ".join(f"{target_label(t)}, relative to {reference_line(t)}" for t in c.latency),
        f"- accuracy: {c.data.dataset} (train subset {c.data.train_subset or 'all'}, held-out val {c.data.val_size}), "
        + proxy,
        f"- trials: {counts['done']} done, {counts['failed']} failed, {counts['pending'] + counts['running']} unfinished, "
        f"{run.repeats} repeat(s) answered from earlier trials; budget {c.budget.trials} evaluations",
        "",
        "![Pareto](pareto.png)",
        "",
        "![latency histogram](latency_hist.png) ![reward curve](reward_curve.png)",
        "",
        "## Leaderboard (by reward)",
        "",
        "| rank | trial | step | reward | accuracy | latency (ms) | proposed again | arch id | timm arch |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    again = Counter(t.repeat_of for t in run.trials if t.is_repeat)
    for rank, t in enumerate(leaderboard(run), start=1):
        lines.append(f"| {rank} | {t.trial_id} | {t.step} | {reward(t):.4f} | {accuracy(t):.4f} | "
                     f"{_fmt(t.latency_ms, '.3f')} | {again[t.trial_id]} | `{t.arch.id}` | `{t.arch.to_timm_string()}` |")
    if not run.done:
        lines.append("| - | no finished trial yet | | | | | | | |")
    for target in c.latency:
        lines += ["", f"## Pareto front on {target_label(target)} (accuracy up, latency down)", "",
                  "| trial | accuracy | latency (ms) | reward |", "|---:|---:|---:|---:|"]
        for t in sorted(pareto(run, target), key=lambda t: float(latency(t, target, c) or 0.0)):
            lines.append(f"| {t.trial_id} | {accuracy(t):.4f} | {_fmt(latency(t, target, c), '.3f')} | {reward(t):.4f} |")
        if refs.get(target.label):
            lines += ["", "| zoo model | latency (ms) | how |", "|---|---:|---|"]
            for ref in refs[target.label]:
                lines.append(f"| {ref.name} | {_fmt(ref.latency_ms, '.3f')} | {ref.how} |")
    failed = [t for t in run.trials if t.status == "failed" and not t.is_repeat]
    if failed:
        lines += ["", "## Failed trials", "", "| trial | step | proposed again | error |", "|---:|---:|---:|---|"]
        for t in failed[:50]:
            lines.append(f"| {t.trial_id} | {t.step} | {again[t.trial_id]} | {(t.error or '').replace('|', '/')} |")
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
    refs = {t.label: references(t) for t in run.config.latency} if zoo else {}
    out = run.run_dir
    files = ReportFiles(
        plot_pareto(run, refs, out / "pareto.png"),
        plot_latency_hist(run, out / "latency_hist.png"),
        plot_reward_curve(run, out / "reward_curve.png"),
        out / "report.md",
    )
    write_text(files.markdown, render_markdown(run, refs))
    return files


def pareto_json(run_dir: str | Path) -> str:
    """The Pareto set on the first target as JSON text (fast to slow)."""
    run = load_run(run_dir)
    front = sorted(pareto(run), key=lambda t: float(t.latency_ms or 0.0))
    return json.dumps([trial_record(t) for t in front], indent=2)
