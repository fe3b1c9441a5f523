"""Repeats are free, and an interrupted search resumes exactly, for every strategy.

The searches are real (proxy training on CIFAR-10, ONNX Runtime latency, a SQLite store) over tiny
spaces: one with 4 architectures, where repeats are certain, and one with a few thousand, where
the strategies have room to learn. An interruption is a KeyboardInterrupt raised by an executor
after some results, as Ctrl-C would; the resumed run is checked by replaying its strategy from
scratch on the stored results, which must propose exactly the stored trials (ids, tokens, PPO's
log-probabilities), repeats included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnas.search.config import SearchConfig, load_config
from mnas.search.local import Hooks, LocalExecutor
from mnas.search.loop import REPEAT_PATIENCE, resume_search, start_search
from mnas.search.store import Store, load_state
from mnas.search.trial import Trial
from mnas.space import SearchSpace
from mnas.strategies import STRATEGIES, make_strategy

FOUR_ARCHS = {  # every decision has one choice except the two layer deltas: 4 architectures
    "name": "four", "base_filters": [8, 16], "base_layers": [1, 1], "strides": [1, 2],
    "ops": [{"op": "conv", "expand": 1}], "kernels": [3], "se_ratios": [0], "skips": ["none"],
    "filter_multipliers": [1.0], "layer_deltas": [0, 1], "stem_filters": 8, "stem_stride": 1,
    "head_filters": 32, "resolution": 32,
}
SMALL = {
    "name": "small", "base_filters": [8, 16, 24], "base_layers": [1, 1, 1], "strides": [1, 2, 2],
    "ops": [{"op": "conv", "expand": 1}, {"op": "ds", "expand": 1}, {"op": "mbconv", "expand": 3}],
    "kernels": [3, 5], "se_ratios": [0, 0.25], "skips": ["none", "identity"], "filter_multipliers": [0.5, 1.0],
    "layer_deltas": [0, 1], "stem_filters": 8, "stem_stride": 1, "head_filters": 64, "resolution": 32,
}
KNOBS: dict[str, dict[str, Any]] = {"ppo": {"batch_size": 2}, "evolution": {"population": 2, "sample_size": 1},
                                    "tpe": {"n_startup_trials": 2}, "nsga2": {"population_size": 2}}


def _config(folder: Path, space: dict[str, Any], strategy: str, trials: int, batch: int) -> SearchConfig:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    config = {
        "space": "space.yaml", "seed": 0,
        "data": {"dataset": "cifar10_subset", "train_subset": 200, "val_size": 100},
        "proxy": {"epochs": 1, "batch_size": 50, "max_steps": 2, "threads": 1, "workers": 1},
        "latency": {"backend": "onnxruntime", "threads": 1, "processes": 1},
        "reward": {"target_ms": 0.12},
        "strategy": {"name": strategy, "knobs": KNOBS.get(strategy, {})},
        "budget": {"trials": trials, "batch_size": batch},
        "references": {"models": []},
    }
    (folder / "search.yaml").write_text(yaml.safe_dump(config))
    return load_config(folder / "search.yaml")


class StopAfter(LocalExecutor):
    """The local executor, interrupted (as by Ctrl-C) right after its `n`-th result is stored."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def run(self, trials: Sequence[Trial], config: SearchConfig, hooks: Hooks) -> None:
        def on_result(trial: Trial) -> None:
            hooks.on_result(trial)
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

        super().run(trials, config, dataclasses.replace(hooks, on_result=on_result))


def _replay(name: str, space: SearchSpace, trials: list[Trial]) -> None:
    """A fresh strategy fed the stored results, batch by batch, proposes exactly the stored trials."""
    strategy = make_strategy(name, space, 0, KNOBS.get(name, {}))
    for step in sorted({t.step for t in trials}):
        batch = [t for t in trials if t.step == step]
        proposals = strategy.ask(len(batch))
        assert [p.trial_id for p in proposals] == [t.trial_id for t in batch]
        assert [list(p.tokens) for p in proposals] == [t.tokens for t in batch]
        assert [p.arch.id for p in proposals] == [t.arch.id for t in batch]
        for p, t in zip(proposals, batch, strict=True):
            assert (p.logp is None) == (t.logp is None)
            if p.logp is not None:
                assert t.logp == pytest.approx(p.logp, abs=1e-5)
        strategy.tell(batch)


@pytest.mark.slow
def test_repeats_reuse_stored_results_and_cost_nothing(tmp_path, data_root) -> None:
    config = _config(tmp_path, FOUR_ARCHS, "random", trials=3, batch=4)
    outcome = start_search(config, tmp_path / "run", show_progress=False)
    with Store.open(tmp_path / "run") as store:
        trials = store.trials()
        evaluations = store.evaluations()
        attempts = {t.trial_id: store.attempts(t.trial_id) for t in trials}
        state = load_state(store.checkpoint().state)
        assert store.untold() == []
    originals = [t for t in trials if not t.is_repeat]
    repeats = [t for t in trials if t.is_repeat]
    assert evaluations == len(originals) == 3 and outcome.stopped == "budget"
    assert len({t.arch.id for t in originals}) == 3  # no architecture was evaluated twice
    assert repeats and outcome.repeats == len(repeats)
    by_id = {t.trial_id: t for t in trials}
    for t in repeats:
        source = by_id[t.repeat_of]
        assert source.arch.id == t.arch.id and not source.is_repeat and source.trial_id < t.trial_id
        assert (t.status, t.accuracy, t.latency_ms, t.reward, t.error) == \
               (source.status, source.accuracy, source.latency_ms, source.reward, source.error)
        assert attempts[t.trial_id] == 0 and t.seconds == 0.0  # never handed to a worker
    assert all(attempts[t.trial_id] == 1 for t in originals)
    assert state["told"] == len(trials)  # repeats are told like any other trial
    assert outcome.best is not None and not outcome.best.is_repeat


@pytest.mark.slow
def test_a_search_that_only_repeats_itself_stops(tmp_path, data_root) -> None:
    config = _config(tmp_path, FOUR_ARCHS, "random", trials=10, batch=2)
    outcome = start_search(config, tmp_path / "run", show_progress=False)
    assert outcome.stopped == "repeats"
    with Store.open(tmp_path / "run") as store:
        assert store.evaluations() == 4  # the whole space, each architecture once
        steps = sorted({t.step for t in store.trials()})
        tail = [s for s in steps if all(t.is_repeat for t in store.trials() if t.step == s)]
        assert tail[-REPEAT_PATIENCE:] == steps[-REPEAT_PATIENCE:]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_interrupted_search_resumes_exactly(tmp_path, data_root, name: str) -> None:
    config = _config(tmp_path, SMALL, name, trials=6, batch=2)
    with pytest.raises(KeyboardInterrupt):
        start_search(config, tmp_path / "run", executor=StopAfter(3), show_progress=False)
    with Store.open(tmp_path / "run") as store:
        assert store.evaluations() < 6 and store.untold()  # stopped inside a batch
        before = {t.trial_id: t for t in store.trials(("done", "failed"))}
    outcome = resume_search(tmp_path / "run", executor=LocalExecutor(), show_progress=False)
    assert outcome.stopped == "budget"
    with Store.open(tmp_path / "run") as store:
        trials = store.trials()
        assert store.untold() == [] and store.evaluations() == 6
    for trial_id, old in before.items():  # finished trials were kept, not run again
        assert trials[trial_id] == old
    _replay(name, SearchSpace.load(str(tmp_path / "space.yaml")), trials)
