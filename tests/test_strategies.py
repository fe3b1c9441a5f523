"""Search strategies: one ask/tell contract, tested over every registered strategy.

Exact behaviour is tested where it is defined (same seed -> same asks; a saved state continues
bit for bit, through a torch file, pickle and the run store's blob; any tell order; failures; the
API's errors); learning is tested by its trend on a synthetic objective with a known optimum over
the real MnasNet space.
"""

from __future__ import annotations

import pickle
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mnas.errors import UserError
from mnas.search.store import dump_state, load_state
from mnas.search.trial import Trial
from mnas.space import SearchSpace
from mnas.strategies import (
    STRATEGIES,
    EvolutionStrategy,
    NSGA2Strategy,
    PPOStrategy,
    Proposal,
    Strategy,
    check_knobs,
    knobs_model,
    knobs_of,
    make_strategy,
)
from mnas.strategies.base import arch_key

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
    match = sum(a == b for a, b in zip(tokens, target, strict=True)) / len(target)
    if noise:
        match += random.Random(f"{arch_key(arch)}|{salt}").gauss(0.0, noise)
    return match


def _trial(p: Proposal, reward: float | None) -> Trial:
    """The record of proposal `p`, as the search loop stores it: id, tokens, logp and results."""
    failed = reward is None
    return Trial(trial_id=p.trial_id, arch=p.arch, tokens=list(p.tokens), logp=p.logp,
                 status="failed" if failed else "done", accuracy=None if failed else reward,
                 latency_ms=None if failed else 10.0 - 5.0 * reward, reward=reward,
                 error="boom" if failed else None)


