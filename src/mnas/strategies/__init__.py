"""Search strategies behind one ask/tell interface: `ppo` (the paper's controller), `random`,
`evolution`, and Optuna's `tpe` and `nsga2`.

`make_strategy(name, space, seed, knobs)` builds one by name from a config file; an unknown name
or a bad knob is a UserError (``strategy.knobs.lr: Input should be greater than 0``).
`knobs_model(name)` is the pydantic model of a strategy's knobs, for config validation and docs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mnas.errors import UserError
from mnas.strategies.base import CategoricalSpace, Proposal, Strategy, StrategyKnobs, parse_knobs
from mnas.strategies.evolution import EvolutionStrategy
from mnas.strategies.optuna_samplers import NSGA2Strategy, TPEStrategy
from mnas.strategies.ppo import PPOStrategy
from mnas.strategies.random import RandomStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    PPOStrategy.name: PPOStrategy,
    RandomStrategy.name: RandomStrategy,
    EvolutionStrategy.name: EvolutionStrategy,
    TPEStrategy.name: TPEStrategy,
    NSGA2Strategy.name: NSGA2Strategy,
}


def knobs_model(name: str) -> type[StrategyKnobs]:
    """The pydantic model of the knobs strategy `name` accepts."""
    return _lookup(name).Knobs


def knobs_of(name: str) -> dict[str, Any]:
    """The knobs a strategy accepts, with their defaults (for configs and docs)."""
    return knobs_model(name)().model_dump()


def check_knobs(name: str, knobs: Mapping[str, Any] | None) -> StrategyKnobs:
    """Validate knobs for strategy `name` without building it (a UserError names the bad key)."""
    return parse_knobs(knobs_model(name), knobs)


def make_strategy(name: str, space: CategoricalSpace, seed: int = 0,
                  knobs: Mapping[str, Any] | None = None) -> Strategy:
    """Build the strategy `name` over `space`; a bad name or knob is a UserError."""
    cls = _lookup(name)
    if knobs is not None and not isinstance(knobs, Mapping):
        raise UserError(f"strategy.knobs: must be a mapping of knob names to values, got {knobs!r}")
    return cls(space, seed, **dict(knobs or {}))


def _lookup(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[str(name).strip().lower()]
    except KeyError:
        raise UserError(f"strategy.name: unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}") from None


__all__ = [
    "STRATEGIES",
    "CategoricalSpace",
    "EvolutionStrategy",
    "NSGA2Strategy",
    "PPOStrategy",
    "Proposal",
    "RandomStrategy",
    "Strategy",
    "StrategyKnobs",
    "TPEStrategy",
    "check_knobs",
    "knobs_model",
    "knobs_of",
    "make_strategy",
]
