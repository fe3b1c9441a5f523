"""The ask/tell contract every search strategy follows, and the minimal space it needs.

Shaped after Optuna's `study.ask()` / `study.tell(trial)`: `ask(n)` returns `Proposal`s, each
with a `trial_id` the strategy assigned (0, 1, 2, ... in ask order); `tell(trials)` takes finished
trials back by that id, in any order and any grouping, some failed. A trial is the caller's record
of a proposal: it carries the proposal's `trial_id`, `tokens` and `logp` (so whoever stores trials,
like mnas.search.store, keeps what a strategy needs to learn from them), plus `status` and the results.

`tell` checks every trial before it changes anything, and raises `ValueError` for a trial id the
strategy never asked, one told before (or twice in one call), tokens other than the proposal's, or
a trial without a finished `.status` ("done" or "failed"). Bad knobs, seeds and counts are a
`UserError` (they come from a config file).

`state_dict()` / `load_state_dict()` let the search checkpoint the strategy after every ask and
tell and continue exactly after a crash. A strategy works on *tokens* (one integer per categorical
decision) and only meets architectures through the space's `decode`, so it never imports the
trainer, the latency code or the store. Every random choice comes from a generator the strategy
owns (`random.Random`, `torch.Generator`, a seeded Optuna sampler), never global state, so a seed
fixes the whole ask sequence and a restored state continues it bit for bit.

Each strategy's knobs are a pydantic model (`Strategy.Knobs`, unknown keys forbidden), so a knob
error reads like every other config error: ``strategy.knobs.lr: Input should be greater than 0``.
"""

from __future__ import annotations

import math
import operator
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from mnas.errors import UserError

FINISHED = ("done", "failed")


@runtime_checkable
class CategoricalSpace(Protocol):
    """What a strategy needs from a search space: decisions and a token -> architecture map."""

    def decision_sizes(self) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> Any: ...

    def encode(self, arch: Any) -> list[int]: ...


@dataclass(frozen=True)
class Proposal:
    """One asked candidate. Tell its result back as a trial with this `trial_id`, `tokens`, `logp`."""

    trial_id: int
    arch: Any
    tokens: tuple[int, ...]
    logp: float | None = None  # the policy's log-probability of `tokens` (PPO); None otherwise


def arch_key(arch: Any) -> str:
    """A stable identity for an architecture: `.id` when it has one (mnas.space), else its repr."""
    ident = getattr(arch, "id", None)
    return str(ident) if ident is not None else repr(arch)


def as_int(value: Any, what: str, minimum: int | None = None) -> int:
    """An integer (Python or numpy; bools and fractions refused) >= minimum, or a UserError."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be an integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            out = int(value)
        else:
            raise UserError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise UserError(f"{what} must be >= {minimum}, got {value!r}")
    return out


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not true/false")
    return value


#: An integer knob that refuses true/false (pydantic's lax mode would read `true` as 1).
Int = Annotated[int, BeforeValidator(_no_bool)]
#: A float knob that refuses true/false.
Float = Annotated[float, BeforeValidator(_no_bool)]


class StrategyKnobs(BaseModel):
    """Base of each strategy's knobs: unknown keys forbidden, NaN/inf refused, defaults checked."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False)


K = TypeVar("K", bound=StrategyKnobs)


def parse_knobs(model: type[K], knobs: Mapping[str, Any] | StrategyKnobs | None) -> K:
    """Validate `knobs` against `model`; any problem is one UserError line per the config's style."""
    if isinstance(knobs, model):
        return knobs
    if isinstance(knobs, StrategyKnobs):
        knobs = knobs.model_dump()
    if knobs is not None and not isinstance(knobs, Mapping):
        raise UserError(f"strategy.knobs: must be a mapping of knob names to values, got {knobs!r}")
    try:
        return model.model_validate(dict(knobs or {}))
    except ValidationError as exc:
        raise UserError(knob_errors(model, exc)) from None


