"""Reports of a search run: Pareto fronts (one per latency target), the latency histogram, the
reward curve, a leaderboard.

Everything is read from the run's store, so a report can be drawn while the search still runs (the
store is in WAL mode) and redrawn later with another reward: trials keep raw accuracy and latency,
on every target. The run's reference networks (MobileNetV2 and MnasNet-A1 by default, trained
with the same proxy at its top rung) are drawn as labelled points beside the front, and the report
says in words whether the front beats them at their latency; other zoo models are placed on each
target through the same `LatencyModel` the search used, as latency markers (they were not
trained). With successive halving only the top rung's candidates form the front and the
leaderboard's head (a lower rung's accuracy is not comparable); the report says how far the
ranking can be trusted (`mnas.search.trust`). Repeats (proposals answered from an earlier trial)
are counted, never drawn or ranked twice.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from mnas import zoo
from mnas.arch_strings import to_timm_string
from mnas.errors import UserError
from mnas.latency.model import parse_multiple
from mnas.paths import write_bytes, write_text
from mnas.profile import profile
from mnas.reward import pareto_indices
from mnas.search.accuracy import make_accuracy_model
from mnas.search.config import LatencyConfig, SearchConfig, parse_config
from mnas.search.store import DB_NAME, RungRecord, Store
from mnas.search.trial import Trial
from mnas.search.trust import noise_floor, rung_agreement, size_agreement

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
    references: list[Trial] = field(default_factory=list)  # trained in the run (see module doc)
    rungs: list[RungRecord] = field(default_factory=list)
    top: int = 0  # the accuracy model's top rung

    def at_top(self, t: Trial) -> bool:
        return t.rung is None or t.rung >= self.top

    @property
    def done(self) -> list[Trial]:
        """Finished trials with a reward at the top rung, each architecture once (repeats left out)."""
        return [t for t in self.trials if t.ok and not t.is_repeat and self.at_top(t)]

    @property
    def stopped(self) -> list[Trial]:
        """Finished trials that successive halving stopped below the top rung."""
        return [t for t in self.trials if t.ok and not t.is_repeat and not self.at_top(t)]

    @property
    def repeats(self) -> int:
        return sum(t.is_repeat for t in self.trials)


def load_run(run_dir: str | Path) -> Run:
    """The run's stored config and trials (read-only; works while a search writes)."""
    run_dir = Path(run_dir)
    with Store.open(run_dir) as store:
        config = parse_config(store.config, source=f"{run_dir / DB_NAME} (stored config)")
        trials = store.trials()
        refs = store.references()
        rungs = store.rungs()
    scale = run_scale(config, [*trials, *refs])
    if scale is not None:
        trials, refs = _rescaled(trials, scale), _rescaled(refs, scale)
    return Run(run_dir, config, trials, refs, rungs, make_accuracy_model(config).top)


