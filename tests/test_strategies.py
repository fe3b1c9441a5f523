"""Search strategies: one ask/tell contract, tested over every registered strategy.

Exact behaviour is tested where it is defined (same seed -> same asks; a saved state continues
bit for bit, through a file and a fresh object; any tell order; failures); learning is tested by
its trend on a synthetic objective with a known optimum over the real MnasNet space.
"""

from __future__ import annotations

import pickle
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from mnas.errors import UserError
from mnas.space import SearchSpace
from mnas.strategies import STRATEGIES, EvolutionStrategy, PPOStrategy, Strategy, knobs_of, make_strategy
from mnas.strategies.base import arch_key
from mnas.trial import Trial

NAMES = sorted(STRATEGIES)
SPACE = SearchSpace.default()


class TinySpace:
    """A categorical space whose architectures are plain token tuples (decode is injective)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self._sizes = list(sizes)

    def decision_sizes(self) -> list[int]:
        return list(self._sizes)

    def decode(self, tokens: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(t) for t in tokens)

    def encode(self, arch: tuple[int, ...]) -> list[int]:
        return list(arch)


def _target(space, seed: int) -> list[int]:
    """A hidden optimum that the space can express (canonical tokens of a decoded sample)."""
    rng = random.Random(seed)
    return space.encode(space.decode([rng.randrange(k) for k in space.decision_sizes()]))


def _score(space, arch, target: list[int], noise: float = 0.0, salt: str = "") -> float:
    """Fraction of decisions equal to the target, plus deterministic per-(arch, salt) noise."""
    tokens = space.encode(arch)
    match = sum(a == b for a, b in zip(tokens, target)) / len(target)
    if noise:
        match += random.Random(f"{arch_key(arch)}|{salt}").gauss(0.0, noise)
    return match


def _trial(i: int, space, arch, reward: float | None) -> Trial:
    failed = reward is None
    return Trial(
        trial_id=i,
        arch=arch,
        tokens=space.encode(arch),
        status="failed" if failed else "done",
        accuracy=None if failed else reward,
        latency_ms=None if failed else 10.0,
        reward=reward,
        error="boom" if failed else None,
    )


def _drive(strategy: Strategy, space, target: list[int], rounds: int, batch: int, start: int = 0,
           fail_every: int = 0) -> list[str]:
    """Ask/tell `rounds` batches deterministically (shuffled tells, some failures); return ask ids."""
    asked: list[str] = []
    for r in range(start, start + rounds):
        archs = strategy.ask(batch)
        asked += [arch_key(a) for a in archs]
        trials = []
        for j, a in enumerate(archs):
            i = r * batch + j
            fail = fail_every and i % fail_every == 0
            trials.append(_trial(i, space, a, None if fail else _score(space, a, target, 0.05, str(i))))
        random.Random(r).shuffle(trials)
        strategy.tell(trials[: batch // 2])
        strategy.tell(trials[batch // 2:])
    return asked


@pytest.fixture(params=["tiny", "mnasnet"])
def space(request):
    return TinySpace([3, 2, 4, 2, 3]) if request.param == "tiny" else SPACE


def _knobs(name: str) -> dict:
    # Small PPO batches so that a few rounds already include several controller updates.
    return {"batch_size": 4, "epochs": 2} if name == "ppo" else {"population": 8, "sample_size": 3} if name == "evolution" else {}


# -- the contract ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_asks(name: str, space) -> None:
    target = _target(space, 0)
    runs = [_drive(make_strategy(name, space, seed=7, **_knobs(name)), space, target, 5, 6, fail_every=5)
            for _ in range(2)]
    assert runs[0] == runs[1]
    other = _drive(make_strategy(name, space, seed=8, **_knobs(name)), space, target, 5, 6, fail_every=5)
    assert other != runs[0]
    for a in make_strategy(name, space, seed=1).ask(5):
        assert space.encode(a) is not None  # decodable, in the space


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_continues_identically(name: str, space, tmp_path: Path) -> None:
    target = _target(space, 1)
    a = make_strategy(name, space, seed=3, **_knobs(name))
    _drive(a, space, target, 4, 6, fail_every=4)
    # Mid-batch: some asked candidates are still out when the state is saved.
    out = a.ask(5)
    a.tell([_trial(900, space, out[3], 0.5), _trial(901, space, out[0], None)])
    assert a.pending == 3
    saved = a.state_dict()
    path = tmp_path / "state.pt"
    torch.save(saved, path)
    blob = pickle.dumps(saved)

    def finish(s: Strategy) -> list[str]:
        s.tell([_trial(902 + k, space, out[k], _score(space, out[k], target)) for k in (4, 1, 2)])
        assert s.pending == 0
        return _drive(s, space, target, 4, 6, start=10, fail_every=3)

    expected = finish(a)  # continuing the original object first also proves `saved` is not aliased
    for state in (torch.load(path, weights_only=True), pickle.loads(blob), saved):
        b = make_strategy(name, space, seed=99, **_knobs(name))  # a fresh object, another seed
        b.load_state_dict(state)
        assert b.pending == 3
        assert finish(b) == expected


@pytest.mark.parametrize("name", NAMES)
def test_tell_any_order_with_failures(name: str) -> None:
    target = _target(SPACE, 2)
    s = make_strategy(name, SPACE, seed=0, **_knobs(name))
    archs = s.ask(12)
    assert s.pending == 12
    trials = [_trial(i, SPACE, a, None if i % 3 == 0 else _score(SPACE, a, target)) for i, a in enumerate(archs)]
    random.Random(5).shuffle(trials)
    s.tell(trials[:5])
    assert s.pending == 7
    s.tell([])
    s.tell(trials[5:])
    assert s.pending == 0 and s.told == 12
    # A result the strategy never asked for is still accepted as data.
    stranger = SPACE.sample(random.Random(11))
    s.tell([_trial(99, SPACE, stranger, 0.9)])
    assert s.pending == 0 and s.told == 13
    for a in s.ask(6):
        assert SPACE.contains(a)
    with pytest.raises(ValueError, match="still running"):
        s.tell([Trial(trial_id=100, arch=stranger, status="running")])


def test_decode_collisions_are_matched_by_architecture() -> None:
    """The search stores canonical tokens (encode(decode(t)) may differ from t); tell still matches."""
    s = make_strategy("ppo", SPACE, seed=0, batch_size=64)
    archs = s.ask(32)
    # PPO remembers each asked candidate's own tokens and log-prob; a told trial carries the
    # canonical tokens from encode(), which for most samples differ from the asked ones.
    asked_tokens = [r["tokens"] for recs in s._pending.values() for r in recs]
    assert any(SPACE.encode(SPACE.decode(t)) != t for t in asked_tokens)
    s.tell([_trial(i, SPACE, a, 0.5) for i, a in enumerate(archs)])
    assert s.pending == 0
    assert sorted(b[0] for b in s.buffer) == sorted(asked_tokens)
    assert all(b[1] is not None for b in s.buffer)  # every result found its behaviour log-prob


# -- strategy specifics ----------------------------------------------------------------------
def test_evolution_random_start_tournament_and_aging() -> None:
    space = TinySpace([3] * 6)
    target = [0] * 6
    s = EvolutionStrategy(space, seed=0, population=10, sample_size=4)
    first = s.ask(10)  # the initial population: all random
    assert s.random_asked == 10
    # Asks before `sample_size` results are back are random too.
    s.tell([_trial(i, space, a, _score(space, a, target)) for i, a in enumerate(first[:2])])
    s.ask(1)
    assert s.random_asked == 11
    s.tell([_trial(10 + i, space, a, None if i == 0 else _score(space, a, target)) for i, a in enumerate(first[2:])])
    assert len(s.population) == 9  # 2 + 8 results, of which 1 failed and was dropped
    assert [t for t, _ in s.population][:2] == [list(a) for a in first[:2]]
    members = {tuple(t) for t, _ in s.population}
    children = s.ask(20)
    assert s.random_asked == 11  # now every ask is a mutation of a tournament winner
    for c in children:
        assert any(sum(x != y for x, y in zip(c, m)) == 1 for m in members)  # one decision off a member
    # Aging: the queue keeps the newest `population` results, whatever their reward.
    s.tell([_trial(100 + i, space, c, 1.0 if i == 0 else 0.0) for i, c in enumerate(children)])
    assert len(s.population) == 10
    assert [tuple(t) for t, _ in s.population] == [tuple(c) for c in children[-10:]]


def test_evolution_mutation_changes_the_architecture() -> None:
    s = EvolutionStrategy(SPACE, seed=4)
    rng = random.Random(0)
    for _ in range(50):
        tokens = [rng.randrange(k) for k in SPACE.decision_sizes()]
        child = s.mutate(tokens)
        assert sum(a != b for a, b in zip(tokens, child)) == 1
        assert SPACE.decode(child) != SPACE.decode(tokens)


def test_ppo_failed_reward_knob_and_update_cadence() -> None:
    space = TinySpace([2, 3, 2])
    skip = PPOStrategy(space, seed=0, batch_size=4)
    penal = PPOStrategy(space, seed=0, batch_size=4, failed_reward=0.0)
    for s in (skip, penal):
        archs = s.ask(6)
        s.tell([_trial(i, space, a, None if i < 3 else 0.8) for i, a in enumerate(archs)])
    assert skip.updates == 0 and len(skip.buffer) == 3  # failures skipped, no full batch yet
    assert penal.updates == 1 and len(penal.buffer) == 2  # failures scored 0: one update of 4
    assert skip.baseline == penal.baseline == pytest.approx(0.8)  # only real results move it
    assert any(not torch.equal(p, q) for p, q in zip(skip.controller.parameters(), penal.controller.parameters()))


def test_ppo_controller_shape() -> None:
    s = PPOStrategy(SPACE, seed=0)
    c = s.controller
    assert c.hidden == 100 and c.cell.hidden_size == 100
    assert [h.out_features for h in c.heads] == SPACE.decision_sizes()
    assert [e.num_embeddings for e in c.embeddings] == SPACE.decision_sizes()
    assert all(float(p.detach().abs().max()) <= 0.1 for p in c.parameters())  # NASNet init range
    assert s.optimizer.defaults["lr"] == pytest.approx(3.5e-4)
    assert knobs_of("ppo")["clip"] == 0.2 and knobs_of("ppo")["baseline_decay"] == 0.95


# -- construction and errors ------------------------------------------------------------------
def test_make_strategy_errors() -> None:
    with pytest.raises(UserError, match="choose one of: ppo, random, evolution"):
        make_strategy("bayes", SPACE)
    with pytest.raises(UserError, match="unknown knob"):
        make_strategy("random", SPACE, population=3)
    with pytest.raises(UserError, match="it accepts: population, sample_size"):
        make_strategy("evolution", SPACE, popsize=3)
    for name, knobs in [
        ("evolution", {"population": 4, "sample_size": 5}),
        ("evolution", {"population": 1}),
        ("evolution", {"population": "many"}),
        ("ppo", {"lr": -1.0}),
        ("ppo", {"lr": float("nan")}),
        ("ppo", {"epochs": 0}),
        ("ppo", {"batch_size": 2.5}),
        ("ppo", {"clip": 0}),
    ]:
        with pytest.raises(UserError):
            make_strategy(name, SPACE, **knobs)
    with pytest.raises(UserError):
        make_strategy("random", TinySpace([]))
    with pytest.raises(UserError):
        make_strategy("random", SPACE).ask(0)
    assert make_strategy("EVOLUTION", SPACE, population=10, sample_size=2).population_size == 10


@pytest.mark.parametrize("name", NAMES)
def test_load_state_from_other_strategy_or_space_is_user_error(name: str) -> None:
    state = make_strategy(name, SPACE).state_dict()
    other = [n for n in NAMES if n != name][0]
    with pytest.raises(UserError, match="checkpoint"):
        make_strategy(other, SPACE).load_state_dict(state)
    with pytest.raises(UserError, match="different search space"):
        make_strategy(name, TinySpace([2, 2])).load_state_dict(state)


# -- the trend -------------------------------------------------------------------------------
BUDGET, BATCH, LAST = 400, 16, 64


def _search(name: str, seed: int, target: list[int]) -> list[float]:
    """Run a whole search at default knobs; rewards in the order the trials were asked."""
    s = make_strategy(name, SPACE, seed=seed)
    rewards: list[float] = []
    step = 0
    while len(rewards) < BUDGET:
        archs = s.ask(BATCH)
        trials = []
        for a in archs:
            i = len(rewards)
            # 5% failures, which must neither stop nor mislead a strategy.
            r = None if random.Random(f"fail{seed}|{i}").random() < 0.05 else _score(SPACE, a, target, 0.05, str(i))
            trials.append(_trial(i, SPACE, a, r))
            rewards.append(_score(SPACE, a, target))  # noise-free quality of what was asked
        random.Random(step).shuffle(trials)
        s.tell(trials)
        step += 1
    return rewards


@pytest.mark.parametrize("name", ["ppo", "evolution"])
def test_learners_beat_random_at_equal_budget(name: str) -> None:
    """Over 3 seeds, the mean quality of the last 64 of 400 asks beats random's clearly."""
    gains = []
    for seed in range(3):
        target = _target(SPACE, 100 + seed)
        base = statistics.mean(_search("random", seed, target)[-LAST:])
        rewards = _search(name, seed, target)
        late, early = statistics.mean(rewards[-LAST:]), statistics.mean(rewards[:LAST])
        # Margins measured over 6 seeds: ppo gains 0.10-0.22 over random, evolution 0.25-0.33.
        assert late > base + 0.05, (name, seed, late, base)
        assert late > early + 0.05, (name, seed, late, early)  # it improves over its own start
        gains.append(late - base)
    assert statistics.mean(gains) > 0.12
