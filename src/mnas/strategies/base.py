"""The ask/tell contract every search strategy follows, and the minimal space it needs.

Shaped after Ray Tune's Searcher and Optuna's samplers: `ask(n)` proposes candidates, `tell`
accepts results in any order (some failed), and `state_dict()` / `load_state_dict()` let the
search checkpoint the strategy after every `tell` and continue exactly after a crash. A strategy
works on *tokens* (one integer per categorical decision) and only meets architectures through the
space's `decode` / `encode`, so it never imports the trainer, the latency code or the store.

Every random choice comes from a generator the strategy owns (`random.Random` or
`torch.Generator`), never global state, so a seed fixes the whole ask sequence and a restored
state continues it bit for bit.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from mnas.errors import UserError


@runtime_checkable
class CategoricalSpace(Protocol):
    """What a strategy needs from a search space: decisions and a token <-> architecture map."""

    def decision_sizes(self) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> Any: ...

    def encode(self, arch: Any) -> list[int]: ...


def arch_key(arch: Any) -> str:
    """A stable identity for an architecture: `.id` when it has one (mnas.space), else its repr."""
    ident = getattr(arch, "id", None)
    return str(ident) if ident is not None else repr(arch)


def trial_reward(trial: Any) -> float | None:
    """The trial's reward, or None when it failed (status, missing or non-finite reward)."""
    status = getattr(trial, "status", None)
    if status in ("pending", "running"):
        raise ValueError(f"tell() got trial {getattr(trial, 'trial_id', '?')} still {status}; tell only finished trials")
    reward = getattr(trial, "reward", None)
    if status != "done" or reward is None:
        return None
    reward = float(reward)
    return reward if math.isfinite(reward) else None


def check_int(value: Any, what: str, minimum: int) -> int:
    """A knob that must be an integer >= minimum (bools rejected), or a UserError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise UserError(f"{what} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise UserError(f"{what} must be >= {minimum}, got {value!r}")
    return int(value)


def check_float(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    """A knob that must be a finite number in [low, high], or a UserError naming it."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out) or (low is not None and out < low) or (high is not None and out > high):
        raise UserError(f"{what} must be a finite number in [{low}, {high}], got {value!r}")
    return out


class Strategy(ABC):
    """Base ask/tell strategy over a categorical space.

    Subclasses implement `_propose(n)` (token lists plus per-candidate extras they want back on
    `tell`, e.g. PPO's log-probabilities) and `_observe(tokens, reward, extra)` (reward None means
    the trial failed); `_after_tell()` runs once per `tell` call (PPO updates there). The base
    class remembers every asked, not yet told candidate, keyed by architecture identity, so
    results may arrive in any order and in any grouping.
    """

    name: ClassVar[str] = ""

    def __init__(self, space: CategoricalSpace, seed: int = 0) -> None:
        for method in ("decision_sizes", "decode", "encode"):
            if not callable(getattr(space, method, None)):
                raise UserError(f"search space {type(space).__name__} has no {method}(); a strategy needs decision_sizes/decode/encode")
        sizes = [int(s) for s in space.decision_sizes()]
        if not sizes or any(s < 1 for s in sizes):
            raise UserError(f"search space must have >= 1 decision, each with >= 1 choice; got sizes {sizes}")
        self.space = space
        self.seed = check_int(seed, "seed", -(2**63))
        self.sizes: list[int] = sizes
        self.asked = 0
        self.told = 0
        self._pending: dict[str, list[dict[str, Any]]] = {}

    # -- public contract -------------------------------------------------------------------
    def ask(self, n: int) -> list[Any]:
        """Propose `n` architectures (decoded by the space)."""
        n = check_int(n, "ask(n)", 1)
        proposals = self._propose(n)
        archs = []
        for tokens, extra in proposals:
            tokens = [int(t) for t in tokens]
            arch = self.space.decode(tokens)
            self._pending.setdefault(arch_key(arch), []).append({"tokens": tokens, **extra})
            archs.append(arch)
        self.asked += len(archs)
        return archs

    def tell(self, trials: Iterable[Any]) -> None:
        """Take finished trials (any order, any grouping; failed ones have reward None)."""
        for trial in trials:
            reward = trial_reward(trial)
            record = self._claim(trial)
            tokens = record.pop("tokens")
            self._observe(tokens, reward, record)
            self.told += 1
        self._after_tell()

    @property
    def pending(self) -> int:
        """How many asked candidates have not been told yet."""
        return sum(len(v) for v in self._pending.values())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: picklable and torch.save-able."""
        return {
            "name": self.name,
            "seed": self.seed,
            "sizes": list(self.sizes),
            "asked": self.asked,
            "told": self.told,
            "pending": {k: [dict(r, tokens=list(r["tokens"])) for r in v] for k, v in self._pending.items()},
            "strategy": self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the next ask/tell continue as if never interrupted."""
        if state.get("name") != self.name:
            raise UserError(f"strategy checkpoint is for {state.get('name')!r}, not {self.name!r}; use the same strategy to resume")
        if list(state.get("sizes", [])) != self.sizes:
            raise UserError("strategy checkpoint was made for a different search space (decision sizes differ); resume with the same space")
        self.seed = int(state["seed"])
        self.asked = int(state["asked"])
        self.told = int(state["told"])
        self._pending = {k: [dict(r, tokens=list(r["tokens"])) for r in v] for k, v in state["pending"].items()}
        self._load(state["strategy"])

    # -- helpers for subclasses ------------------------------------------------------------
    def random_tokens(self, rng: random.Random) -> list[int]:
        """One uniform sample over the space."""
        return [rng.randrange(k) for k in self.sizes]

    def _claim(self, trial: Any) -> dict[str, Any]:
        """The pending record of this trial's architecture (oldest first), else a fresh one."""
        arch = getattr(trial, "arch", None)
        key = arch_key(arch) if arch is not None else None
        if key is not None and self._pending.get(key):
            records = self._pending[key]
            record = records.pop(0)
            if not records:
                del self._pending[key]
            return record
        # Not asked by this strategy (or already told): still useful as data.
        tokens = list(getattr(trial, "tokens", None) or [])
        if not tokens:
            if arch is None:
                raise ValueError("tell() got a trial with neither an architecture nor tokens")
            tokens = [int(t) for t in self.space.encode(arch)]
        if len(tokens) != len(self.sizes) or any(not 0 <= t < k for t, k in zip(tokens, self.sizes)):
            raise ValueError(f"tell() got tokens {tokens} that do not fit decision sizes {self.sizes}")
        return {"tokens": tokens}

    # -- subclass hooks --------------------------------------------------------------------
    @abstractmethod
    def _propose(self, n: int) -> list[tuple[list[int], dict[str, Any]]]: ...

    @abstractmethod
    def _observe(self, tokens: list[int], reward: float | None, extra: dict[str, Any]) -> None: ...

    def _after_tell(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load(self, state: dict[str, Any]) -> None: ...
