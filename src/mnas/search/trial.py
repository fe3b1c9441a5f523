"""The record of one evaluated candidate, shared by strategies, the store and reports.

A trial keeps raw accuracy and latency (never only the reward) so any reward can be recomputed.
It also keeps what its strategy needs back on `tell`: the id the strategy gave the proposal
(`trial_id`), the proposal's `tokens` and, for PPO, their log-probability (`logp`). A trial whose
architecture the run had already evaluated is a repeat (`repeat_of` = that trial's id): it carries
the same result and cost nothing.

The loop, the store and the strategies ask two things of an architecture, whatever the space: `id`
(its identity: repeats are found by it) and `to_json()` (its stored form). A search over a space
other than MnasNet's (`mnas.search.nb201`'s table of cells) reads its stored architectures back
with the space's own `arch_from_json` (`arch_reader`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mnas.architecture import Architecture

STATUSES = ("pending", "running", "done", "failed")


def arch_reader(space: object) -> Callable[[str], Any]:
    """How the architectures of a search over `space` are read back from their JSON: the space's
    `arch_from_json` where it has one (NB201's cells), else `Architecture.from_json` (the MnasNet
    spaces, and every reader that knows no space: reports, salvage)."""
    reader = getattr(space, "arch_from_json", None)
    return reader if callable(reader) else Architecture.from_json


@dataclass
class Trial:
    trial_id: int
    arch: Any  # an `Architecture` in the MnasNet spaces; another space's (see the module doc) elsewhere
    step: int = 0
    strategy: str = ""
    tokens: list[int] = field(default_factory=list)
    status: str = "pending"
    accuracy: float | None = None
    latency_ms: float | None = None
    reward: float | None = None
    seconds: float | None = None
    error: str | None = None
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    logp: float | None = None
    repeat_of: int | None = None
    latencies: dict[str, float] | None = None  # ms on every latency target, by name (latency_ms: the first)
    relative: float | None = None  # latency_ms / the reference network's, on the first target
    rung: int | None = None  # the highest rung of the accuracy model it finished (0-based); None: not scored
    budget: int | None = None  # what that rung cost, in the accuracy model's unit (proxy: training steps)
    reference: str | None = None  # a hand-designed reference network's name (not proposed by the strategy)
    seed: int | None = None  # the training seed when not the run's (a reference's second seed)

    @property
    def ok(self) -> bool:
        return self.status == "done" and self.reward is not None

    @property
    def is_repeat(self) -> bool:
        return self.repeat_of is not None

    @property
    def is_reference(self) -> bool:
        return self.reference is not None
