"""Uniform random search: the baseline every learned strategy must beat at equal budget.

Random search is a strong NAS baseline (Li & Talwalkar 2019, "Random Search and Reproducibility
for NAS"; Yu et al. 2020), so the benchmark measures every other strategy against it. It samples
with replacement, as the baseline is usually defined; a repeated architecture costs nothing,
because the search loop answers it from the store instead of evaluating it again.
"""

from __future__ import annotations

import random
from typing import Any

from mnas.strategies.base import CategoricalSpace, Strategy, StrategyKnobs


def as_tuple(value: Any) -> Any:
    """random.Random state survives JSON/YAML round trips as nested lists; setstate wants tuples."""
    if isinstance(value, list):
        return tuple(as_tuple(v) for v in value)
    return value


class RandomKnobs(StrategyKnobs):
    """Random search has no knobs."""


class RandomStrategy(Strategy):
    """Every decision drawn uniformly and independently; results are ignored."""

    name = "random"
    Knobs = RandomKnobs

    def __init__(self, space: CategoricalSpace, seed: int = 0, **knobs: Any) -> None:
        super().__init__(space, seed, **knobs)
        self.rng = random.Random(self.seed)

    def _propose(self, n: int) -> list[tuple[list[int], float | None]]:
        return [(self.random_tokens(self.rng), None) for _ in range(n)]

    def _observe(self, trial_id: int, tokens: list[int], trial: Any) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def _load(self, state: dict[str, Any]) -> None:
        self.rng.setstate(as_tuple(state["rng"]))
