"""Every accuracy model behind the seam (`mnas.search.accuracy.AccuracyModel`), and real searches
over the NAS-Bench-201 table through the real loop.

Fast: the stand-in (test_search_loop.py), the table (`mnas.search.nb201.TableAccuracy`) and the
learned rung 0 (`PredictedAccuracy`) in front of either score without training. The trained proxy
and the supernet go through the same loop in the slow tier: test_search.py, test_search_rungs.py
(proxy rungs in worker processes) and test_search_supernet.py; their contract here is checked
without training where it can be (`test_config_models_without_training`) and with a tiny proxy in
the slow tier.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future

import pytest
from scipy.stats import kendalltau

from mnas.errors import UserError
from mnas.search import nb201
from mnas.search.accuracy import (
    AccuracyModel,
    PredictedAccuracy,
    SupernetAccuracy,
    TrainedAccuracy,
    accuracy_model,
    make_accuracy_model,
)
from mnas.search.config import PredictorConfig, load_config, parse_config
from mnas.search.evaluation import evaluate_batch
from mnas.search.hooks import Hooks
from mnas.search.loop import SearchRun, resume_search, start_search
from mnas.search.rungs import RungScheduler, done_future
from mnas.search.store import Store
from mnas.search.trial import Trial
from mnas.space import SearchSpace
from mnas.strategies import STRATEGIES
from test_search import write_config
from test_search_loop import StandInAccuracy, StandInLatency, _config


@pytest.fixture(scope="module")
def table() -> nb201.Table:
    path = nb201.default_table_path()
    if not path.is_file():
        pytest.fail(f"{path} not found; set MNAS_DATA to the shared data folder (it holds nb201_hw.csv.gz)")
    return nb201.load_table(path)


@pytest.fixture(scope="module")
def setting(table) -> nb201.Setting:
    return next(s for s in nb201.make_settings(table) if s.label == "pixel3/hard/T50")


def _table_config(setting, name="random", trials=24, batch=8, predictor=None, seed=0):
    return nb201.search_config(name, {}, seed, setting, trials, batch, predictor)


# -- every model behind the seam ---------------------------------------------------------------
def _stand_in(tmp_path, table, setting):
    config = _config(tmp_path, references={"models": []})
    return StandInAccuracy(config), SearchSpace.load(config.space)


def _table(tmp_path, table, setting):
    return nb201.TableAccuracy(_table_config(setting), table), nb201.NB201Space()


def _predicted_stand_in(tmp_path, table, setting):
    inner, space = _stand_in(tmp_path, table, setting)
    return PredictedAccuracy(inner, PredictorConfig(min_results=4), space), space


def _predicted_table(tmp_path, table, setting):
    inner, space = _table(tmp_path, table, setting)
    return PredictedAccuracy(inner, PredictorConfig(min_results=4, fit_on="top"), space), space


MODELS = {"stand-in": _stand_in, "table": _table, "predicted stand-in": _predicted_stand_in,
          "predicted table": _predicted_table}


def _teach(model: AccuracyModel, space, n: int = 8) -> list:
    """Hand a learning model n results at its first measured rung (as the loop does after a tell)."""
    if isinstance(space, SearchSpace):
        archs = [space.sample(i) for i in range(n)]
    else:
        archs = [space.decode([(i * 7 + k * (i + 1)) % 5 for k in range(6)]) for i in range(n)]
    if model.learns:
        first = model.free_rungs
        model.observe([(a, first, model.evaluate(a, first, seed=0, state=None).accuracy) for a in archs])
    return archs


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_seam_contract(kind, tmp_path, data_root, table, setting):
    model, space = MODELS[kind](tmp_path, table, setting)
    model.check(None, space)  # none of these loads data
    rungs = model.rungs
    assert rungs and rungs == sorted(rungs) and len(set(rungs)) == len(rungs)
    assert model.top == len(rungs) - 1 and isinstance(model.unit, str) and isinstance(model.phase, str)
    assert 0 <= model.free_rungs <= model.top
    description = model.describe()
    assert description and "\n" not in description
    arch = space.decode([1, 2, 3, 3, 2, 1]) if not isinstance(space, SearchSpace) else space.sample(99)
    assert model.first_rung(arch) == model.free_rungs  # a learning model has learned nothing yet
    _teach(model, space)
    assert model.first_rung(arch) == 0
    state = tmp_path / "state.pt"
    for rung in range(model.first_rung(arch), model.top + 1):
        result = model.evaluate(arch, rung, seed=0, state=state)
        assert result.ok, result.error
        assert result.budget == rungs[rung] and 0.0 <= result.accuracy <= 1.0
        assert isinstance(model.in_driver(rung), bool)
    assert model.in_driver(0) == (model.free_rungs > 0)  # a prediction is made where the model learned


def test_config_models_without_training(tmp_path, data_root):
    """The config's models (proxy, supernet, each behind the predictor), built by the one factory."""
    config = _config(tmp_path, proxy={"steps": [10, 30], "workers": 1})
    assert type(make_accuracy_model(config)) is TrainedAccuracy and make_accuracy_model(config).top == 1
    predicted = make_accuracy_model(config.model_copy(update={"predictor": PredictorConfig()}))
    assert isinstance(predicted, PredictedAccuracy) and isinstance(predicted.inner, TrainedAccuracy)
    assert predicted.rungs == [0, 10, 30] and predicted.top == 2 and predicted.parallel and predicted.can_continue()
    assert predicted.free_rungs == 1 and predicted.first_rung(None) == 1  # nothing learned yet: start training
    supernet = _config(tmp_path, proxy={"kind": "supernet", "path": str(tmp_path / "sn")},
                       predictor={"min_results": 8})
    model = make_accuracy_model(supernet)
    assert isinstance(model, PredictedAccuracy) and isinstance(model.inner, SupernetAccuracy)
    assert model.rungs[0] == 0 and model.unit == "images" and not model.parallel and not model.scores_any_architecture


