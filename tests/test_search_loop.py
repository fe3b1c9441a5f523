"""The search loop with stand-in accuracy and latency models: rungs, promotion, references, resume.

Fast (no training, no timing): the loop, the store, the strategies and Optuna's successive halving
are real; only the two models are stand-ins behind their seams, so what is tested is the loop's
logic. The real proxy and real latency go through the same loop in test_search.py (slow).
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import Future
from pathlib import Path

import pytest

from mnas.latency.model import Estimate
from mnas.latency.target import Target
from mnas.search import loop as search_loop
from mnas.search.accuracy import AccuracyModel, RungResult, accuracy_model
from mnas.search.config import parse_config
from mnas.search.loop import RUNG_GAP, SearchRun, resume_search, start_search
from mnas.search.rungs import RungScheduler, climb
from mnas.search.store import Store
from mnas.search.trial import Trial
from mnas.strategies import STRATEGIES
from mnas.train.proxy import state_at


def _unit(arch_id: str, salt: str = "") -> float:
    return int(hashlib.sha256((arch_id + salt).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class StandInAccuracy(AccuracyModel):
    """Accuracy from the architecture's id: grows with the rung, the same order at every rung."""

    kind = "standin"
    phase = "scoring"

    def __init__(self, config, rungs=(1, 3, 9), fail_ids=()) -> None:
        super().__init__(config)
        self._rungs = list(rungs)
        self.calls: list[tuple[str, int]] = []
        self.fail_ids = set(fail_ids)

    @property
    def rungs(self) -> list[int]:
        return self._rungs

    def can_continue(self) -> bool:
        return True

    def evaluate(self, arch, rung, *, seed, state=None) -> RungResult:
        self.calls.append((arch.id, rung))
        if arch.id in self.fail_ids:
            return RungResult(None, "accuracy: diverged", 0.0, self._rungs[rung])
        if rung > 0:
            assert state is not None and state_at(state, self._rungs[rung - 1]).is_file(), \
                "a promotion continues from its state"
        if state is not None and rung < len(self._rungs) - 1:
            state.parent.mkdir(parents=True, exist_ok=True)
            state_at(state, self._rungs[rung]).write_text(f"{arch.id} {rung}")
        base = 0.2 + 0.5 * _unit(arch.id)
        return RungResult(base + 0.05 * rung, None, 0.0, self._rungs[rung])

    def describe(self) -> str:
        return "stand-in"


class StandInLatency:
    """Latency from the architecture's id (1-3 ms); the reference at 2 ms."""

    def __init__(self) -> None:
        self.target = Target(backend="onnxruntime", resolution=32)

    def estimate(self, arch) -> Estimate:
        return Estimate(1.0 + 2.0 * _unit(arch.id, "lat"), None, "lut")

    def estimate_many(self, archs):
        return [self.estimate(a) for a in archs]

    def latency_ms(self, arch) -> float:
        return self.estimate(arch).ms

    def reference_latency(self, name=None):
        raise AssertionError("not asked: the config gives target_ms")


def _config(tmp_path: Path, strategy: str = "random", trials: int = 12, batch: int = 4, **extra):
    data = {
        "space": "mnasnet_cifar",
        "data": {"dataset": "cifar10_subset", "train_subset": 200, "val_size": 100},
        "latency": {"backend": "onnxruntime", "processes": 1, "name": "cpu"},
        "reward": {"target_ms": 2.0, "preset": "soft"},
        "strategy": {"name": strategy},
        "budget": {"trials": trials, "batch_size": batch},
        "proxy": {"workers": 1},
        **extra,
    }
    return parse_config(data)


def _search(tmp_path, config, model=None, **kw):
    model = model or StandInAccuracy(config)
    outcome = start_search(config, tmp_path / "run", show_progress=False, latency=[StandInLatency()],
                           accuracy=model, **kw)
    return outcome, model


