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
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnas import __version__
from mnas.config import LatencyConfig, SearchConfig, parse_config
from mnas.data import DatasetSplits
from mnas.errors import UserError
from mnas.latency.lut import LatencyTable
from mnas.latency.model import target_ms
from mnas.reward import Reward, pareto_front
from mnas.search import evaluation as ev
from mnas.search.local import Executor, Hooks, LocalExecutor
from mnas.search.progress import SearchProgress
from mnas.space import SearchSpace
from mnas.store import DB_NAME, Store, dump_state, load_state
from mnas.strategies import make_strategy
from mnas.supernet import load_supernet, supernet_path
from mnas.supernet.fit import SupernetSettings, fit_supernet
from mnas.train import FitConfig
from mnas.train.engine import resolve_device
from mnas.trial import Trial

#: Asks in a row without a new architecture after which a search stops (see the module doc).
REPEAT_PATIENCE = 20


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


def prepare(config: SearchConfig) -> SearchConfig:
    """Check everything a trial needs before the first one runs, and pin what was left implicit.

    Loads the space, the dataset, the lookup tables or the supernet, builds the strategy, the
    latency models and the reward, so a wrong name or a missing file stops the run with one line
    instead of failing every trial. Returns the config with every latency target's resolution and
    class count resolved (from the dataset, or from its table) and the reward's T in ms (resolved
    once from "F x reference"), which is what the store records and a resume reuses.
    """
    space = SearchSpace.load(config.space)
    make_search_strategy(config, space)
    data = ev.dataset(config)
    config = config.model_copy(update={"latency": [_resolve_target(t, data) for t in config.latency]})
    models = ev.latency_models(config)  # validates backends, threads, devices and tables
    for t, model in zip(config.latency, models, strict=True):
        table = getattr(model, "table", None)
        if table is not None:
            covered, total = table.coverage(space)
            if covered < total:
                raise UserError(f"latency table {t.lut} holds {covered} of the {total} layers space {space.name!r} can "
                                f"produce at {table.target.resolution} px; build it for this space with `mnas latency "
                                f"build-lut --space {config.space}`")
    if config.reward.target_ms is None:
        assert config.reward.target is not None
        t_ms = target_ms(config.reward.target, models[0])
        config = config.model_copy(update={"reward": config.reward.model_copy(update={"target_ms": t_ms})})
    make_reward(config)
    _check_proxy(config, data)
    return config


def _resolve_target(t: LatencyConfig, data: DatasetSplits) -> LatencyConfig:
    """A target with resolution and classes filled in: a table's own target for what the config
    leaves out (what it states must match the table), else the dataset's."""
    updates: dict[str, Any] = {}
    if t.lut:
        if not Path(t.lut).is_file():
            raise UserError(f"latency.lut: no such lookup table {t.lut}")
        own = LatencyTable.load(t.lut).target
        for key in ("backend", "threads", "resolution", "batch", "num_classes", "precision", "device"):
            if key not in t.model_fields_set:
                updates[key] = getattr(own, key)
    if t.resolution is None and "resolution" not in updates:
        updates["resolution"] = int(data.resolution)
    if t.num_classes is None and "num_classes" not in updates:
        updates["num_classes"] = int(data.num_classes)
    return t.model_copy(update=updates)


def _check_proxy(config: SearchConfig, data: DatasetSplits) -> None:
    """What the accuracy source needs: a supernet of this space and data (trained now if asked),
    or enough training images for a proxy batch; a device and threads this machine has."""
    p = config.proxy
    if config.executor.name == "local":
        resolve_device(p.device)
        if p.threads is not None and p.threads > (os.cpu_count() or 1):
            raise UserError(f"proxy.threads {p.threads} is more than the {os.cpu_count()} cores here")
    if p.kind == "supernet":
        assert p.path is not None
        if not supernet_path(p.path).is_file() and p.train_if_missing:
            train_supernet_for(config, data)
        load_supernet(p.path, space=SearchSpace.load(config.space), resolution=data.resolution,
                      num_classes=data.num_classes)
    elif len(data.train) < p.batch_size:
        raise UserError(f"the training split has {len(data.train)} images, fewer than one proxy batch of "
                        f"{p.batch_size}; lower proxy.batch_size or raise data.train_subset")