@pytest.mark.slow
def test_the_trained_proxy_keeps_the_contract(tmp_path, data_root):
    """The paper's proxy, at two tiny rungs, with a prediction in front (the full search: test_search.py)."""
    config = _config(tmp_path, proxy={"steps": [2, 4], "batch_size": 16, "workers": 1, "device": "cpu"},
                     predictor={"min_results": 4})
    model = accuracy_model(config)
    space = SearchSpace.load(config.space)
    arch = space.sample(0)
    state = tmp_path / "state.pt"
    for rung in (1, 2):
        result = model.evaluate(arch, rung, seed=0, state=state)
        assert result.ok and result.budget == model.rungs[rung], result.error


# -- real searches over the NAS-Bench-201 table ---------------------------------------------------
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_searches_the_table_through_the_real_loop(strategy, tmp_path, table, setting):
    found = nb201.search(strategy, strategy, {}, 0, setting, 40, table, batch=8, run_dir=tmp_path / "run")
    reward = setting.reward()
    with Store.open(tmp_path / "run") as store:
        store.read_arch = nb201.NB201Space().arch_from_json
        trials = store.trials()
        config = parse_config(store.config)
    assert config.space == "nb201" and config.references.models == []
    assert all(isinstance(t.arch, nb201.Cell) and t.status == "done" for t in trials)
    firsts = [t for t in trials if not t.is_repeat]
    assert len(firsts) == 40 or found["stopped"] == "repeats"
    for t in firsts:  # each result is the table's, under the setting's reward
        acc, lats = table[t.arch.ops]
        assert t.accuracy == acc and t.latency_ms == lats[setting.device] and t.rung == 0
        assert t.reward == pytest.approx(reward(acc, lats[setting.device]))
        assert t.tokens == list(t.arch.ops)
    assert found["cells"] == [list(t.arch.ops) for t in firsts]
    assert found["repeats"] == sum(t.is_repeat for t in trials)