# -- one latency scale per run -----------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """The one reference latency every ms figure of a run on its first target is made of
    (ms = relative x `ms`). `how`: "T" (the reward's T resolved as "F x name" when the search
    started: `ms` = T / F), "pinned" (the figure the search stored with its config), or "trials"
    (the reference latency the run's trials were scaled with)."""

    name: str
    ms: float
    how: str


def run_scale(config: SearchConfig, trials: list[Trial]) -> Scale | None:
    """The reference latency the search resolved on its first target: T / F where T was given as
    "F x <the target's reference>", else the one its trials were measured with (the median of
    latency / relative); None where neither is known (no relative figures stored)."""
    primary = config.primary
    if primary.reference_ms is not None:  # pinned when the search started (mnas.search.loop.pin_scale)
        return Scale(str(primary.reference), primary.reference_ms, "pinned")
    r = config.reward
    if r.target and r.target_ms:
        try:
            factor, name = parse_multiple(r.target)
        except UserError:
            factor, name = 0.0, ""
        if factor > 0 and name == primary.reference:
            return Scale(name, r.target_ms / factor, "T")
    implied = sorted(float(t.latency_ms) / float(t.relative) for t in trials
                     if t.latency_ms is not None and t.relative is not None and t.relative > 0
                     and math.isfinite(t.latency_ms) and math.isfinite(t.relative))
    if implied:
        return Scale(str(primary.reference), statistics.median(implied), "trials")
    return None


def _rescaled(trials: list[Trial], scale: Scale) -> list[Trial]:
    """Each trial's first-target latency as its relative figure x the run's reference latency (a
    trial measured after the reference was re-measured keeps the run's scale)."""
    out = []
    for t in trials:
        if t.latency_ms is not None and t.relative is not None and t.relative > 0 and math.isfinite(t.relative):
            t = replace(t, latency_ms=t.relative * scale.ms)
        out.append(t)
    return out


def target_scale(run: Run, target: LatencyConfig) -> Scale | None:
    """The run's scale on `target` (only the first target's is stored with the run)."""
    return run_scale(run.config, [*run.trials, *run.references]) if target is run.config.primary else None


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
        "arch_id": trial.arch.id, "timm": to_timm_string(trial.arch), "arch": trial.arch.to_dict(),
        "error": trial.error, "repeat_of": trial.repeat_of, "logp": trial.logp,
        "rung": trial.rung, "budget": trial.budget, "reference": trial.reference,
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


# -- references trained in the run -------------------------------------------------------------
@dataclass(frozen=True)
class TrainedReference:
    """A reference network trained in the run: its accuracy (mean over its seeds) and latency."""

    name: str
    accuracy: float
    latency_ms: float
    seeds: int


def trained_references(run: Run, target: LatencyConfig | None = None) -> list[TrainedReference]:
    by_name: dict[str, list[Trial]] = {}
    for t in run.references:
        if t.status == "done" and t.accuracy is not None and latency(t, target, run.config) is not None:
            by_name.setdefault(str(t.reference), []).append(t)
    return [TrainedReference(name, sum(float(t.accuracy or 0.0) for t in ts) / len(ts),
                             float(latency(ts[0], target, run.config) or 0.0), len(ts)) for name, ts in by_name.items()]


def verdict(run: Run, ref: TrainedReference, target: LatencyConfig | None = None) -> str:
    """Whether the front beats `ref` at its latency, in words."""
    floor = noise_floor(run.references)
    front = pareto(run, target)
    faster = [t for t in front if float(latency(t, target, run.config) or math.inf) <= ref.latency_ms]
    if not faster:
        return (f"does **not** beat {ref.name} ({ref.accuracy:.3f} at {ref.latency_ms:.3f} ms): no searched network "
                f"at the top rung runs at or below its latency")
    best = max(faster, key=accuracy)
    gap = accuracy(best) - ref.accuracy
    ratio = float(latency(best, target, run.config) or 0.0) / ref.latency_ms
    margin = f"; the noise floor is {floor.spread:.3f}" if floor is not None else ""
    if gap > 0:
        return (f"**beats** {ref.name} ({ref.accuracy:.3f} at {ref.latency_ms:.3f} ms): trial {best.trial_id} is "
                f"{gap:+.3f} more accurate at {ratio:.2f}x its latency{margin}")
    return (f"does **not** beat {ref.name} ({ref.accuracy:.3f} at {ref.latency_ms:.3f} ms): the most accurate searched "
            f"network at or below its latency (trial {best.trial_id}, {ratio:.2f}x) is {gap:+.3f}{margin}")


def trust_lines(run: Run) -> list[str]:
    """The report's "How far to trust the ranking" section."""
    lines = ["", "## How far to trust the ranking", ""]
    references = {t.trial_id for t in run.references}
    for a in rung_agreement([r for r in run.rungs if r.trial_id not in references]):  # the candidates only
        lines.append(f"- rung {a.low} vs rung {a.high}: Kendall tau {_fmt(a.tau, '.2f')} over the {a.pairs} candidates "
                     "promoted past rung {0} (1: the early rung ranks them as the later one does)".format(a.low))
    floor = noise_floor(run.references)
    if floor is not None:
        seeds = ", ".join(f"{a:.3f}" for a in floor.accuracies)
        lines.append(f"- noise floor: {floor.name} trained with {len(floor.accuracies)} seeds scores {seeds} "
                     f"(spread {floor.spread:.3f}); accuracy differences below it are not differences")
    else:
        lines.append("- noise floor: not measured (set `references.seeds` to 2 or more)")
    resolution = run.config.primary.resolution or 32
    classes = run.config.primary.num_classes or 10
    macs: dict[str, float] = {}

    def macs_of(t: Trial) -> float:
        if t.arch.id not in macs:
            macs[t.arch.id] = float(profile(t.arch.for_resolution(resolution), resolution, classes).macs)
        return macs[t.arch.id]

    first = [t for t in run.trials if t.status == "done" and not t.is_repeat and t.accuracy is not None]
    by_rung0 = {r.trial_id: r.accuracy for r in run.rungs if r.rung == 0}
    if by_rung0:  # every candidate's first-rung accuracy, whatever rung it reached
        first = [Trial(t.trial_id, t.arch, accuracy=by_rung0[t.trial_id]) for t in first if t.trial_id in by_rung0]
    n, tau = size_agreement(first, macs_of)
    lines.append(f"- size baseline: Kendall tau of first-rung accuracy against MACs over {n} candidates is "
                 f"{_fmt(tau, '.2f')} (near 1: the proxy knows little more than network size)")
    top = run.done
    if len(top) >= 3:
        n, tau = size_agreement(top, macs_of)
        lines.append(f"- at the top rung: accuracy against MACs tau {_fmt(tau, '.2f')} over {n} candidates")
    return lines


# -- zoo references ----------------------------------------------------------------------------
def references(target: LatencyConfig, names: tuple[str, ...] = REFERENCE_MODELS,
               scale: Scale | None = None) -> list[Reference]:
    """Zoo models on one target, through its `LatencyModel` (a table, or cached measurements);
    with the run's `scale`, each is its relative figure x the run's reference latency, and the
    reference network itself is exactly that latency (so it sits at exactly T / F)."""
    try:
        model = target.to_model()
    except Exception as exc:  # e.g. the table was moved away since the search
        return [Reference(n, None, f"error: {' '.join(str(exc).split())[:200]}") for n in names]
    out = []
    for name in names:
        try:
            if scale is not None and name == scale.name:
                out.append(Reference(name, scale.ms, "the run's reference"))
                continue
            est = model.estimate(zoo.get(name))
            ms = est.relative * scale.ms if scale is not None and est.relative is not None else est.ms
            out.append(Reference(name, ms, est.how))
        except Exception as exc:  # e.g. a table without this model's layers
            out.append(Reference(name, None, f"error: {' '.join(str(exc).split())[:200]}"))
    return out


def reference_line(target: LatencyConfig, scale: Scale | None = None) -> str:
    """'mobilenet_v2 = 3.512 ms (2026-11-30 08:35 UTC, spread 1.2% over 3 processes)': what relative
    latencies are relative to: the run's `scale` where given (with a note where the reference has
    been measured again since), else the reference's latency on record."""
    try:
        ref = target.model_copy(update={"reference_ms": None}).to_model().reference_latency()  # as on record
    except Exception as exc:
        if scale is not None:
            return f"{scale.name} = {scale.ms:.3f} ms (the run's)"
        return f"reference {target.reference}: unavailable ({' '.join(str(exc).split())[:120]})"
    unstable = "" if ref.stable else "; unstable: `mnas latency reference --fresh` with this target measures it again"
    if scale is None or math.isclose(scale.ms, ref.ms, rel_tol=1e-9):
        return f"{ref.name} = {ref.ms:.3f} ms ({ref.date}, {ref.spread_text()}{unstable})"
    how = {"T": "from T", "pinned": "pinned when the search started"}.get(scale.how, "as its trials were measured")
    return (f"{scale.name} = {scale.ms:.3f} ms (the run's, {how}; "
            f"measured again since: {ref.ms:.3f} ms on {ref.date}, every figure here keeps the run's)")


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
    stopped = [t for t in run.stopped if latency(t, target, run.config) is not None]
    if stopped:
        ax.scatter([float(latency(t, target, run.config) or 0.0) for t in stopped], [accuracy(t) for t in stopped],
                   marker="x", color="lightgray", s=12, label="stopped at a lower rung (not comparable)")
    ours = trained_references(run, target)
    for trained in ours:
        ax.scatter([trained.latency_ms], [trained.accuracy], marker="*", s=140, color="tab:orange",
                   edgecolors="black", linewidths=0.5, zorder=5)
        ax.annotate(trained.name, (trained.latency_ms, trained.accuracy), textcoords="offset points", xytext=(5, -10),
                    fontsize=7)
    if ours:
        ax.scatter([], [], marker="*", s=140, color="tab:orange", edgecolors="black", label="references (same proxy)")
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
    xs_all = ([float(latency(t, target, run.config) or 0.0) for t in done] + [r.latency_ms for r in refs if r.latency_ms]
              + [r.latency_ms for r in ours])
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
    stopped = f", {len(run.stopped)} stopped early" if run.stopped else ""
    fig.suptitle(f"{len(run.done)} models at the top rung{stopped}, {failed} failed, {run.repeats} repeats")
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
    """Ranked by the rung reached, then by reward (results of different rungs never as equals)."""
    ranked = run.done + run.stopped
    return sorted(ranked, key=lambda t: (-(t.rung if t.rung is not None else run.top), -reward(t),
                                         float(t.latency_ms or 0.0)))[:size]


def render_markdown(run: Run, refs: dict[str, list[Reference]]) -> str:
    c = run.config
    counts = {s: sum(t.status == s and not t.is_repeat for t in run.trials) for s in ("done", "failed", "pending", "running")}
    r = c.reward.to_reward()
    rule = f"preset {c.reward.preset}" if c.reward.preset else f"alpha {r.alpha:g}, beta {r.beta:g}"
    t_text = f"{c.reward.target} = {r.target_ms:.3f} ms" if c.reward.target else f"{r.target_ms:g} ms"
    proxy = make_accuracy_model(c).describe()
    reached = Counter(t.rung for t in run.trials if t.ok and not t.is_repeat and t.rung is not None)
    climbed = ", ".join(f"{sum(n for r, n in reached.items() if r >= k)} reached rung {k}"
                        for k in range(run.top + 1)) if reached else ""
    lines = [
        f"# Search report: {run.run_dir.name}",
        "",
        f"- space: `{c.space}`; strategy: `{c.strategy.name}`; seed {c.seed}",
        f"- reward: T = {t_text} on {target_label(c.primary)}, {rule}",
        "- latency targets: " + "; ".join(f"{target_label(t)}, relative to {reference_line(t, target_scale(run, t))}"
                                          for t in c.latency),
        f"- accuracy: {c.data.dataset} (train subset {c.data.train_subset or 'all'}, held-out val {c.data.val_size}), "
        + proxy + (f"; {climbed}" if climbed else ""),
        f"- trials: {counts['done']} done, {counts['failed']} failed, {counts['pending'] + counts['running']} unfinished, "
        f"{run.repeats} repeat(s) answered from earlier trials; budget {c.budget.trials} evaluations",
        "",
        "![Pareto](pareto.png)",
        "",
        "![latency histogram](latency_hist.png) ![reward curve](reward_curve.png)",
        "",
    ]
    ours = trained_references(run)
    if ours:
        lines += ["## References trained in this run (same proxy, top rung)", ""]
        lines += [f"- the front {verdict(run, ref)}" for ref in ours]
        lines += ["", "| reference | seeds | accuracy | latency (ms) |", "|---|---:|---:|---:|"]
        lines += [f"| {r.name} | {r.seeds} | {r.accuracy:.4f} | {r.latency_ms:.3f} |" for r in ours]
        lines.append("")
    lines += trust_lines(run)[1:] + [
        "",
        "## Leaderboard (by rung reached, then reward)",
        "",
        "| rank | trial | step | rung | reward | accuracy | latency (ms) | proposed again | arch id | timm arch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    again = Counter(t.repeat_of for t in run.trials if t.is_repeat)
    for rank, t in enumerate(leaderboard(run), start=1):
        rung = "-" if t.rung is None else str(t.rung)
        lines.append(f"| {rank} | {t.trial_id} | {t.step} | {rung} | {reward(t):.4f} | {accuracy(t):.4f} | "
                     f"{_fmt(t.latency_ms, '.3f')} | {again[t.trial_id]} | `{t.arch.id}` | `{to_timm_string(t.arch)}` |")
    if not run.done and not run.stopped:
        lines.append("| - | no finished trial yet | | | | | | | | |")
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
    refs = {t.label: references(t, scale=target_scale(run, t)) for t in run.config.latency} if zoo else {}
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
