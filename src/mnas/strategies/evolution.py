"""Regularized (aging) evolution: Real, Aggarwal, Huang, Le, "Regularized Evolution for Image
Classifier Architecture Search", AAAI 2019 (arXiv:1802.01548), Algorithm 1.

The population is a queue of the last `population` successful results: a new candidate is the
best of `sample_size` members drawn uniformly (a tournament), mutated in exactly one decision;
when a result arrives it joins the queue and the *oldest* member leaves, whatever its reward
(the "aging" that regularizes against lucky noisy evaluations). The first `population` asks are
uniform random (the paper's initial population); an ask made before `sample_size` results are
back is random too. Results may come back in any order (the queue is ordered by arrival, as in
the paper's asynchronous workers) and failed trials are dropped.

It never proposes an architecture it proposed before: a mutation tries the parent's one-decision
changes in random order until one gives a new architecture; when all of them were seen, the child
is a fresh uniform sample that is new (Real et al. evaluate a repeated model again; here that
would only waste budget, since a repeat's result is already known).

Defaults: the paper's large runs use P=100, S=25 over ~20k models; this project's searches
sample hundreds, so the defaults keep the same S/P ratio (1/4) at a smaller size (P=64, S=16),
so that selection starts after 64 rather than 100 random trials. Both are knobs.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from pydantic import Field, model_validator

from mnas.strategies.base import CategoricalSpace, Int, Strategy, StrategyKnobs, arch_key
from mnas.strategies.random import as_tuple


class EvolutionKnobs(StrategyKnobs):
    """P (the queue of living results) and S (the tournament size, <= P)."""

    population: Int = Field(default=64, ge=2)
    sample_size: Int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _sample_fits(self) -> EvolutionKnobs:
        if self.sample_size > self.population:
            raise ValueError(f"sample_size ({self.sample_size}) must be <= population ({self.population})")
        return self


class EvolutionStrategy(Strategy):
    """Aging evolution with tournament selection and single-decision mutation, without repeats."""

    name = "evolution"
    Knobs = EvolutionKnobs
    knobs: EvolutionKnobs

    def __init__(self, space: CategoricalSpace, seed: int = 0, **knobs: Any) -> None:
        super().__init__(space, seed, **knobs)
        self.rng = random.Random(self.seed)
        self.population: deque[tuple[list[int], float]] = deque()
        self.random_asked = 0

    @property
    def population_size(self) -> int:
        return self.knobs.population

    @property
    def sample_size(self) -> int:
        return self.knobs.sample_size

    def _propose(self, n: int) -> list[tuple[list[int], float | None]]:
        out: list[tuple[list[int], float | None]] = []
        batch: set[str] = set()
        for _ in range(n):
            if self.random_asked < self.population_size or len(self.population) < self.sample_size:
                self.random_asked += 1
                out.append((self.new_random_tokens(self.rng, batch), None))
            else:
                out.append((self.mutate(self._tournament(), batch), None))
        return out

    def _tournament(self) -> list[int]:
        """The best of `sample_size` distinct members drawn uniformly (ties: first drawn)."""
        picks = self.rng.sample(range(len(self.population)), self.sample_size)
        best = max(picks, key=lambda i: self.population[i][1])
        return list(self.population[best][0])

    def mutate(self, tokens: list[int], batch: set[str] | None = None) -> list[int]:
        """A new architecture one decision away from `tokens`, else a new random one.

        The single-decision changes are tried in random order; a change the space's decode maps
        to an architecture already proposed (or to the parent itself: e.g. an identity skip that
        cannot apply to a stride-2 block) is skipped. When every change is taken, a fresh
        uniform sample that is new replaces the child.
        """
        batch = set() if batch is None else batch
        parent = arch_key(self.space.decode(tokens))
        changes = [(i, v) for i, k in enumerate(self.sizes) for v in range(k) if v != tokens[i]]
        self.rng.shuffle(changes)
        for i, v in changes:
            child = list(tokens)
            child[i] = v
            if arch_key(self.space.decode(child)) != parent and self.is_new(child, batch):
                return child
        return self.new_random_tokens(self.rng, batch)

    def _observe(self, trial_id: int, tokens: list[int], trial: Any) -> None:
        reward = self.reward_of(trial)
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
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.rng.setstate(as_tuple(state["rng"]))
        self.population = deque((list(t), float(r)) for t, r in state["population"])
        self.random_asked = int(state["random_asked"])