def test_a_table_search_is_reproducible(table, setting):
    one = nb201.search("tpe", "tpe", {}, 3, setting, 30, table)
    two = nb201.search("tpe", "tpe", {}, 3, setting, 30, table)
    assert one["cells"] == two["cells"] and one["asks"] == two["asks"]


def test_the_table_refuses_another_space(tmp_path, table, setting):
    config = _config(tmp_path, references={"models": []})
    with pytest.raises(UserError, match="scores NB201 cells only") as err:
        start_search(config, tmp_path / "run", show_progress=False, latency=[StandInLatency()],
                     accuracy=nb201.TableAccuracy(config, table))
    assert "\n" not in str(err.value)


def test_cells_and_their_json():
    space = nb201.NB201Space()
    cell = space.decode([0, 1, 2, 3, 4, 3])
    assert space.arch_from_json(cell.to_json()) == cell and space.encode(cell) == [0, 1, 2, 3, 4, 3]
    assert cell.id == "|none~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    with pytest.raises(ValueError):
        nb201.Cell((0, 1, 5, 0, 0, 0))
    with pytest.raises(ValueError):
        space.encode(SearchSpace.load("mnasnet_cifar").sample(0))


# -- the learned rung 0 ------------------------------------------------------------------------
class CountingTable(nb201.TableAccuracy):
    """The table, counting the lookups (what a real proxy would have trained)."""

    def __init__(self, config, table) -> None:
        super().__init__(config, table)
        self.looked_up: list[tuple[int, ...]] = []

    def evaluate(self, arch, rung, *, seed, state=None):
        self.looked_up.append(arch.ops)
        return super().evaluate(arch, rung, seed=seed, state=state)


def _predicted_search(tmp_path, table, setting, *, trials=48, min_results=12, strategy="random"):
    predictor = PredictorConfig(min_results=min_results)
    config = _table_config(setting, name=strategy, trials=trials, batch=8, predictor=predictor)
    inner = CountingTable(config, table)
    model = PredictedAccuracy(inner, predictor)
    outcome = start_search(config, tmp_path / "run", show_progress=False, space=nb201.NB201Space(),
                           latency=[nb201.DeviceLatency(table, setting.device)], accuracy=model)
    store = Store.open(tmp_path / "run")
    store.read_arch = nb201.NB201Space().arch_from_json
    return outcome, model, inner, store


def test_the_predictor_stops_predicted_poor_candidates_before_any_training(tmp_path, table, setting):
    outcome, model, inner, store = _predicted_search(tmp_path, table, setting)
    with store:
        trials = {t.trial_id: t for t in store.trials()}
        records = store.rungs()
    assert outcome.counts["done"] == 48 and model.top == 1
    by_trial: dict[int, list] = {}
    for r in records:
        by_trial.setdefault(r.trial_id, []).append(r)
    unpredicted = [i for i, rs in by_trial.items() if rs[0].rung == 1]
    predicted = [i for i, rs in by_trial.items() if rs[0].rung == 0]
    # Before min_results (12) results were told, nobody was predicted: the first batches trained all.
    assert sorted(unpredicted)[:12] == list(range(12)) and len(predicted) > 0
    assert all(i >= 12 for i in predicted)
    stopped = [i for i in predicted if not by_trial[i][0].promoted]
    promoted = [i for i in predicted if by_trial[i][0].promoted]
    assert stopped and promoted
    # A stopped candidate was never looked up (never "trained"); a promoted one was, once.
    looked = [tuple(c) for c in inner.looked_up]
    assert all(trials[i].arch.ops not in looked for i in stopped)
    assert all(looked.count(trials[i].arch.ops) == 1 for i in promoted + unpredicted)
    assert len(looked) == len(promoted) + len(unpredicted) < 48
    # Stopped ones keep their predicted accuracy at rung 0 (budget 0) and the top is the table's.
    for i in stopped:
        t = trials[i]
        assert t.rung == 0 and t.budget == 0 and t.accuracy == by_trial[i][0].accuracy
    for i in promoted + unpredicted:
        assert trials[i].rung == 1 and trials[i].accuracy == table[trials[i].arch.ops][0]
    # The free rung is decided by Optuna's pruner among the predicted candidates only.
    screen = RungScheduler([0, 200], 1 / 3)
    assert all(screen.decide(r.trial_id, 0, r.reward) == r.promoted for r in records if r.rung == 0)
    # Its quality is measured: Kendall tau of prediction vs table over the promoted ones.
    tau, n = model.predictor.quality()
    pairs = [(by_trial[i][0].accuracy, by_trial[i][1].accuracy) for i in promoted]
    assert n == len(promoted) and tau == pytest.approx(kendalltau(*zip(*pairs, strict=True))[0])
    assert f"Kendall tau {tau:.2f} over the {n} candidates" in model.describe()
    assert outcome.best is not None and outcome.best.rung == 1  # the best is a looked-up one