def test_rungs_promote_the_best_third_and_store_every_rung(tmp_path, data_root):
    config = _config(tmp_path, trials=12, references={"models": []})
    outcome, model = _search(tmp_path, config)
    with Store.open(tmp_path / "run") as store:
        trials = store.trials()
        records = store.rungs()
    assert outcome.counts["done"] == 12 and len(trials) == 12
    at = {r: [x for x in records if x.rung == r] for r in range(3)}
    assert len(at[0]) == 12  # every candidate ran the first rung
    assert 0 < len(at[1]) < 12 and 0 < len(at[2]) <= len(at[1])  # and fewer the next ones
    for t in trials:  # the trial keeps its highest rung's accuracy and cost
        mine = [x for x in records if x.trial_id == t.trial_id]
        assert [x.rung for x in mine] == list(range(len(mine)))
        assert t.rung == mine[-1].rung and t.accuracy == mine[-1].accuracy and t.budget == [1, 3, 9][t.rung]
        assert all(x.promoted for x in mine[:-1]) and not mine[-1].promoted
    # Promotions follow Optuna's pruner exactly: a fresh scheduler fed the same rewards agrees.
    replay = RungScheduler([1, 3, 9], 1 / 3)
    for r in records:
        assert replay.decide(r.trial_id, r.rung, r.reward) == r.promoted
    # Each (candidate, rung) was evaluated once: promotions continued, nothing ran twice.
    assert len(model.calls) == len(set(model.calls)) == len(records)
    assert not (tmp_path / "run" / search_loop.STATES_DIR).exists() or not any(
        (tmp_path / "run" / search_loop.STATES_DIR).iterdir())  # states are removed when a trial ends
    assert outcome.best.rung == 2  # the best is chosen among the top rung only


def test_strategies_see_the_fidelity(tmp_path, data_root):
    config = _config(tmp_path, references={"models": []})
    model = StandInAccuracy(config)
    run = SearchRun.__new__(SearchRun)
    run.top = 2
    stopped = Trial(1, arch=None, status="done", accuracy=0.69, reward=0.7, rung=0)  # type: ignore[arg-type]
    top = Trial(2, arch=None, status="done", accuracy=0.21, reward=0.2, rung=2)  # type: ignore[arg-type]
    told_stopped, told_top = run.ranked(stopped), run.ranked(top)
    assert told_top is top and told_stopped.reward == pytest.approx(0.7 - 2 * RUNG_GAP)
    assert told_stopped.reward < told_top.reward and told_stopped.accuracy < told_top.accuracy
    assert stopped.reward == 0.7  # the stored trial keeps its real reward
    assert model.rungs == [1, 3, 9]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs_with_rungs(tmp_path, data_root, strategy):
    config = _config(tmp_path, strategy=strategy, trials=8, references={"models": []})
    outcome, _ = _search(tmp_path, config)
    assert outcome.counts["done"] == 8
    with Store.open(tmp_path / "run") as store:
        assert {t.rung for t in store.trials()} >= {0, 2}


def test_references_are_trained_to_the_top_rung_and_never_told(tmp_path, data_root):
    config = _config(tmp_path, trials=4, references={"models": ["mobilenet_v2", "mnasnet_a1"], "seeds": 2})
    outcome, model = _search(tmp_path, config)
    with Store.open(tmp_path / "run") as store:
        refs = store.references()
        trials = store.trials()
        told = store.checkpoint()
    assert [(r.reference, r.seed) for r in refs] == [("mobilenet_v2 x1", 0), ("mobilenet_v2 x1", 1),
                                                      ("mnasnet_a1 x1", 0)]
    assert all(r.status == "done" and r.rung == 2 and r.trial_id < 0 for r in refs)
    assert len(trials) == 4 and all(t.trial_id >= 0 for t in trials)  # not among the search's trials
    assert told is not None and outcome.counts["done"] == 4  # the search's own trials


def test_a_failed_rung_fails_the_trial_and_the_search_goes_on(tmp_path, data_root):
    config = _config(tmp_path, trials=4, references={"models": []})
    probe = search_loop.SearchSpace.load(config.space)
    first = search_loop.make_search_strategy(config, probe).ask(1)[0].arch
    outcome, _ = _search(tmp_path, config, model=StandInAccuracy(config, fail_ids={first.id}))
    assert outcome.counts == {"pending": 0, "running": 0, "done": 3, "failed": 1}