def train_supernet_for(config: SearchConfig, data: DatasetSplits) -> None:
    """`proxy.train_if_missing`: the search's supernet, trained with the proxy's epochs and batch
    size on the search's data (the recipe that fits the resolution), before the first trial."""
    p = config.proxy
    assert p.path is not None
    fit_config = FitConfig(arch_name=f"supernet:{config.space}", data=config.data.dataset,
                           data_root=config.data.data_root, epochs=max(1, math.ceil(p.epochs)),
                           recipe="cifar" if data.resolution <= 64 else "mnasnet", batch_size=p.batch_size,
                           train_subset=config.data.train_subset, val_size=config.data.val_size, seed=config.seed,
                           device=p.device, extra={"rule": p.rule})
    settings = SupernetSettings(rule=p.rule, eval_bn_batches=p.bn_batches)  # scored as the search will score
    fit_supernet(SearchSpace.load(config.space), data, fit_config, p.path, settings=settings, progress=True,
                 resume=(Path(p.path) / "checkpoint.pt").is_file())


def make_executor(config: SearchConfig) -> Executor:
    if config.executor.name == "ray":
        from mnas.search.ray_executor import RayExecutor  # lazy: Ray is an optional extra

        return RayExecutor(config)
    return LocalExecutor()


def start_search(config: SearchConfig, run_dir: str | Path, *, executor: Executor | None = None,
                 show_progress: bool = True, config_path: str | None = None) -> SearchOutcome:
    """A new run in `run_dir` (which must not hold one)."""
    if (Path(run_dir) / DB_NAME).exists():  # before any slow preparation
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                        "or choose another --out")
    config = prepare(config)
    own_executor = executor is None
    executor = executor or make_executor(config)  # before the store: a bad cluster leaves no run
    try:
        store = Store.create(run_dir, config.model_dump(mode="json"), mnas_version=__version__,
                             config_path=config_path, elapsed_s=0.0)
        try:
            return _run(store, config, executor, show_progress)
        finally:
            store.close()
    finally:
        if own_executor:
            executor.close()


def resume_search(run_dir: str | Path, *, executor: Executor | None = None,
                  executor_name: str | None = None, ray_address: str | None = None,
                  show_progress: bool = True) -> SearchOutcome:
    """Continue the run in `run_dir` from its store, with its stored config."""
    store = Store.open(run_dir, writer=True)
    try:
        config = parse_config(store.config, source=f"{Path(run_dir) / DB_NAME} (stored config)")
        config = override_executor(config, executor_name, ray_address)
        prepare(config)
        own_executor = executor is None
        executor = executor or make_executor(config)
        try:
            return _run(store, config, executor, show_progress)
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