def test_a_resumed_predicted_search_decides_as_an_uninterrupted_one(tmp_path, table, setting, monkeypatch):
    outcome, _, _, store = _predicted_search(tmp_path / "whole", table, setting, trials=40, min_results=8)
    with store:
        whole = [(t.arch.id, t.rung, t.accuracy) for t in store.trials()]
        whole_rungs = [(r.trial_id, r.rung, r.promoted) for r in store.rungs()]

    class Killed(Exception):
        pass

    original = SearchRun.decide

    def decide(self, trial, rung, result):
        out = original(self, trial, rung, result)
        if len(self.store.rungs()) == 25:
            raise Killed
        return out

    predictor = PredictorConfig(min_results=8)
    config = _table_config(setting, trials=40, predictor=predictor)

    def models():
        return dict(space=nb201.NB201Space(), latency=[nb201.DeviceLatency(table, setting.device)],
                    accuracy=PredictedAccuracy(nb201.TableAccuracy(config, table), predictor))

    monkeypatch.setattr(SearchRun, "decide", decide)
    with pytest.raises(Killed):
        start_search(config, tmp_path / "cut", show_progress=False, **models())
    monkeypatch.setattr(SearchRun, "decide", original)
    resume_search(tmp_path / "cut", show_progress=False, **models())
    with Store.open(tmp_path / "cut") as cut:
        cut.read_arch = nb201.NB201Space().arch_from_json
        assert [(t.arch.id, t.rung, t.accuracy) for t in cut.trials()] == whole
        assert [(r.trial_id, r.rung, r.promoted) for r in cut.rungs()] == whole_rungs


def test_references_skip_the_prediction_and_the_mnasnet_space_learns_too(tmp_path, data_root):
    config = _config(tmp_path, trials=16, batch=4, references={"models": ["mobilenet_v2"], "seeds": 1},
                     predictor={"min_results": 4})
    model = PredictedAccuracy(StandInAccuracy(config), config.predictor)
    outcome = start_search(config, tmp_path / "run", show_progress=False, latency=[StandInLatency()], accuracy=model)
    with Store.open(tmp_path / "run") as store:
        refs = store.references()
        records = store.rungs()
    assert outcome.counts["done"] == 16
    ref_rungs = [r.rung for r in records if r.trial_id == refs[0].trial_id]
    assert ref_rungs == [1, 2, 3] and refs[0].rung == 3  # trained to the top, never predicted
    assert any(r.rung == 0 for r in records) and model.predictor.fits > 0


