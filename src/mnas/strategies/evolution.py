"""Regularized (aging) evolution: Real, Aggarwal, Huang, Le, "Regularized Evolution for Image
Classifier Architecture Search", AAAI 2019 (arXiv:1802.01548), Algorithm 1.

The population is a queue of the last `population` successful results: a new candidate is the
best of `sample_size` members drawn uniformly (a tournament), mutated in exactly one decision;
when a result arrives it joins the queue and the *oldest* member leaves, whatever its reward
(the "aging" that regularizes against lucky noisy evaluations). The first `population` asks are
uniform random (the paper's initial population); an ask made before `sample_size` results are
back is random too. Results may come back in any order (the queue is ordered by arrival, as in
the paper's asynchronous workers) and failed trials are dropped.

Defaults: the paper's large runs use P=100, S=25 over ~20k models; this project's searches
sample hundreds, so the defaults keep the same S/P ratio (1/4) at a smaller size (P=64, S=16),
so that selection starts after 64 rather than 100 random trials. Both are knobs.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from mnas.errors import UserError
from mnas.strategies.base import CategoricalSpace, Strategy, arch_key, check_int
from mnas.strategies.random import _as_tuple


class EvolutionStrategy(Strategy):
    """Aging evolution with tournament selection and single-decision mutation."""

    name = "evolution"

    def __init__(self, space: CategoricalSpace, seed: int = 0, population: int = 64, sample_size: int = 16) -> None:
        super().__init__(space, seed)
        self.population_size = check_int(population, "evolution population", 2)
        self.sample_size = check_int(sample_size, "evolution sample_size", 1)
        if self.sample_size > self.population_size:
            raise UserError(
                f"evolution sample_size ({self.sample_size}) must be <= population ({self.population_size})"
            )
        self.rng = random.Random(self.seed)
        self.population: deque[tuple[list[int], float]] = deque()
        self.random_asked = 0

    def _propose(self, n: int) -> list[tuple[list[int], dict[str, Any]]]:
        out = []
        for _ in range(n):
            if self.random_asked < self.population_size or len(self.population) < self.sample_size:
                self.random_asked += 1
                out.append((self.random_tokens(self.rng), {}))
            else:
                out.append((self.mutate(self._tournament()), {}))
        return out

    def _tournament(self) -> list[int]:
        """The best of `sample_size` distinct members drawn uniformly (ties: first drawn)."""
        picks = self.rng.sample(range(len(self.population)), self.sample_size)
        best = max(picks, key=lambda i: self.population[i][1])
        return list(self.population[best][0])

    def mutate(self, tokens: list[int]) -> list[int]:
        """Change exactly one decision to another value, preferring changes the architecture sees.

        A space's decode may map several token lists to one architecture (e.g. an identity skip
        that cannot apply to a stride-2 block), so single-token changes are tried in random order
        until one yields a different architecture, as in Real et al. where every mutation
        alters the model. If none does, the first tried change is returned.
        """
        changes = [(i, v) for i, k in enumerate(self.sizes) for v in range(k) if v != tokens[i]]
        if not changes:
            return list(tokens)
        self.rng.shuffle(changes)
        parent = arch_key(self.space.decode(tokens))
        for i, v in changes:
            child = list(tokens)
            child[i] = v
            if arch_key(self.space.decode(child)) != parent:
                return child
        child = list(tokens)
        i, v = changes[0]
        child[i] = v
        return child

    def _observe(self, tokens: list[int], reward: float | None, extra: dict[str, Any]) -> None:
        if reward is None:
            return  # failed trials never enter the population
        self.population.append((list(tokens), reward))
        while len(self.population) > self.population_size:
            self.population.popleft()  # aging: the oldest dies, not the worst

    def _state(self) -> dict[str, Any]:
        return {
            "rng": self.rng.getstate(),
            "population": [(list(t), r) for t, r in self.population],
            "random_asked": self.random_asked,
            "population_size": self.population_size,
            "sample_size": self.sample_size,
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.rng.setstate(_as_tuple(state["rng"]))
        self.population = deque((list(t), float(r)) for t, r in state["population"])
        self.random_asked = int(state["random_asked"])
        self.population_size = int(state["population_size"])
        self.sample_size = int(state["sample_size"])
