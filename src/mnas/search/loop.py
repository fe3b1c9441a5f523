"""The search loop: ask -> evaluate -> reward -> store -> tell, resumable after any crash.

Each batch moves through the store in three durable steps: the asked trials are inserted together
with the strategy's post-ask state (one transaction); every result is saved the moment it
arrives; after the whole batch, `tell` and the post-tell state are committed together (one
transaction). So a killed search resumes exactly: the checkpoint always matches the trials, done
trials are kept, and trials left `pending`/`running` are evaluated again before the strategy is
told about the batch. A batch is told at once, in trial-id order, so a seed gives the same
sequence of asks whatever order results arrive in (Ray) and whether or not the run was resumed.

Repeats are free: a proposal of an architecture the run has already evaluated (or that an earlier
proposal of the same batch will evaluate) is stored as a repeat of that trial, gets its result
without training or timing anything, and is told to the strategy like any other trial. The trial
budget counts evaluations, not repeats; a strategy that proposes nothing new for REPEAT_PATIENCE
asks in a row has exhausted what it can find, and the search stops ("repeats").

The space is MnasNet's (`config.space`) unless `start_search` is handed another one: anything with
the strategies' `decision_sizes` / `decode` / `encode` whose architectures have an `id` and
`to_json()`, read back through the space's `arch_from_json` (`mnas.search.trial`), e.g. the
NAS-Bench-201 table's cells (`mnas.search.nb201`) with its table accuracy and latency models.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnas import __version__, zoo
from mnas.architecture import Architecture
from mnas.data import DatasetSplits
from mnas.errors import UserError
from mnas.latency.model import LatencyModel, MeasuredLatency, target_ms
from mnas.latency.tables.predict import LatencyTable
from mnas.reward import Reward, pareto_front
from mnas.search import evaluation as ev
from mnas.search.accuracy import AccuracyModel, RungResult, accuracy_model
from mnas.search.config import LatencyConfig, SearchConfig, parse_config
from mnas.search.hooks import Hooks
from mnas.search.local import Executor, LocalExecutor
from mnas.search.progress import SearchProgress
from mnas.search.rungs import RungScheduler
from mnas.search.store import DB_NAME, RungRecord, Store, dump_state, load_state, refuse_existing_run
from mnas.search.trial import Trial, arch_reader
from mnas.space import SearchSpace
from mnas.strategies import make_strategy
from mnas.train.proxy import state_at, states_of

#: Asks in a row without a new architecture after which a search stops (see the module doc).
REPEAT_PATIENCE = 20
#: What a strategy's told reward loses per rung a candidate stopped short of the top: results of
#: different rungs are never ranked as equals (a reward is at most ~1.1), as Optuna's TPE ranks a
#: pruned trial below every complete one.
RUNG_GAP = 10.0
#: A search whose first FAIL_FAST finished candidates (or all of its budget, when smaller; repeats
#: and references aside) all failed with the same error stops there with that error (exit code 2):
#: the same failure for different networks is a problem of the config or the machine, and every
#: further trial would fail the same way. One success among them, or two different errors, and the
#: search goes on. Checked after each told batch, so a resume finds the same store and stops again.
FAIL_FAST = 4
#: Where candidates' states between rungs live, inside the run folder.
STATES_DIR = "rung_states"


@dataclass
class SearchOutcome:
    """What a finished (or stopped) search hands back to the CLI."""

    run_dir: Path
    counts: dict[str, int]
    best: Trial | None
    stopped: str  # "budget" | "time" | "repeats"
    elapsed_s: float
    repeats: int = 0  # proposals answered from earlier trials (included in counts)


def make_reward(config: SearchConfig) -> Reward:
    return config.reward.to_reward()


def make_search_strategy(config: SearchConfig, space: Any) -> Any:
    return make_strategy(config.strategy.name, space, config.seed, config.strategy.knobs)


@dataclass(frozen=True)
class SearchParts:
    """What one search is made of, built once by `prepare` and handed to `SearchRun`: the config
    with what it left implicit resolved, the space (a `SearchSpace`, or the one handed to
    `prepare`), the strategy (fresh: a resume loads its state), the reward, one latency model per
    target (the first: the reward's) and the accuracy model. `stand_ins`: `latency` / `accuracy`
    were given in place of the config's (a test's or a benchmark's models); executors then run them
    in this process."""

    config: SearchConfig
    space: Any
    strategy: Any
    reward: Reward
    latency: list[LatencyModel]
    accuracy: AccuracyModel
    stand_ins: bool = False


def prepare(config: SearchConfig, *, latency: Sequence[LatencyModel] | None = None,
            accuracy: AccuracyModel | None = None, space: Any = None) -> SearchParts:
    """Build every part a trial needs before the first one runs, and pin what was left implicit.

    Loads the space, the dataset, the lookup tables or the supernet, builds the strategy, the
    latency models, the reward and the accuracy model, so a wrong name or a missing file stops the
    run with one line instead of failing every trial. The returned config has every latency
    target's resolution and class count resolved (from the dataset, or from its table) and the
    reward's T in ms (resolved once from "F x reference"), which is what the store records and a
    resume reuses. `latency` and `accuracy` replace the models the config names (a test's or a
    benchmark's stand-ins), `space` the config's space; no dataset is loaded for an accuracy model
    that needs none (a table).
    """
    space = space if space is not None else SearchSpace.load(config.space)
    strategy = make_search_strategy(config, space)
    data = ev.dataset(config) if accuracy is None or accuracy.needs_data else None
    config = config.model_copy(update={"latency": [_resolve_target(t, data) for t in config.latency]})
    models = list(latency) if latency is not None else ev.latency_models(config)  # validates backends, tables
    check_tables(config, models, space)
    if config.reward.target_ms is None:
        assert config.reward.target is not None
        t_ms = target_ms(config.reward.target, models[0])
        config = config.model_copy(update={"reward": config.reward.model_copy(update={"target_ms": t_ms})})
    config = config.model_copy(update={"latency": [pin_scale(t, m) for t, m in zip(config.latency, models, strict=True)]})
    reward = make_reward(config)
    model = accuracy or accuracy_model(config)
    model.check(data, space)
    return SearchParts(config, space, strategy, reward, models, model,
                       stand_ins=latency is not None or accuracy is not None)


def check_tables(config: SearchConfig, models: Sequence[LatencyModel], space: Any) -> None:
    """Every lookup table among the latency models covers every layer the space can produce."""
    for t, model in zip(config.latency, models, strict=True):
        table = getattr(model, "table", None)
        if table is not None:
            covered, total = table.coverage(space)
            if covered < total:
                raise UserError(f"latency table {t.lut} holds {covered} of the {total} layers space {space.name!r} can "
                                f"produce at {table.target.resolution} px; build it for this space with `mnas latency "
                                f"build-lut --space {config.space}`")


def pin_scale(t: LatencyConfig, model: LatencyModel) -> LatencyConfig:
    """`t` with the reference latency its measurements are scaled with, pinned once (T was
    resolved with the same figure): the store keeps it, so every worker and a resume use one
    scale even if the reference is measured again meanwhile. Not for a table (its own
    reference), a target on a Ray host (measured there) or a stand-in model."""
    if t.reference_ms is not None or t.host is not None or not isinstance(model, MeasuredLatency):
        return t
    return t.model_copy(update={"reference_ms": model.scale_ms()})


def _resolve_target(t: LatencyConfig, data: DatasetSplits | None) -> LatencyConfig:
    """A target with resolution and classes filled in: a table's own target for what the config
    leaves out (what it states must match the table), else the dataset's (left out without one)."""
    updates: dict[str, Any] = {}
    if t.lut:
        if not Path(t.lut).is_file():
            raise UserError(f"latency.lut: no such lookup table {t.lut}")
        own = LatencyTable.load(t.lut).target
        for key in ("backend", "threads", "resolution", "batch", "num_classes", "precision", "device"):
            if key not in t.model_fields_set:
                updates[key] = getattr(own, key)
    if t.resolution is None and "resolution" not in updates and data is not None:
        updates["resolution"] = int(data.resolution)
    if t.num_classes is None and "num_classes" not in updates and data is not None:
        updates["num_classes"] = int(data.num_classes)
    return t.model_copy(update=updates)


def reference_trials(config: SearchConfig, space: Any, model: AccuracyModel) -> list[Trial]:
    """The run's reference networks (`references`), at the middle of the space's width range; the
    first once per seed (their spread is the noise floor). None where the accuracy model scores
    only the space's own architectures (a supernet)."""
    if not model.scores_any_architecture:
        return []
    width = statistics.median(space.filter_multipliers)
    out = []
    for i, name in enumerate(config.references.models):
        arch: Architecture = zoo.get(name, width_mult=width)
        label = f"{name} x{width:g}"
        for k in range(config.references.seeds if i == 0 else 1):
            out.append(Trial(trial_id=-1, arch=arch, strategy="reference", reference=label,
                             seed=config.seed + k))
    return out


def make_executor(config: SearchConfig) -> Executor:
    if config.executor.name == "ray":
        from mnas.search.ray_executor import RayExecutor  # lazy: Ray is an optional extra

        return RayExecutor(config)
    return LocalExecutor()


def start_search(config: SearchConfig, run_dir: str | Path, *, executor: Executor | None = None,
                 show_progress: bool = True, config_path: str | None = None,
                 latency: Sequence[LatencyModel] | None = None, accuracy: AccuracyModel | None = None,
                 space: Any = None) -> SearchOutcome:
    """A new run in `run_dir` (which must not hold one). `latency` / `accuracy`: stand-in models
    instead of the config's (they run in this process); `space`: another space than the config's."""
    refuse_existing_run(run_dir)  # before any slow preparation
    parts = prepare(config, latency=latency, accuracy=accuracy, space=space)
    own_executor = executor is None
    executor = executor or make_executor(parts.config)  # before the store: a bad cluster leaves no run
    try:
        store = Store.create(run_dir, parts.config.model_dump(mode="json"), mnas_version=__version__,
                             config_path=config_path, elapsed_s=0.0)
        try:
            return SearchRun(store, parts, executor, show_progress).run()
        finally:
            store.close()
    finally:
        if own_executor:
            executor.close()


def resume_search(run_dir: str | Path, *, executor: Executor | None = None,
                  executor_name: str | None = None, ray_address: str | None = None,
                  show_progress: bool = True, latency: Sequence[LatencyModel] | None = None,
                  accuracy: AccuracyModel | None = None, space: Any = None) -> SearchOutcome:
    """Continue the run in `run_dir` from its store, with its stored config (and the models and
    space it was started with, where they were not the config's)."""
    store = Store.open(run_dir, writer=True)
    try:
        config = parse_config(store.config, source=f"{Path(run_dir) / DB_NAME} (stored config)")
        config = override_executor(config, executor_name, ray_address)
        # The stored config is the resolved one; `prepare` builds the parts (and would pin nothing new).
        parts = prepare(config, latency=latency, accuracy=accuracy, space=space)
        parts = replace(parts, config=config)
        own_executor = executor is None
        executor = executor or make_executor(config)
        try:
            return SearchRun(store, parts, executor, show_progress).run()
        finally:
            if own_executor:
                executor.close()
    finally:
        store.close()


def override_executor(config: SearchConfig, name: str | None, address: str | None) -> SearchConfig:
    """Apply --executor / --ray-address from the command line."""
    updates: dict[str, Any] = {}
    if name is not None:
        updates["name"] = name
    if address is not None:
        updates["ray_address"] = address
        updates.setdefault("name", "ray")
    if not updates:
        return config
    return config.model_copy(update={"executor": config.executor.model_copy(update=updates)})


class SearchRun:
    """One session of a search over its store: the parts built once, the loop in named steps."""

    def __init__(self, store: Store, parts: SearchParts, executor: Executor, show_progress: bool = True) -> None:
        config = parts.config
        self.store, self.config, self.executor, self.parts = store, config, executor, parts
        self.space, self.strategy, self.reward, self.model = parts.space, parts.strategy, parts.reward, parts.accuracy
        store.read_arch = arch_reader(self.space)
        checkpoint = store.checkpoint()
        if checkpoint is not None:
            self.strategy.load_state_dict(load_state(checkpoint.state))
        elif len(store):
            raise UserError(f"{store.path} has trials but no strategy state (a store salvaged by "
                            "`mnas store recover`?); `mnas report` and `mnas best` read it, but it cannot be "
                            "resumed: start a new search")
        self.top = len(self.model.rungs) - 1
        # Successive halving over the measured rungs; over the free (predicted) ones, a study of
        # their own among the candidates that got a prediction (see `schedule`).
        self.free = self.model.free_rungs
        self.scheduler = RungScheduler(self.model.rungs[self.free:], config.proxy.keep)
        self.screen = RungScheduler(self.model.rungs[:self.free + 1], config.proxy.keep) if self.free else None
        references = {t.trial_id for t in store.references()}
        rungs = store.rungs()
        everything = store.trials()
        for r in rungs:  # a resumed search decides on as the first session did
            if r.trial_id not in references:
                self.schedule(r.trial_id, r.rung, r.reward)
        if self.model.learns:  # what the search had told before this session (a predictor learns from it)
            untold = {t.trial_id for t in store.untold()}
            self.learn([t for t in everything if t.trial_id not in untold], rungs)

        self.session_start = time.time()
        self.elapsed_before = float(store.get_meta("elapsed_s", 0.0))
        finished = [t for t in everything if t.status in ("done", "failed") and not t.is_repeat]
        self.done = [t for t in finished if t.ok and self.at_top(t)]  # the front is recomputed per result
        self.best = max((t.reward for t in self.done if t.reward is not None), default=None)
        self.pareto_size = len(pareto_front(self.done))
        self.last_step = max((t.step for t in everything), default=-1)
        self.first_of = store.first_of()  # arch id -> the trial that evaluated it
        self.idle = _idle_steps(everything)
        if not store.get_meta("references_added", False):  # after every row was read: a store a reader
            store.add_references(reference_trials(config, self.space, self.model))  # refuses stays as it was
            store.set_meta("references_added", True)
        self.first_checked = False  # check_first_failures has seen its FAIL_FAST trials
        self.progress = SearchProgress(config.budget.trials, len(finished), enabled=show_progress)
        self.hooks = Hooks(self.on_start, self.on_phase, self.on_result, decide=self.decide,
                           start_rung=self.start_rung, state_path=self.state_path, accuracy=parts.accuracy,
                           latency=parts.latency, in_process=parts.stand_ins)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        stopped: str | None = "budget"
        try:
            with self.progress:
                while True:
                    batch = self.store.untold()
                    if not batch:
                        stopped = self.stop_reason()
                        if stopped:
                            break
                        batch = self.ask()
                    self.evaluate(batch)
                    self.tell(batch)
                    self.check_first_failures()
                self.evaluate([])  # references still unfinished (a search of zero new asks)
        finally:
            self.store.set_meta("elapsed_s", self.elapsed())
        best_trial = max((t for t in self.store.trials("done") if t.reward is not None and not t.is_repeat
                          and self.at_top(t)), key=lambda t: float(t.reward or 0.0), default=None)
        repeats = sum(t.is_repeat for t in self.store.trials())
        return SearchOutcome(self.store.run_dir, self.store.counts(), best_trial, stopped or "budget",
                             self.elapsed(), repeats)

    def stop_reason(self) -> str | None:
        """Why no further batch is asked: "budget", "time" or "repeats"; None: ask one."""
        if self.config.budget.trials - self.store.evaluations() <= 0:
            return "budget"
        limit = self.config.budget.max_seconds
        if limit is not None and self.elapsed() >= limit:
            return "time"
        if self.idle >= REPEAT_PATIENCE:
            return "repeats"
        return None

    def check_first_failures(self) -> None:
        """Stop the search (UserError) when its first candidates all failed for one reason (FAIL_FAST)."""
        if self.first_checked:
            return
        n = min(FAIL_FAST, self.config.budget.trials)
        first = [t for t in self.store.trials(("done", "failed")) if not t.is_repeat and not t.is_reference]
        first = sorted(first, key=lambda t: t.trial_id)[:n]
        if len(first) < n:
            return
        self.first_checked = True
        errors = {" ".join((t.error or "").split()) for t in first}
        if not any(t.ok for t in first) and len(errors) == 1:
            error = errors.pop()[:500] or "no error text"
            raise UserError(f"the first {n} trials all failed with the same error, so every trial would: {error} "
                            f"(fix the config and start a new search; the trials are in {self.store.run_dir})")

    def ask(self) -> list[Trial]:
        """The strategy's next batch, stored with its post-ask state (repeats marked)."""
        remaining = self.config.budget.trials - self.store.evaluations()
        self.last_step += 1
        batch = []
        for p in self.strategy.ask(min(self.config.budget.batch_size, remaining)):
            trial = Trial(trial_id=p.trial_id, arch=p.arch, strategy=self.strategy.name,
                          tokens=list(p.tokens), logp=p.logp, repeat_of=self.first_of.get(p.arch.id))
            self.first_of.setdefault(p.arch.id, p.trial_id)
            batch.append(trial)
        self.idle = 0 if any(not t.is_repeat for t in batch) else self.idle + 1
        self.store.add_trials(batch, dump_state(self.strategy.state_dict()), self.last_step)
        return batch

    def evaluate(self, batch: list[Trial]) -> None:
        """Run the batch's unfinished trials (and any unfinished reference) and fill in its repeats."""
        todo = self.store.unfinished_references() + [
            t for t in batch if t.status in ("pending", "running") and not t.is_repeat]
        if todo:
            self.executor.run(todo, self.config, self.hooks)
        for t in batch:
            if t.repeat_of is not None and t.status in ("pending", "running"):
                self.store.save_result(reuse_result(t, self.store.trial(t.repeat_of)))
                self.progress.note(f"trial {t.trial_id:>4} step {t.step:>3} repeats trial {t.repeat_of}: "
                                   "its result is reused")

    def tell(self, batch: list[Trial]) -> None:
        """Tell the whole batch at once, in trial-id order, ranked by fidelity; commit the state."""
        if not batch:
            return
        told = [self.store.trial(t.trial_id) for t in batch]
        unfinished = [t.trial_id for t in told if t.status not in ("done", "failed")]
        if unfinished:
            raise RuntimeError(f"executor returned without finishing trials {unfinished}")
        self.strategy.tell([self.ranked(t) for t in told])
        self.store.commit_tell([t.trial_id for t in told], dump_state(self.strategy.state_dict()), told[0].step)
        self.learn(told)

    def learn(self, told: Sequence[Trial], rungs: Sequence[RungRecord] | None = None) -> None:
        """Hand an accuracy model that learns (a predictor) the finished rungs of told candidates
        (`rungs`: the run's rungs, already read; else those of `told` are read)."""
        if not self.model.learns:
            return
        archs = {t.trial_id: t.arch for t in told if not t.is_repeat and not t.is_reference}
        if archs:
            records = rungs if rungs is not None else self.store.rungs(archs)
            self.model.observe([(archs[r.trial_id], r.rung, r.accuracy) for r in records if r.trial_id in archs])

    # -- fidelity ------------------------------------------------------------------------------
    def at_top(self, trial: Trial) -> bool:
        """Reached the accuracy model's top rung (a trial of an older store: its one rung)."""
        return trial.rung is None or trial.rung >= self.top

    def ranked(self, trial: Trial) -> Trial:
        """What the strategy is told: a trial stopped below the top rung ranks below every trial
        of a higher rung (reward and accuracy lowered by RUNG_GAP / 1 per missing rung)."""
        if not trial.ok or self.at_top(trial):
            return trial
        gap = self.top - int(trial.rung or 0)
        out = copy.copy(trial)
        out.reward = float(trial.reward or 0.0) - RUNG_GAP * gap
        out.accuracy = float(trial.accuracy or 0.0) - gap
        return out

    # -- the executor's hooks ------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.session_start

    def on_start(self, trial: Trial) -> None:
        trial.status = "running"
        trial.started_at = time.time()
        self.store.mark_running(trial.trial_id, trial.worker)

    def on_phase(self, trial: Trial, phase: str) -> None:
        self.progress.phase(trial, phase)

    def decide(self, trial: Trial, rung: int, result: RungResult) -> bool:
        """Store a finished rung with its promotion decision (references always go on to the top)."""
        assert result.accuracy is not None
        value = float(self.reward(result.accuracy, trial.latency_ms))
        if trial.is_reference:
            promoted = rung < self.top
        else:
            promoted = self.schedule(trial.trial_id, rung, value)
        self.store.add_rung(RungRecord(trial.trial_id, rung, result.budget, float(result.accuracy), value,
                                       result.seconds, promoted))
        self.drop_states(trial, keep=result.budget if promoted else None)
        if rung < self.top:
            verdict = "promoted" if promoted else "stopped"
            self.progress.note(f"{_who(trial)} rung {rung} ({result.budget} {self.model.unit}): accuracy "
                               f"{result.accuracy:.3f}, {verdict}")
        return promoted

    def schedule(self, trial_id: int, rung: int, reward: float) -> bool:
        """Successive halving's verdict on a candidate's finished rung: Optuna's pruner, over the
        measured rungs among every candidate, over the free rungs (a prediction) among those that
        got one. Two studies, because a candidate the model could not predict yet starts at the
        first measured rung, and one study cannot skip a rung (with no free rungs: one study)."""
        if rung < self.free:
            assert self.screen is not None
            return self.screen.decide(trial_id, rung, reward)
        return self.scheduler.decide(trial_id, rung - self.free, reward)

    def start_rung(self, trial: Trial) -> tuple[int, RungResult | None]:
        """Where a (resumed) trial starts: at the model's first rung for it (a reference: above the
        free ones), or after its last promoted rung, whose state must exist; or, when its last
        stored rung was final, that rung's result."""
        records = self.store.rungs(trial.trial_id)
        if not records:
            return (self.free if trial.is_reference else self.model.first_rung(trial.arch)), None
        last = records[-1]
        if not last.promoted:
            return last.rung, RungResult(last.accuracy, None, 0.0, last.budget, rung=last.rung)
        state = self.state_path(trial)
        if self.model.can_continue() and last.rung >= self.free and (
                state is None or not state_at(state, last.budget).is_file()):
            return self.free, None  # its state is gone: train it again from scratch
        return last.rung + 1, None

    def state_path(self, trial: Trial) -> Path | None:
        if not self.model.can_continue() or self.top == 0:
            return None
        return self.store.run_dir / STATES_DIR / f"trial{trial.trial_id}.pt"

    def drop_states(self, trial: Trial, keep: int | None = None) -> None:
        """Remove the trial's states between rungs once they are stored past, except the one after
        `keep` steps (the one its next rung continues from)."""
        state = self.state_path(trial)
        if state is None:
            return
        for path in states_of(state):
            if keep is None or path != state_at(state, keep):
                path.unlink(missing_ok=True)

    def on_result(self, trial: Trial) -> None:
        if trial.status == "done":
            try:
                trial.reward = float(self.reward(trial.accuracy, trial.latency_ms))
            except Exception as exc:  # e.g. a non-finite number slipped through
                trial.status, trial.error, trial.reward = "failed", f"reward: {exc}", None
        self.store.save_result(trial)
        self.store.set_meta("elapsed_s", self.elapsed())
        self.drop_states(trial)
        if trial.ok and trial.reward is not None and self.at_top(trial) and not trial.is_reference:
            self.done.append(trial)
            self.best = trial.reward if self.best is None else max(self.best, trial.reward)
            self.pareto_size = len(pareto_front(self.done))
        if trial.is_reference:
            acc = f"accuracy {trial.accuracy:.3f}" if trial.accuracy is not None else trial.error
            self.progress.note(f"reference {trial.reference} (seed {trial.seed}): {acc}")
        else:
            self.progress.finished(trial, self.best, self.pareto_size)


def _who(trial: Trial) -> str:
    return f"reference {trial.reference}" if trial.is_reference else f"trial {trial.trial_id:>4}"


def reuse_result(repeat: Trial, source: Trial) -> Trial:
    """`repeat` finished with `source`'s stored result, at no cost (nothing is trained or timed)."""
    if source.status not in ("done", "failed"):
        raise RuntimeError(f"trial {repeat.trial_id} repeats trial {source.trial_id}, which has not finished")
    for name in ("status", "accuracy", "latency_ms", "reward", "error", "latencies", "relative", "rung", "budget"):
        setattr(repeat, name, getattr(source, name))
    now = time.time()
    repeat.seconds, repeat.worker, repeat.started_at, repeat.finished_at = 0.0, None, now, now
    return repeat


def _idle_steps(trials: list[Trial]) -> int:
    """How many of the last steps proposed nothing new (only repeats), for REPEAT_PATIENCE."""
    steps: dict[int, bool] = {}
    for t in trials:
        steps[t.step] = steps.get(t.step, False) or not t.is_repeat
    idle = 0
    for step in sorted(steps, reverse=True):
        if steps[step]:
            break
        idle += 1
    return idle