def test_a_prediction_runs_in_the_driver_whatever_the_executor(tmp_path, table, setting):
    """With workers (`submit`), rung 0 is made in this process, where the predictor learned."""
    predictor = PredictorConfig(min_results=4)
    config = _table_config(setting, predictor=predictor)
    model = PredictedAccuracy(nb201.TableAccuracy(config, table), predictor, nb201.NB201Space())
    space = nb201.NB201Space()
    model.observe([(space.decode([i % 5, (i + 1) % 5, 3, 3, 2, i % 4]), 1, 0.5 + 0.01 * i) for i in range(6)])
    submitted: list[int] = []

    def submit(trial, rung) -> Future:
        submitted.append(rung)
        return done_future(model.evaluate(trial.arch, rung, seed=0))

    trials = [Trial(i, arch=space.decode([1, 2, 3, 3, 2, i % 5])) for i in range(3)]
    hooks = Hooks(lambda t: None, lambda t, p: None, lambda t: None, start_rung=lambda t: (0, None),
                  accuracy=model, latency=[nb201.DeviceLatency(table, setting.device)])
    evaluate_batch(trials, config, hooks, submit=submit, workers=2)
    assert submitted == [1, 1, 1]  # the predictions never went to a worker
    assert all(t.status == "done" and t.rung == 1 for t in trials)


# -- the predictor's settings ------------------------------------------------------------------
@pytest.mark.parametrize(("section", "expected"), [
    ({"min_results": 2}, "predictor.min_results: Input should be greater than or equal to 4"),
    ({"min_results": "16"}, "predictor.min_results: '16' is text, not a number"),
    ({"min_results": True}, "predictor.min_results: true is a boolean, not a number"),
    ({"alpha": 0}, "predictor.alpha: Input should be greater than 0"),
    ({"alpha": float("nan")}, "predictor.alpha: nan is not a finite number"),
    ({"fit_on": "middle"}, "predictor.fit_on: Input should be 'first' or 'top'"),
    ({"min_result": 8}, "predictor.min_result: unknown key; allowed keys: min_results, fit_on, alpha"),
    (True, "predictor: Input should be a valid dictionary"),
])
def test_bad_predictor_settings_are_one_line(section, expected):
    with pytest.raises(UserError) as err:
        parse_config({"reward": {"target_ms": 5.0}, "predictor": section}, source="quick.yaml")
    text = str(err.value)
    assert text.startswith("quick.yaml: ") and expected in text and "\n" not in text


def test_the_predictor_is_off_by_default_and_on_with_a_section(tmp_path):
    assert parse_config({"reward": {"target_ms": 5.0}}).predictor is None
    path = tmp_path / "search.yaml"
    path.write_text(json.dumps({"reward": {"target_ms": 5.0}, "predictor": {}}))
    config = load_config(path)
    assert config.predictor == PredictorConfig() and isinstance(make_accuracy_model(config), PredictedAccuracy)
    path.write_text("reward: {target_ms: 5.0}\npredictor: {min_results: 1}\n")
    with pytest.raises(UserError, match=r"search\.yaml: predictor\.min_results: Input should be greater") as err:
        load_config(path)
    assert "\n" not in str(err.value)



@pytest.mark.slow
def test_the_prediction_stays_in_the_driver_while_workers_train(tmp_path, data_root):
    """The config's predictor in front of the real proxy, trained in worker processes: rung 0 is
    made here, rungs 1 and up in the workers (test_search_rungs.py: the same without a predictor)."""
    proxy = {"steps": [2, 4], "keep": 0.5, "workers": 2, "max_steps": None, "batch_size": 25}
    config = load_config(write_config(tmp_path, proxy=proxy, budget={"trials": 8, "batch_size": 4},
                                      predictor={"min_results": 4}))
    outcome = start_search(config, tmp_path / "run", show_progress=False)
    with Store.open(tmp_path / "run") as store:
        trials, records = store.trials(), store.rungs()
    assert outcome.counts["done"] == 8
    here = f":{os.getpid()}"
    first = {r.trial_id: r.rung for r in reversed(records)}  # each trial's first rung
    assert [first[t.trial_id] for t in trials[:4]] == [1, 1, 1, 1]  # nothing learned yet: trained
    assert [first[t.trial_id] for t in trials[4:]] == [0, 0, 0, 0]  # then predicted first
    for t in trials:
        assert t.worker.endswith(here) == (t.rung == 0), (t.trial_id, t.rung, t.worker)
