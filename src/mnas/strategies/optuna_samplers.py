"""Optuna's samplers as strategies: `tpe` (multivariate TPE with the constant liar) and `nsga2`
(NSGA-II on accuracy and latency), through Optuna's own ask/tell interface.

Each decision of the space is one categorical parameter `d0`, `d1`, ... of an Optuna study in
memory; `ask(n)` is `n` calls of `study.ask()`, `tell` is `study.tell(number, ...)`. The study's
trial numbers are the strategy's trial ids (both count asks from 0). Nothing of TPE or NSGA-II is
re-implemented here.

- `tpe` maximises the trial's reward. Asks of a batch are made before any of them is told, so
  the constant liar (Optuna's answer to parallel TPE) keeps one batch from piling onto one point.
- `nsga2` has two objectives taken from the trial itself: accuracy (maximised) and latency_ms
  (minimised); the reward plays no part. Its Pareto front is the store's, like any other run's.

Failed trials are told as `TrialState.FAIL`.

Exact resume. A sampler's random state is not part of Optuna's storage, so every `ask` call uses a
fresh sampler whose seed is derived from the strategy's seed and the number of trials asked so
far; everything else the samplers read (trials with their parameters, states and values, trial
and study system attributes such as NSGA-II's generations and parent cache) lives in the storage.
`state_dict()` is a plain-data copy of that storage, and `load_state_dict()` rebuilds an identical
in-memory study from it (`study.add_trial` in number order), so a restored strategy asks exactly
what the uninterrupted one would have.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from mnas.strategies.base import CategoricalSpace, Float, Int, Strategy, StrategyKnobs

if TYPE_CHECKING:
    import optuna


def _optuna() -> Any:
    # Lazy: optuna (with sqlalchemy) takes ~0.6 s to import, and most commands never build an
    # Optuna strategy; the CLI loads the strategy registry on every config validation.
    import optuna

    return optuna


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna logs each new study at INFO and warns that multivariate TPE and the constant liar
    are experimental; neither is news to a search that chose them. Restores Optuna's verbosity."""
    optuna = _optuna()
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(previous)


class OptunaStrategy(Strategy):
    """An Optuna study over the space's decisions; subclasses choose the sampler and the values."""

    directions: ClassVar[tuple[str, ...]] = ("maximize",)

    def __init__(self, space: CategoricalSpace, seed: int = 0, **knobs: Any) -> None:
        super().__init__(space, seed, **knobs)
        optuna = _optuna()
        self.distributions = {f"d{i}": optuna.distributions.CategoricalDistribution(list(range(k)))
                              for i, k in enumerate(self.sizes)}
        self.study = self._new_study()

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def values_of(self, trial: Any) -> list[float] | None:
        """The objective values of a finished trial, or None when it failed."""
        raise NotImplementedError

    def _new_study(self) -> optuna.study.Study:
        optuna = _optuna()
        self.storage = optuna.storages.InMemoryStorage()
        with _quiet():
            study = optuna.create_study(storage=self.storage, directions=list(self.directions),
                                        sampler=self.make_sampler(self._seed_for(0)))
        self.study_id = self.storage.get_study_id_from_name(study.study_name)
        return study

    def _seed_for(self, asked: int) -> int:
        """The sampler seed of the ask made after `asked` trials (a pure function of both)."""
        return random.Random(f"{self.seed}|{asked}").getrandbits(32)

    def _propose(self, n: int) -> list[tuple[list[int], float | None]]:
        out: list[tuple[list[int], float | None]] = []
        with _quiet():
            self.study.sampler = self.make_sampler(self._seed_for(self.asked))
            for k in range(n):
                trial = self.study.ask(self.distributions)
                if trial.number != self.asked + k:  # the study and the strategy count asks alike
                    raise RuntimeError(f"optuna trial number {trial.number} != trial id {self.asked + k}")
                out.append(([int(trial.params[name]) for name in self.distributions], None))
        return out

    def _observe(self, trial_id: int, tokens: list[int], trial: Any) -> None:
        optuna = _optuna()
        values = self.values_of(trial)
        with _quiet():
            if values is None:
                self.study.tell(trial_id, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial_id, values)

    def _state(self) -> dict[str, Any]:
        """The study's storage as plain data (what the samplers read; no timestamps)."""
        return {
            "study_system_attrs": dict(self.storage.get_study_system_attrs(self.study_id)),
            "trials": [
                {"number": t.number, "state": t.state.name, "params": {k: int(v) for k, v in t.params.items()},
                 "values": None if t.values is None else [float(v) for v in t.values],
                 "system_attrs": dict(t.system_attrs), "user_attrs": dict(t.user_attrs)}
                for t in self.study.get_trials(deepcopy=False)
            ],
        }

    def _load(self, state: dict[str, Any]) -> None:
        optuna = _optuna()
        study = self._new_study()
        for key, value in state["study_system_attrs"].items():
            self.storage.set_study_system_attr(self.study_id, key, value)
        for record in sorted(state["trials"], key=lambda r: r["number"]):
            frozen = optuna.trial.create_trial(
                state=optuna.trial.TrialState[record["state"]],
                values=record["values"],
                params=record["params"],
                distributions={k: self.distributions[k] for k in record["params"]},
                system_attrs=record["system_attrs"],
                user_attrs=record["user_attrs"],
            )
            with _quiet():
                study.add_trial(frozen)
        self.study = study


class TPEKnobs(StrategyKnobs):
    """Optuna TPESampler settings (multivariate and constant liar are always on)."""

    n_startup_trials: Int = Field(default=10, ge=0)
    n_ei_candidates: Int = Field(default=24, ge=1)


class TPEStrategy(OptunaStrategy):
    """Optuna's multivariate TPE with the constant liar, maximising the reward."""

    name = "tpe"
    Knobs = TPEKnobs
    knobs: TPEKnobs

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return _optuna().samplers.TPESampler(n_startup_trials=self.knobs.n_startup_trials,
                                             n_ei_candidates=self.knobs.n_ei_candidates,
                                             multivariate=True, constant_liar=True, seed=seed)

    def values_of(self, trial: Any) -> list[float] | None:
        reward = self.reward_of(trial)
        return None if reward is None else [reward]


class NSGA2Knobs(StrategyKnobs):
    """Optuna NSGAIISampler settings (mutation_prob None: 1 / number of decisions)."""

    population_size: Int = Field(default=50, ge=2)
    crossover_prob: Float = Field(default=0.9, ge=0, le=1)
    swapping_prob: Float = Field(default=0.5, ge=0, le=1)
    mutation_prob: Float | None = Field(default=None, ge=0, le=1)


class NSGA2Strategy(OptunaStrategy):
    """Optuna's NSGA-II with accuracy (maximised) and latency in ms (minimised) as objectives."""

    name = "nsga2"
    Knobs = NSGA2Knobs
    knobs: NSGA2Knobs
    directions = ("maximize", "minimize")

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        k = self.knobs
        return _optuna().samplers.NSGAIISampler(population_size=k.population_size, crossover_prob=k.crossover_prob,
                                                swapping_prob=k.swapping_prob, mutation_prob=k.mutation_prob,
                                                seed=seed)

    def values_of(self, trial: Any) -> list[float] | None:
        if trial.status != "done":
            return None
        values = [_finite(getattr(trial, key, None)) for key in ("accuracy", "latency_ms")]
        if any(v is None for v in values):
            raise ValueError(f"tell() got trial {trial.trial_id} 'done' without a finite accuracy and latency_ms; "
                             "nsga2 optimises those two (mark the trial 'failed' otherwise)")
        return [v for v in values if v is not None]


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
