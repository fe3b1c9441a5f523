"""Search strategies behind one ask/tell interface: `ppo` (the paper's), `random`, `evolution`.

`make_strategy(name, space, seed, **knobs)` builds one by name from a config file; unknown names
and knobs are a UserError that lists what is allowed.
"""

from __future__ import annotations

import inspect
from typing import Any

from mnas.errors import UserError
from mnas.strategies.base import CategoricalSpace, Strategy
from mnas.strategies.evolution import EvolutionStrategy
from mnas.strategies.ppo import PPOStrategy
from mnas.strategies.random import RandomStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    PPOStrategy.name: PPOStrategy,
    RandomStrategy.name: RandomStrategy,
    EvolutionStrategy.name: EvolutionStrategy,
}


def knobs_of(name: str) -> dict[str, Any]:
    """The knobs a strategy accepts, with their defaults (for configs and docs)."""
    cls = _lookup(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, space, seed
    return {p.name: p.default for p in params}


def make_strategy(name: str, space: CategoricalSpace, seed: int = 0, **knobs: Any) -> Strategy:
    """Build the strategy `name` over `space`; a bad name or knob is a UserError."""
    cls = _lookup(name)
    allowed = knobs_of(name)
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        hint = ", ".join(allowed) or "none"
        raise UserError(f"unknown knob(s) {', '.join(unknown)} for strategy {name!r}; it accepts: {hint}")
    return cls(space, seed=seed, **knobs)


def _lookup(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[str(name).strip().lower()]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}") from None


__all__ = [
    "STRATEGIES",
    "CategoricalSpace",
    "EvolutionStrategy",
    "PPOStrategy",
    "RandomStrategy",
    "Strategy",
    "knobs_of",
    "make_strategy",
]