def _drive(strategy: Strategy, space, target: list[int], rounds: int, batch: int, fail_every: int = 0) -> list[str]:
    """Ask/tell `rounds` batches deterministically (shuffled tells, some failures); return ask ids."""
    asked: list[str] = []
    for r in range(rounds):
        proposals = strategy.ask(batch)
        asked += [arch_key(p.arch) for p in proposals]
        trials = []
        for p in proposals:
            fail = fail_every and p.trial_id % fail_every == 0
            trials.append(_trial(p, None if fail else _score(space, p.arch, target, 0.05, str(p.trial_id))))
        random.Random(r).shuffle(trials)
        strategy.tell(trials[: batch // 2])
        strategy.tell(trials[batch // 2:])
    return asked


@pytest.fixture(params=["tiny", "mnasnet"])
def space(request):
    return TinySpace([3, 2, 4, 2, 3]) if request.param == "tiny" else SPACE


def _same(a, b) -> bool:
    """Deep equality of two state dicts (tensors compared by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _knobs(name: str) -> dict:
    # Small populations and PPO batches so that a few rounds already exercise selection and updates.
    return {"ppo": {"batch_size": 4, "epochs": 2, "top_k": 3}, "evolution": {"population": 8, "sample_size": 3},
            "tpe": {"n_startup_trials": 4}, "nsga2": {"population_size": 6}}.get(name, {})


# -- the contract ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_asks(name: str, space) -> None:
    target = _target(space, 0)
    runs = [_drive(make_strategy(name, space, 7, _knobs(name)), space, target, 5, 6, fail_every=5) for _ in range(2)]
    assert runs[0] == runs[1]
    other = _drive(make_strategy(name, space, 8, _knobs(name)), space, target, 5, 6, fail_every=5)
    assert other != runs[0]


@pytest.mark.parametrize("name", NAMES)
def test_ask_numbers_proposals_and_accepts_numpy_integers(name: str) -> None:
    s = make_strategy(name, SPACE, np.int64(3), {k: np.int64(v) if isinstance(v, int) else v for k, v in _knobs(name).items()})
    first = s.ask(np.int64(4))
    second = s.ask(np.int32(2))
    assert [p.trial_id for p in first + second] == [0, 1, 2, 3, 4, 5]
    assert s.pending == 6 and s.pending_ids() == [0, 1, 2, 3, 4, 5]
    for p in first + second:
        assert SPACE.contains(p.arch) and SPACE.decode(p.tokens) == p.arch
        assert (p.logp is not None) == (name == "ppo")
    assert s.seed == 3 and isinstance(s.seed, int)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_continues_identically(name: str, space, tmp_path: Path) -> None:
    target = _target(space, 1)
    a = make_strategy(name, space, 3, _knobs(name))
    _drive(a, space, target, 4, 6, fail_every=4)
    # Mid-batch: some asked candidates are still out when the state is saved.
    out = a.ask(5)
    a.tell([_trial(out[3], 0.5), _trial(out[0], None)])
    assert a.pending == 3
    saved = a.state_dict()
    path = tmp_path / "state.pt"
    torch.save(saved, path)
    blob = pickle.dumps(saved)
    stored = dump_state(saved)  # what the run store keeps, read back with weights_only=True

    def finish(s: Strategy) -> list[str]:
        s.tell([_trial(out[k], _score(space, out[k].arch, target)) for k in (4, 1, 2)])
        assert s.pending == 0
        return _drive(s, space, target, 4, 6, fail_every=3)

    expected = finish(a)  # continuing the original object first also proves `saved` is not aliased
    for state in (torch.load(path, weights_only=True), pickle.loads(blob), load_state(stored), saved):
        b = make_strategy(name, space, 99, _knobs(name))  # a fresh object, another seed
        b.load_state_dict(state)
        assert b.pending == 3 and b.asked == a.asked - 24
        assert finish(b) == expected


@pytest.mark.parametrize("name", NAMES)
def test_tell_any_order_with_failures(name: str) -> None:
    target = _target(SPACE, 2)
    s = make_strategy(name, SPACE, 0, _knobs(name))
    proposals = s.ask(12)
    trials = [_trial(p, None if p.trial_id % 3 == 0 else _score(SPACE, p.arch, target)) for p in proposals]
    random.Random(5).shuffle(trials)
    s.tell(trials[:5])
    assert s.pending == 7
    s.tell([])
    s.tell(trials[5:])
    assert s.pending == 0 and s.told == 12
    for p in s.ask(6):
        assert SPACE.contains(p.arch)


@pytest.mark.parametrize("name", NAMES)
def test_tell_errors_are_clear_and_change_nothing(name: str) -> None:
    s = make_strategy(name, SPACE, 0, _knobs(name))
    proposals = s.ask(4)
    good = _trial(proposals[0], 0.5)
    s.tell([good])
    before = s.state_dict()

    def bad(trials: list, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            s.tell(trials)
        assert _same(s.state_dict(), before)  # checked before anything changed

    fresh = _trial(proposals[1], 0.4)
    bad([fresh, good], "already told")
    bad([fresh, _trial(proposals[1], 0.3)], "twice in one call")
    bad([_trial(Proposal(17, proposals[1].arch, proposals[1].tokens, proposals[1].logp), 0.5)], "never asked")
    no_status = type("Result", (), {"trial_id": 2, "tokens": list(proposals[2].tokens), "reward": 0.5})()
    bad([no_status], "without a .status")
    running = _trial(proposals[2], 0.5)
    running.status = "running"
    bad([running], "status 'running'")
    other = _trial(proposals[2], 0.5)
    other.tokens = list(proposals[3].tokens)
    if other.tokens != list(proposals[2].tokens):
        bad([other], "asked as")
    bad([object()], "without a trial_id")
    if name != "random":  # random ignores results; the others need the numbers they learn from
        nan = _trial(proposals[2], 0.5)
        nan.reward = nan.accuracy = float("nan")
        bad([nan], "finite")
    s.tell([fresh])  # the good one is still accepted after all that
    assert s.pending == 2


def test_ppo_needs_the_proposals_log_probability() -> None:
    s = make_strategy("ppo", SPACE, 0)
    (p,) = s.ask(1)
    t = _trial(p, 0.5)
    t.logp = None
    with pytest.raises(ValueError, match="log-probability"):
        s.tell([t])


def test_nsga2_optimises_accuracy_and_latency_from_the_trial() -> None:
    s = NSGA2Strategy(SPACE, 0)
    assert s.study.directions[0].name == "MAXIMIZE" and s.study.directions[1].name == "MINIMIZE"
    p, q = s.ask(2)
    t = _trial(p, 0.6)
    t.reward = None  # the reward plays no part
    s.tell([t])
    assert s.study.trials[0].values == [0.6, 7.0]
    u = _trial(q, 0.6)
    u.latency_ms = None
    with pytest.raises(ValueError, match="accuracy and latency_ms"):
        s.tell([u])


# -- strategy specifics ----------------------------------------------------------------------
def test_evolution_random_start_tournament_and_aging() -> None:
    space = TinySpace([3] * 6)
    target = [0] * 6
    s = EvolutionStrategy(space, 0, population=10, sample_size=4)
    first = s.ask(10)  # the initial population: all random
    assert s.random_asked == 10
    # Asks before `sample_size` results are back are random too.
    s.tell([_trial(p, _score(space, p.arch, target)) for p in first[:2]])
    s.ask(1)
    assert s.random_asked == 11
    s.tell([_trial(p, None if i == 0 else _score(space, p.arch, target)) for i, p in enumerate(first[2:])])
    assert len(s.population) == 9  # 2 + 8 results, of which 1 failed and was dropped
    assert [t for t, _ in s.population][:2] == [list(p.tokens) for p in first[:2]]
    members = {tuple(t) for t, _ in s.population}
    children = s.ask(20)
    assert s.random_asked == 11  # now every ask is a mutation of a tournament winner...
    near = sum(any(sum(x != y for x, y in zip(c.tokens, m, strict=True)) == 1 for m in members) for c in children)
    assert near >= 15  # ...one decision off a member, unless all its neighbours were seen
    # Aging: the queue keeps the newest `population` results, whatever their reward.
    s.tell([_trial(c, 1.0 if i == 0 else 0.0) for i, c in enumerate(children)])
    assert len(s.population) == 10
    assert [tuple(t) for t, _ in s.population] == [c.tokens for c in children[-10:]]


@pytest.mark.parametrize("sizes", [[3, 3, 3, 3], [5] * 6])
def test_evolution_proposes_no_repeats(sizes: list[int]) -> None:
    """Until the space is nearly exhausted, every proposal is an architecture never proposed."""
    space = TinySpace(sizes)
    total = int(np.prod(sizes))
    budget = min(total - 1, 500)
    s = EvolutionStrategy(space, 1, population=8, sample_size=3)
    target = [0] * len(sizes)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < budget:
        proposals = s.ask(min(16, budget - len(seen)))
        for p in proposals:
            assert p.arch not in seen
            seen.add(p.arch)
        trials = [_trial(p, _score(space, p.arch, target, 0.05, str(p.trial_id))) for p in proposals]
        random.Random(len(seen)).shuffle(trials)
        s.tell(trials)


def test_evolution_mutation_changes_the_architecture() -> None:
    s = EvolutionStrategy(SPACE, 4)
    rng = random.Random(0)
    for _ in range(50):
        tokens = [rng.randrange(k) for k in SPACE.decision_sizes()]
        child = s.mutate(tokens)
        assert sum(a != b for a, b in zip(tokens, child, strict=True)) == 1
        assert SPACE.decode(child) != SPACE.decode(tokens)


def test_ppo_unique_proposes_no_repeats_and_scores_them() -> None:
    space = TinySpace([3, 3, 3])
    s = PPOStrategy(space, 0, unique=True, batch_size=4, lr=0.05)
    seen = set()
    for _ in range(6):  # 24 of the 27 architectures, while the policy learns to prefer one
        proposals = s.ask(4)
        assert all(p.arch not in seen for p in proposals)
        seen |= {p.arch for p in proposals}
        s.tell([_trial(p, 1.0 if p.arch == (0, 0, 0) else 0.0) for p in proposals])
    for p in proposals:
        with torch.no_grad():
            scored = s.controller(1, tokens=torch.tensor([p.tokens]))[1]
        assert float(scored) <= 0.0  # a log-probability under the policy
    assert s.updates == 6


def test_ppo_unique_widens_a_collapsed_policy_around_its_choice() -> None:
    """Once the policy only draws what was seen, new proposals come from it at a rising
    temperature: neighbours of what it prefers, not uniform samples (which were most of a
    500-trial search once the policy had concentrated)."""
    space = TinySpace([5] * 6)
    distances = {}
    for max_temperature in (1.0, 50.0):  # 1.0: no widening, straight to uniform samples
        s = PPOStrategy(space, 0, max_temperature=max_temperature, explore=0.0)
        with torch.no_grad():
            for head in s.controller.heads:  # a policy sure of token 0 at every decision
                head.weight.zero_()
                head.bias.copy_(torch.tensor([12.0, 0.0, 0.0, 0.0, 0.0]))
        assert s.ask(1)[0].arch == (0,) * 6
        proposals = s.ask(16)
        assert len({p.arch for p in proposals}) == 16 and (0,) * 6 not in {p.arch for p in proposals}
        with torch.no_grad():
            scored = s.controller(16, tokens=torch.tensor([p.tokens for p in proposals]))[1]
        assert [p.logp for p in proposals] == pytest.approx(scored.tolist(), abs=1e-4)  # the policy's own
        distances[max_temperature] = statistics.mean(sum(t != 0 for t in p.tokens) for p in proposals)
    assert distances[50.0] < 2.0 < 3.5 < distances[1.0]  # uniform samples differ in 4.8 of 6 on average


def test_ppo_explore_mixes_in_a_share_of_uniform_samples_over_the_whole_search() -> None:
    """A policy sure of one architecture still proposes `explore` of all candidates uniformly,
    whether asked 16 at a time or one by one, each with the policy's log-probability of it."""
    space = TinySpace([5] * 6)

    def sure_of_zeros(**knobs: Any) -> PPOStrategy:
        s = PPOStrategy(space, 0, **knobs)
        with torch.no_grad():
            for head in s.controller.heads:  # the policy all but always draws (0,) * 6
                head.weight.zero_()
                head.bias.copy_(torch.tensor([30.0, 0.0, 0.0, 0.0, 0.0]))
        return s

    def distances(s: PPOStrategy) -> list[int]:
        # Nothing is told, so the policy stays as set: far from (0,) * 6 means uniform.
        proposals = s.ask(16) + [p for _ in range(8) for p in s.ask(1)]
        with torch.no_grad():
            scored = s.controller(len(proposals), tokens=torch.tensor([p.tokens for p in proposals]))[1]
        assert [p.logp for p in proposals] == pytest.approx(scored.tolist(), abs=1e-4)
        return [sum(t != 0 for t in p.tokens) for p in proposals]

    assert distances(sure_of_zeros(explore=0.0, unique=False)) == [0] * 24
    far = [d >= 2 for d in distances(sure_of_zeros(explore=0.25, unique=False))]
    assert (sum(far[:16]), sum(far[16:])) == (4, 2)  # 4 of 16, then 2 in 8 single asks
    # With `unique` the policy's repeats are widened to its neighbours; the uniform share comes
    # last in each ask: proposals 12-15 of the first 16, then single asks 3 and 6.
    d = distances(sure_of_zeros(explore=0.25))
    uniform = [12, 13, 14, 15, 18, 21]
    assert statistics.mean(d[i] for i in uniform) > 3.5  # uniform samples differ in 4.8 of 6 on average
    assert statistics.mean(d[i] for i in range(1, 24) if i not in uniform) < 1.5


def test_ppo_learns_from_a_window_of_recent_results() -> None:
    space = TinySpace([3, 3, 3])
    s = PPOStrategy(space, 0, batch_size=4, window=10, unique=False)
    told = []
    for _ in range(4):
        proposals = s.ask(4)
        s.tell([_trial(p, 0.1 * (p.trial_id % 4)) for p in proposals])
        told += proposals
        assert len(s.memory) == min(10, len(told)) and s.buffer == []
        assert [m[0] for m in s.memory] == [list(p.tokens) for p in told[-10:]]  # the newest results
        assert [m[1] for m in s.memory] == [p.logp for p in told[-10:]]  # with their behaviour log-probs
    assert s.updates == 4
    classic = PPOStrategy(space, 0, batch_size=4, window=None)
    classic.tell([_trial(p, 0.5) for p in classic.ask(8)])
    assert len(classic.memory) == 4  # window None: the newest batch only


def test_ppo_top_k_keeps_the_best_results_and_pulls_the_policy_to_them() -> None:
    space = TinySpace([3, 3, 3])
    best = (2, 1, 0)

    def score(arch: tuple[int, ...]) -> float:
        return 1.0 if arch == best else 0.1 * sum(a == b for a, b in zip(arch, best, strict=True))

    runs = {}
    for k in (0, 4):
        s = PPOStrategy(space, 0, batch_size=4, top_k=k, unique=False)
        for _ in range(5):
            proposals = s.ask(4)
            s.tell([_trial(p, score(p.arch)) for p in proposals])
        runs[k] = s
    told = sorted({(score(p.arch), p.tokens) for p in proposals}, reverse=True)
    kept = runs[4].best
    assert len(kept) == 4 and [r for r, _ in kept] == sorted((r for r, _ in kept), reverse=True)
    assert kept[0][0] >= told[0][0] and runs[0].best == []
    with torch.no_grad():
        logp = {k: float(s.controller(1, tokens=torch.tensor([kept[0][1]]))[1]) for k, s in runs.items()}
    assert logp[4] > logp[0] + 0.5  # the best result so far is much likelier with the queue


@pytest.mark.parametrize("advantage", ["rank", "zscore", "ema", "elite"])
def test_ppo_advantages_are_scale_free(advantage: str) -> None:
    s = PPOStrategy(TinySpace([2, 2]), 0, advantage=advantage)
    batch = [([0, 0], -1.0, r, 0.5) for r in (0.2, 0.9, 0.4, 0.4)]
    adv = s.advantages(batch)
    scaled = s.advantages([(t, lp, 100 * r, 100 * b) for t, lp, r, b in batch])
    assert torch.allclose(adv, scaled, atol=1e-5)
    assert int(adv.argmax()) == 1 and int(adv.argmin()) == 0
    if advantage == "rank":
        assert adv.tolist() == pytest.approx([-0.5, 0.5, 0.0, 0.0])  # ties share their rank
    if advantage == "elite":
        assert adv.tolist()[0] == adv.tolist()[2] == 0.0  # only the best quarter is reinforced


def test_ppo_failed_reward_knob_and_update_cadence() -> None:
    space = TinySpace([2, 3, 2])
    skip = PPOStrategy(space, 0, batch_size=4)
    penal = PPOStrategy(space, 0, batch_size=4, failed_reward=0.0)
    for s in (skip, penal):
        proposals = s.ask(6)
        s.tell([_trial(p, None if p.trial_id < 3 else 0.8) for p in proposals])
    assert skip.updates == 0 and len(skip.buffer) == 3  # failures skipped, no full batch yet
    assert penal.updates == 1 and len(penal.buffer) == 2  # failures scored 0: one update of 4
    assert skip.baseline == penal.baseline == pytest.approx(0.8)  # only real results move it
    assert any(not torch.equal(p, q) for p, q in zip(skip.controller.parameters(), penal.controller.parameters(), strict=True))


def test_ppo_controller_shape() -> None:
    s = PPOStrategy(SPACE, 0)
    c = s.controller
    assert c.hidden == 100 and c.cell.hidden_size == 100
    assert [h.out_features for h in c.heads] == SPACE.decision_sizes()
    assert [e.num_embeddings for e in c.embeddings] == SPACE.decision_sizes()
    assert all(float(p.detach().abs().max()) <= 0.1 for p in c.parameters())  # NASNet init range
    assert s.optimizer.defaults["lr"] == pytest.approx(knobs_of("ppo")["lr"])
    assert knobs_of("ppo")["clip"] == 0.2 and knobs_of("ppo")["hidden"] == 100


# -- construction and errors ------------------------------------------------------------------
@pytest.mark.parametrize(("name", "knobs", "message"), [
    ("random", {"population": 3}, "strategy.knobs.population: unknown knob; allowed knobs: none"),
    ("evolution", {"popsize": 3}, "strategy.knobs.popsize: unknown knob; allowed knobs: population, sample_size"),
    ("evolution", {"population": 4, "sample_size": 5}, "strategy.knobs: sample_size (5) must be <= population (4)"),
    ("evolution", {"population": 1}, "strategy.knobs.population: Input should be greater than or equal to 2"),
    ("evolution", {"population": "many"},
     "strategy.knobs.population: Input should be a valid integer, unable to parse string as an integer"),
    ("evolution", {"population": True}, "strategy.knobs.population: Input should be a number, not true/false"),
    ("ppo", {"lr": -1.0}, "strategy.knobs.lr: Input should be greater than 0"),
    ("ppo", {"lr": float("nan")}, "strategy.knobs.lr: Input should be a finite number"),
    ("ppo", {"epochs": 0}, "strategy.knobs.epochs: Input should be greater than or equal to 1"),
    ("ppo", {"batch_size": 2.5},
     "strategy.knobs.batch_size: Input should be a valid integer, got a number with a fractional part"),
    ("ppo", {"clip": 0}, "strategy.knobs.clip: Input should be greater than 0"),
    ("ppo", {"explore": 1.5}, "strategy.knobs.explore: Input should be less than or equal to 1"),
    ("ppo", {"advantage": "median"}, "strategy.knobs.advantage: Input should be 'rank', 'zscore', 'ema' or 'elite'"),
    ("tpe", {"n_startup_trials": -1}, "strategy.knobs.n_startup_trials: Input should be greater than or equal to 0"),
    ("nsga2", {"population_size": 1}, "strategy.knobs.population_size: Input should be greater than or equal to 2"),
    ("nsga2", {"mutation_prob": 2}, "strategy.knobs.mutation_prob: Input should be less than or equal to 1"),
])
def test_knob_errors_read_like_config_errors(name: str, knobs: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        make_strategy(name, SPACE, 0, knobs)
    assert str(err.value) == message
    with pytest.raises(UserError):
        check_knobs(name, knobs)  # the same check, without building the strategy


def test_make_strategy_errors() -> None:
    with pytest.raises(UserError, match="choose one of: ppo, random, evolution, tpe, nsga2"):
        make_strategy("bayes", SPACE)
    with pytest.raises(UserError, match="must be a mapping"):
        make_strategy("ppo", SPACE, 0, [("lr", 1)])  # type: ignore[arg-type]
    with pytest.raises(UserError, match="seed must be an integer"):
        make_strategy("random", SPACE, 1.5)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="ask\\(n\\) must be >= 1"):
        make_strategy("random", SPACE).ask(0)
    with pytest.raises(UserError, match="ask\\(n\\) must be an integer"):
        make_strategy("random", SPACE).ask(True)
    with pytest.raises(UserError):
        make_strategy("random", TinySpace([]))
    assert make_strategy("EVOLUTION", SPACE, 0, {"population": 10, "sample_size": 2}).population_size == 10
    assert set(knobs_of("evolution")) == {"population", "sample_size"}
    assert knobs_model("tpe")().n_startup_trials == 10  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", NAMES)
def test_load_state_from_other_strategy_space_or_knobs_is_user_error(name: str) -> None:
    state = make_strategy(name, SPACE).state_dict()
    other = [n for n in NAMES if n != name][0]
    with pytest.raises(UserError, match="checkpoint"):
        make_strategy(other, SPACE).load_state_dict(state)
    with pytest.raises(UserError, match="different search space"):
        make_strategy(name, TinySpace([2, 2])).load_state_dict(state)
    changed = {k: v + 1 for k, v in knobs_of(name).items() if isinstance(v, int) and not isinstance(v, bool)}
    if changed:
        key = next(iter(changed))
        with pytest.raises(UserError, match="same knobs"):
            make_strategy(name, SPACE, 0, {key: changed[key]}).load_state_dict(state)


# -- the trend -------------------------------------------------------------------------------
BUDGET, BATCH, LAST = 400, 16, 64


def _search(name: str, seed: int, target: list[int]) -> list[float]:
    """Run a whole search at default knobs; rewards in the order the trials were asked."""
    s = make_strategy(name, SPACE, seed)
    rewards: list[float] = []
    step = 0
    while len(rewards) < BUDGET:
        trials = []
        for p in s.ask(BATCH):
            # 5% failures, which must neither stop nor mislead a strategy.
            failed = random.Random(f"fail{seed}|{p.trial_id}").random() < 0.05
            trials.append(_trial(p, None if failed else _score(SPACE, p.arch, target, 0.05, str(p.trial_id))))
            rewards.append(_score(SPACE, p.arch, target))  # noise-free quality of what was asked
        random.Random(step).shuffle(trials)
        s.tell(trials)
        step += 1
    return rewards


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppo", "evolution", "tpe"])
def test_learners_beat_random_at_equal_budget(name: str) -> None:
    """Over 3 seeds, the mean quality of the last 64 of 400 asks beats random's clearly."""
    gains = []
    for seed in range(3):
        target = _target(SPACE, 100 + seed)
        base = statistics.mean(_search("random", seed, target)[-LAST:])
        rewards = _search(name, seed, target)
        late, early = statistics.mean(rewards[-LAST:]), statistics.mean(rewards[:LAST])
        assert late > base + 0.05, (name, seed, late, base)
        assert late > early + 0.05, (name, seed, late, early)  # it improves over its own start
        gains.append(late - base)
    assert statistics.mean(gains) > 0.1
