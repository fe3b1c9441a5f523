"""Uniform random search: the baseline every learned strategy must beat at equal budget.

Random search is a strong NAS baseline (Li & Talwalkar 2019, "Random Search and Reproducibility
for NAS"; Yu et al. 2020), so the benchmark and the trend tests measure PPO and evolution
against it.
"""

from __future__ import annotations

import random
from typing import Any

from mnas.strategies.base import CategoricalSpace, Strategy


class RandomStrategy(Strategy):
    """Every decision drawn uniformly and independently; results are ignored."""

    name = "random"

    def __init__(self, space: CategoricalSpace, seed: int = 0) -> None:
        super().__init__(space, seed)
        self.rng = random.Random(self.seed)

    def _propose(self, n: int) -> list[tuple[list[int], dict[str, Any]]]:
        return [(self.random_tokens(self.rng), {}) for _ in range(n)]

    def _observe(self, tokens: list[int], reward: float | None, extra: dict[str, Any]) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def _load(self, state: dict[str, Any]) -> None:
        self.rng.setstate(_as_tuple(state["rng"]))


def _as_tuple(value: Any) -> Any:
    """random.Random state survives JSON/YAML round trips as nested lists; setstate wants tuples."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