def knob_errors(model: type[StrategyKnobs], exc: ValidationError) -> str:
    """pydantic's errors as `strategy.knobs.<key>: <message>` parts joined by '; '."""
    parts = []
    for err in exc.errors():
        path = ".".join(["strategy", "knobs", *(str(p) for p in err["loc"])])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields) or "none"
            msg = f"unknown knob; allowed knobs: {allowed}"
        parts.append(f"{path}: {msg}")
    return "; ".join(parts)


class Strategy(ABC):
    """Base ask/tell strategy over a categorical space.

    Subclasses implement `_propose(n)` (token lists and their log-probabilities, or None) and
    `_observe(trial_id, tokens, trial)` (one checked, finished trial); `_after_tell()` runs once
    per `tell` call (PPO updates there). The base class numbers proposals, remembers which are
    out (and their tokens, to check what comes back), and which architectures were proposed, so
    strategies that must not repeat themselves can ask `is_new`.
    """

    name: ClassVar[str] = ""
    Knobs: ClassVar[type[StrategyKnobs]] = StrategyKnobs

    def __init__(self, space: CategoricalSpace, seed: int = 0, **knobs: Any) -> None:
        for method in ("decision_sizes", "decode", "encode"):
            if not callable(getattr(space, method, None)):
                raise UserError(f"search space {type(space).__name__} has no {method}(); "
                                "a strategy needs decision_sizes/decode/encode")
        sizes = [int(s) for s in space.decision_sizes()]
        if not sizes or any(s < 1 for s in sizes):
            raise UserError(f"search space must have >= 1 decision, each with >= 1 choice; got sizes {sizes}")
        self.space = space
        self.seed = as_int(seed, "seed")
        self.knobs: StrategyKnobs = parse_knobs(self.Knobs, knobs)
        self.sizes: list[int] = sizes
        self.asked = 0
        self.told = 0
        self._pending: dict[int, tuple[int, ...]] = {}
        self._proposed: set[str] = set()

    # -- public contract -------------------------------------------------------------------
    def ask(self, n: int) -> list[Proposal]:
        """Propose `n` candidates, numbered from `self.asked` on."""
        n = as_int(n, "ask(n)", 1)
        proposals = []
        for raw, logp in self._propose(n):
            tokens = self._fit(raw, "_propose")
            arch = self.space.decode(tokens)
            proposal = Proposal(self.asked, arch, tokens, None if logp is None else float(logp))
            self._pending[proposal.trial_id] = tokens
            self._proposed.add(arch_key(arch))
            self.asked += 1
            proposals.append(proposal)
        return proposals

    def tell(self, trials: Iterable[Any]) -> None:
        """Take finished trials by id (any order, any grouping); see the module doc for errors."""
        checked = []
        ids: set[int] = set()
        for trial in trials:
            trial_id = self._trial_id(trial)
            if trial_id in ids:
                raise ValueError(f"tell() got trial {trial_id} twice in one call")
            ids.add(trial_id)
            if trial_id not in self._pending:
                if 0 <= trial_id < self.asked:
                    raise ValueError(f"tell() got trial {trial_id}, which was already told; tell each trial once")
                raise ValueError(f"tell() got trial {trial_id}, which this strategy never asked "
                                 f"(it asked trials 0..{self.asked - 1}); tell only trials from ask()")
            status = getattr(trial, "status", None)
            if status is None:
                raise ValueError(f"tell() got trial {trial_id} without a .status; set it to 'done' or 'failed'")
            if status not in FINISHED:
                raise ValueError(f"tell() got trial {trial_id} with status {status!r}; tell only finished "
                                 "trials ('done' or 'failed')")
            tokens = self._pending[trial_id]
            told_tokens = getattr(trial, "tokens", None)
            if told_tokens is not None and len(told_tokens) and tuple(int(t) for t in told_tokens) != tokens:
                raise ValueError(f"tell() got trial {trial_id} with tokens {list(told_tokens)}, "
                                 f"but it was asked as {list(tokens)}")
            checked.append((trial_id, tokens, trial))
        for trial_id, tokens, trial in checked:
            self._observe(trial_id, list(tokens), trial)
            del self._pending[trial_id]
            self.told += 1
        self._after_tell()

    @property
    def pending(self) -> int:
        """How many asked candidates have not been told yet."""
        return len(self._pending)

    def pending_ids(self) -> list[int]:
        return sorted(self._pending)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: plain data and tensors (torch.save-able, and
        loadable with `weights_only=True`)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "sizes": list(self.sizes),
            "knobs": self.knobs.model_dump(),
            "asked": self.asked,
            "told": self.told,
            "pending": [(i, list(t)) for i, t in sorted(self._pending.items())],
            "proposed": sorted(self._proposed),
            "strategy": self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the next ask/tell continue as if never interrupted."""
        if state.get("name") != self.name:
            raise UserError(f"strategy checkpoint is for {state.get('name')!r}, not {self.name!r}; "
                            "use the same strategy to resume")
        if list(state.get("sizes", [])) != self.sizes:
            raise UserError("strategy checkpoint was made for a different search space (decision sizes differ); "
                            "resume with the same space")
        knobs = self.Knobs.model_validate(state["knobs"])
        if knobs != self.knobs:
            raise UserError(f"strategy checkpoint has knobs {knobs.model_dump()}, this strategy "
                            f"{self.knobs.model_dump()}; resume with the same knobs")
        self.seed = int(state["seed"])
        self.asked = int(state["asked"])
        self.told = int(state["told"])
        self._pending = {int(i): tuple(int(x) for x in t) for i, t in state["pending"]}
        self._proposed = {str(k) for k in state["proposed"]}
        self._load(state["strategy"])

    # -- helpers for subclasses ------------------------------------------------------------
    def random_tokens(self, rng: random.Random) -> list[int]:
        """One uniform sample over the space."""
        return [rng.randrange(k) for k in self.sizes]

    def is_new(self, tokens: Sequence[int], batch: set[str] | None = None) -> bool:
        """Whether `tokens` decode to an architecture never proposed (nor in `batch`, which it
        joins when new): strategies that must not repeat themselves filter with this."""
        key = arch_key(self.space.decode(tokens))
        if key in self._proposed or (batch is not None and key in batch):
            return False
        if batch is not None:
            batch.add(key)
        return True

    def new_random_tokens(self, rng: random.Random, batch: set[str], tries: int = 1000) -> list[int]:
        """A uniform sample whose architecture is new, in at most `tries` draws (then any sample:
        a space that small is nearly exhausted, and the search loop answers a repeat for free)."""
        tokens = self.random_tokens(rng)
        for _ in range(tries):
            if self.is_new(tokens, batch):
                return tokens
            tokens = self.random_tokens(rng)
        return tokens

    @staticmethod
    def reward_of(trial: Any) -> float | None:
        """A finished trial's reward, None when it failed; a 'done' trial needs a finite reward."""
        if trial.status != "done":
            return None
        reward = getattr(trial, "reward", None)
        value = math.nan if reward is None else float(reward)
        if not math.isfinite(value):
            raise ValueError(f"tell() got trial {trial.trial_id} 'done' with reward {reward!r}; a done "
                             "trial needs a finite reward (mark it 'failed' otherwise)")
        return value

    def _trial_id(self, trial: Any) -> int:
        value = getattr(trial, "trial_id", None)
        if value is None or isinstance(value, bool):
            raise ValueError(f"tell() got {type(trial).__name__} without a trial_id; tell the trials of ask()'s proposals")
        try:
            return operator.index(value)
        except TypeError:
            raise ValueError(f"tell() got trial_id {value!r}; it must be an integer") from None

    def _fit(self, tokens: Sequence[int], where: str) -> tuple[int, ...]:
        out = tuple(int(t) for t in tokens)
        if len(out) != len(self.sizes) or any(not 0 <= t < k for t, k in zip(out, self.sizes, strict=True)):
            raise ValueError(f"{where} gave tokens {list(out)} that do not fit decision sizes {self.sizes}")
        return out

    # -- subclass hooks --------------------------------------------------------------------
    @abstractmethod
    def _propose(self, n: int) -> list[tuple[list[int], float | None]]: ...

    @abstractmethod
    def _observe(self, trial_id: int, tokens: list[int], trial: Any) -> None: ...

    def _after_tell(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load(self, state: dict[str, Any]) -> None: ...