def _run(store: Store, config: SearchConfig, executor: Executor,
         show_progress: bool) -> SearchOutcome:
    space = SearchSpace.load(config.space)
    strategy = make_search_strategy(config, space)
    checkpoint = store.checkpoint()
    if checkpoint is not None:
        strategy.load_state_dict(load_state(checkpoint.state))
    elif len(store):
        raise UserError(f"{store.path} has trials but no strategy state (a store salvaged by "
                        "`mnas store recover`?); `mnas report` and `mnas best` read it, but it cannot be "
                        "resumed: start a new search")
    reward = make_reward(config)

    session_start = time.time()
    elapsed_before = float(store.get_meta("elapsed_s", 0.0))
    finished = [t for t in store.trials(("done", "failed")) if not t.is_repeat]
    done = [t for t in finished if t.ok]  # kept in memory: the front is recomputed per result
    best = max((t.reward for t in done if t.reward is not None), default=None)
    pareto_size = len(pareto_front(done))
    everything = store.trials()
    last_step = max((t.step for t in everything), default=-1)
    first_of = store.first_of()  # arch id -> the trial that evaluated it
    idle = _idle_steps(everything)

    def elapsed() -> float:
        return elapsed_before + time.time() - session_start

    progress = SearchProgress(config.budget.trials, len(finished), enabled=show_progress)

    def on_start(trial: Trial) -> None:
        trial.status = "running"
        trial.started_at = time.time()
        store.mark_running(trial.trial_id, trial.worker)

    def on_phase(trial: Trial, phase: str) -> None:
        progress.phase(trial, phase)

    def on_result(trial: Trial) -> None:
        nonlocal best, pareto_size
        if trial.status == "done":
            try:
                trial.reward = float(reward(trial.accuracy, trial.latency_ms))
            except Exception as exc:  # e.g. a non-finite number slipped through
                trial.status, trial.error, trial.reward = "failed", f"reward: {exc}", None
        store.save_result(trial)
        store.set_meta("elapsed_s", elapsed())
        if trial.ok and trial.reward is not None:
            done.append(trial)
            best = trial.reward if best is None else max(best, trial.reward)
            pareto_size = len(pareto_front(done))
        progress.finished(trial, best, pareto_size)

    hooks = Hooks(on_start, on_phase, on_result)
    stopped = "budget"
    try:
        with progress:
            while True:
                batch = store.untold()
                if not batch:
                    remaining = config.budget.trials - store.evaluations()
                    if remaining <= 0:
                        break
                    limit = config.budget.max_seconds
                    if limit is not None and elapsed() >= limit:
                        stopped = "time"
                        break
                    if idle >= REPEAT_PATIENCE:
                        stopped = "repeats"
                        break
                    last_step += 1
                    step = last_step
                    batch = []
                    for p in strategy.ask(min(config.budget.batch_size, remaining)):
                        trial = Trial(trial_id=p.trial_id, arch=p.arch, strategy=strategy.name,
                                      tokens=list(p.tokens), logp=p.logp, repeat_of=first_of.get(p.arch.id))
                        first_of.setdefault(p.arch.id, p.trial_id)
                        batch.append(trial)
                    idle = 0 if any(not t.is_repeat for t in batch) else idle + 1
                    store.add_trials(batch, dump_state(strategy.state_dict()), step)
                todo = [t for t in batch if t.status in ("pending", "running") and not t.is_repeat]
                if todo:
                    executor.run(todo, config, hooks)
                for t in batch:
                    if t.repeat_of is not None and t.status in ("pending", "running"):
                        store.save_result(reuse_result(t, store.trial(t.repeat_of)))
                        progress.note(f"trial {t.trial_id:>4} step {t.step:>3} repeats trial {t.repeat_of}: "
                                      "its result is reused")
                told = [store.trial(t.trial_id) for t in batch]
                unfinished = [t.trial_id for t in told if t.status not in ("done", "failed")]
                if unfinished:
                    raise RuntimeError(f"executor returned without finishing trials {unfinished}")
                strategy.tell(told)
                store.commit_tell([t.trial_id for t in told], dump_state(strategy.state_dict()),
                                  told[0].step)
    finally:
        store.set_meta("elapsed_s", elapsed())
    best_trial = max((t for t in store.trials("done") if t.reward is not None and not t.is_repeat),
                     key=lambda t: float(t.reward or 0.0), default=None)
    repeats = sum(t.is_repeat for t in store.trials())
    return SearchOutcome(store.run_dir, store.counts(), best_trial, stopped, elapsed(), repeats)


def reuse_result(repeat: Trial, source: Trial) -> Trial:
    """`repeat` finished with `source`'s stored result, at no cost (nothing is trained or timed)."""
    if source.status not in ("done", "failed"):
        raise RuntimeError(f"trial {repeat.trial_id} repeats trial {source.trial_id}, which has not finished")
    for name in ("status", "accuracy", "latency_ms", "reward", "error", "latencies", "relative"):
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
