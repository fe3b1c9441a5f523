"""The search loop: ask -> evaluate -> reward -> store -> tell, resumable after any crash.

Each batch moves through the store in three durable steps: the asked trials are inserted together
with the strategy's post-ask state (one transaction); every result is saved the moment it
arrives; after the whole batch, `tell` and the post-tell state are committed together (one
transaction). So a killed search resumes exactly: the checkpoint always matches the trials, done
trials are kept, and trials left `pending`/`running` are evaluated again before the strategy is
told about the batch. A batch is told at once, in trial-id order, so a seed gives the same
sequence of asks whatever order results arrive in (Ray) and whether or not the run was resumed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnas import __version__
from mnas.config import SearchConfig, parse_config
from mnas.errors import UserError
from mnas.reward import Reward
from mnas.search.local import Executor, Hooks, LocalExecutor
from mnas.search.progress import SearchProgress
from mnas.store import DB_NAME, Store, dump_state, load_state
from mnas.trial import Trial


@dataclass
class SearchOutcome:
    """What a finished (or stopped) search hands back to the CLI."""

    run_dir: Path
    counts: dict[str, int]
    best: Trial | None
    stopped: str  # "budget" | "time"
    elapsed_s: float


def make_reward(config: SearchConfig) -> Reward:
    return config.reward.to_reward()


def make_search_strategy(config: SearchConfig, space: Any) -> Any:
    from mnas.strategies import make_strategy

    try:
        return make_strategy(config.strategy.name, space, seed=config.seed, **config.strategy.knobs)
    except UserError as exc:
        raise UserError(f"strategy: {exc}") from None


def prepare(config: SearchConfig) -> SearchConfig:
    """Check everything a trial needs before the first one runs, and pin what was left implicit.

    Loads the space, the dataset and the LUT, builds the strategy, the reward and the latency
    target, so a wrong name or a missing file stops the run with one line instead of failing
    every trial. Returns the config with the latency resolution and class count resolved from the
    dataset, which is what the store records.
    """
    from mnas.search import evaluation as ev
    from mnas.space import SearchSpace

    space = SearchSpace.load(config.space)
    make_search_strategy(config, space)
    make_reward(config)
    data = ev.dataset(config)
    latency = config.latency
    updates = {}
    if latency.resolution is None:
        updates["resolution"] = int(data.resolution)
    if latency.num_classes is None:
        updates["num_classes"] = int(data.num_classes)
    config = config.model_copy(update={"latency": latency.model_copy(update=updates)})
    if latency.lut:
        if not Path(latency.lut).is_file():
            raise UserError(f"latency.lut: no such lookup table {latency.lut}")
    ev.target(config)  # validates backend, threads, device
    return config


def make_executor(config: SearchConfig) -> Executor:
    if config.executor.name == "ray":
        from mnas.search.ray_executor import RayExecutor

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
    from mnas.reward import pareto_front
    from mnas.space import SearchSpace

    space = SearchSpace.load(config.space)
    strategy = make_search_strategy(config, space)
    checkpoint = store.checkpoint()
    if checkpoint is not None:
        strategy.load_state_dict(load_state(checkpoint.state))
    reward = make_reward(config)

    session_start = time.time()
    elapsed_before = float(store.get_meta("elapsed_s", 0.0))
    finished = store.trials(("done", "failed"))
    done = [t for t in finished if t.ok]  # kept in memory: the front is recomputed per result
    best = max((t.reward for t in done), default=None)
    pareto_size = len(pareto_front(done))
    last_step = max((t.step for t in store.trials()), default=-1)

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
        if trial.ok:
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
                    remaining = config.budget.trials - len(store)
                    if remaining <= 0:
                        break
                    limit = config.budget.max_seconds
                    if limit is not None and elapsed() >= limit:
                        stopped = "time"
                        break
                    last_step += 1
                    step = last_step
                    archs = strategy.ask(min(config.budget.batch_size, remaining))
                    batch = [Trial(trial_id=-1, arch=a, strategy=strategy.name, tokens=space.encode(a))
                             for a in archs]
                    store.add_trials(batch, dump_state(strategy.state_dict()), step)
                todo = [t for t in batch if t.status in ("pending", "running")]
                if todo:
                    executor.run(todo, config, hooks)
                told = [store.trial(t.trial_id) for t in batch]
                unfinished = [t.trial_id for t in told if t.status not in ("done", "failed")]
                if unfinished:
                    raise RuntimeError(f"executor returned without finishing trials {unfinished}")
                strategy.tell(told)
                store.commit_tell([t.trial_id for t in told], dump_state(strategy.state_dict()),
                                  told[0].step)
    finally:
        store.set_meta("elapsed_s", elapsed())
    best_trial = max(store.trials("done"), key=lambda t: t.reward, default=None)
    return SearchOutcome(store.run_dir, store.counts(), best_trial, stopped, elapsed())