def test_resume_mid_rung_loses_no_finished_rung(tmp_path, data_root):
    """Killed after some rungs: the resumed search runs no finished rung again."""
    config = _config(tmp_path, trials=8, batch=8, references={"models": []})

    class Killed(Exception):
        pass

    class Dies(StandInAccuracy):
        def evaluate(self, arch, rung, *, seed, state=None):
            if len(self.calls) == 10:
                raise Killed
            return super().evaluate(arch, rung, seed=seed, state=state)

    dying = Dies(config)
    with pytest.raises(Killed):
        # a model that raises is caught per trial; make the kill escape like a SIGKILL would
        search_loop.RungResult = RungResult  # keep the name used by the module
        orig = search_loop.SearchRun.decide

        def decide(self, trial, rung, result):
            out = orig(self, trial, rung, result)
            if len(self.store.rungs()) == 9:
                raise Killed
            return out

        search_loop.SearchRun.decide = decide
        try:
            start_search(config, tmp_path / "run", show_progress=False, latency=[StandInLatency()], accuracy=dying)
        finally:
            search_loop.SearchRun.decide = orig
    with Store.open(tmp_path / "run") as store:
        before = {(r.trial_id, r.rung) for r in store.rungs()}
    assert len(before) == 9
    again = StandInAccuracy(config)
    resume_search(tmp_path / "run", show_progress=False, latency=[StandInLatency()], accuracy=again)
    redone = {(t, r) for t, r in ((a, b) for a, b in again.calls)}
    with Store.open(tmp_path / "run") as store:
        records = store.rungs()
        by_arch = {t.trial_id: t.arch.id for t in store.trials()}
        assert all(t.status == "done" for t in store.trials())
    finished_before = {(by_arch[t], r) for t, r in before}
    assert not finished_before & redone  # no finished rung was run again
    # and the whole run decided exactly as one uninterrupted run would have
    fresh = RungScheduler([1, 3, 9], 1 / 3)
    assert all(fresh.decide(r.trial_id, r.rung, r.reward) == r.promoted for r in records)


def test_climb_runs_promotions_first_and_at_most_workers_at_once(tmp_path):
    started: list[tuple[int, int]] = []
    pending: list[tuple[Future, Trial, int]] = []
    inflight_max = 0

    def submit(trial, rung):
        nonlocal inflight_max
        started.append((trial.trial_id, rung))
        future: Future = Future()
        pending.append((future, trial, rung))
        inflight_max = max(inflight_max, sum(not f.done() for f, _, _ in pending))
        if len(pending) >= 2 or True:
            f, t, r = pending.pop(0)
            f.set_result(RungResult(0.5 + 0.01 * t.trial_id, None, 0.0, r, rung=r))
        return future if future.done() else _done(future)

    def _done(future):
        return future

    finished: dict[int, int] = {}
    trials = [Trial(i, arch=None) for i in range(4)]  # type: ignore[arg-type]
    climb([(t, 0) for t in trials], submit=submit, workers=2,
          decide=lambda t, rung, res: t.trial_id == 0 and rung < 2,
          finish=lambda t, res: finished.__setitem__(t.trial_id, res.rung if res else -1))
    assert finished == {0: 2, 1: 0, 2: 0, 3: 0}
    assert started.index((0, 1)) < started.index((3, 0))  # the promotion jumped the queue
    assert inflight_max <= 2


def test_the_factory_is_the_one_place_that_reads_the_kind(tmp_path):
    src = Path(search_loop.__file__).parents[1]
    readers = [p for p in src.rglob("*.py") if "proxy.kind" in p.read_text() or ".kind ==" in p.read_text()
               and "proxy" in p.read_text()]
    assert [p.name for p in readers if p.name not in ("accuracy.py", "space.py", "config.py", "settings.py")] == []
    config = _config(tmp_path)
    assert accuracy_model(config).kind == "train"
    assert random.Random(0).random() < 1  # the module imports random for the strategies' sake


class FailsEveryTrial(StandInAccuracy):
    """Every candidate fails: with one error text (a config problem), or one per network."""

    def __init__(self, config, same: bool = True) -> None:
        super().__init__(config)
        self.same = same

    def evaluate(self, arch, rung, *, seed, state=None) -> RungResult:
        error = "train: CUDA is not available" if self.same else f"train: diverged on {arch.id}"
        return RungResult(None, error, 0.0, self._rungs[rung])


def test_a_search_whose_first_trials_all_fail_alike_stops_with_that_error(tmp_path, data_root):
    config = _config(tmp_path, trials=12, batch=2, references={"models": []})
    with pytest.raises(search_loop.UserError) as err:
        _search(tmp_path, config, model=FailsEveryTrial(config))
    assert f"the first {search_loop.FAIL_FAST} trials all failed with the same error" in str(err.value)
    assert "train: CUDA is not available" in str(err.value) and "\n" not in str(err.value)
    with Store.open(tmp_path / "run") as store:
        assert store.counts()["failed"] == search_loop.FAIL_FAST  # stopped there, the trials kept
    with pytest.raises(search_loop.UserError, match="all failed with the same error"):  # and a resume agrees
        resume_search(tmp_path / "run", show_progress=False, latency=[StandInLatency()], accuracy=FailsEveryTrial(config))


def test_first_trials_failing_for_different_reasons_do_not_stop_the_search(tmp_path, data_root):
    config = _config(tmp_path, trials=6, batch=2, references={"models": []})
    outcome, _ = _search(tmp_path, config, model=FailsEveryTrial(config, same=False))
    assert outcome.counts["failed"] == 6
