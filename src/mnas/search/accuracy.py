"""The accuracy seam: how accurate an architecture is, at what cost, and at which fidelity.

Beside `mnas.latency.model.LatencyModel` stands `AccuracyModel`: the search loop, the executors and
the report meet accuracy only through it, and `make_accuracy_model` is the one place that turns the
config's `proxy.kind` into a model:

- `TrainedAccuracy` (kind `train`, the paper's proxy): each candidate trained on the training
  split and scored on a held-out split, rung by rung (`rungs` are training steps); a promoted
  candidate continues from the checkpoint its previous rung left under the `state` path.
- `SupernetAccuracy` (kind `supernet`): the weights a candidate inherits from a trained supernet,
  BatchNorm re-estimated; one rung, no state.
- `PredictedAccuracy` (the `predictor` section, off by default): either of the above with a free
  rung 0 in front, a regressor fitted on the search's own results (`mnas.search.predictor`).
- `mnas.search.nb201.TableAccuracy`: a lookup in the NAS-Bench-201 table (benchmarks and tests
  hand it to the loop; it needs no data and trains nothing).

A model never raises for a bad candidate: `RungResult.error` says what went wrong, so the search
goes on. `parallel` says whether candidates may be scored in separate worker processes (training,
one thread each) or belong in the driver (a supernet, loaded once).
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from mnas.data import DatasetSplits, load_dataset
from mnas.errors import UserError
from mnas.search.config import DataConfig, PredictorConfig, SearchConfig
from mnas.search.predictor import Predictor
from mnas.space import SearchSpace
from mnas.train.engine import resolve_device
from mnas.train.proxy import TrainResult, proxy_rungs, train_rung
from mnas.train.settings import FitConfig, ProxyConfig, SupernetSettings

ERROR_CHARS = 500


@dataclass
class RungResult:
    """One rung of one candidate: held-out accuracy (None when it failed, with `error` saying why)
    and its cost (`budget`: the rung's size in the model's unit; `seconds`: wall time)."""

    accuracy: float | None
    error: str | None
    seconds: float
    budget: int
    worker: str = ""
    rung: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.accuracy is not None and math.isfinite(self.accuracy)


class AccuracyModel(ABC):
    """How accurate an architecture is, at what cost, at rung `rung` of the model's fidelities.

    An architecture is one of the search's space (`mnas.search.trial`): an `Architecture` in the
    MnasNet spaces."""

    kind: str
    phase: str  # what the progress display says while a candidate is scored
    parallel: bool = False  # may run in worker processes (one thread each)
    scores_any_architecture: bool = True  # False: only the space's own (a supernet, a table)
    needs_data: bool = True  # scores on the search's dataset (False: a table; the loop loads no data)
    #: The lowest rungs that are predictions, not measurements (free: they cost nothing). Successive
    #: halving decides them among the candidates that got a prediction; one the model cannot predict
    #: yet starts above them (`first_rung`).
    free_rungs: int = 0
    learns: bool = False  # `observe` wants the search's results (a predictor)

    def __init__(self, config: SearchConfig) -> None:
        self.config = config

    @property
    @abstractmethod
    def rungs(self) -> list[int]:
        """The fidelities, lowest first, in the model's own unit (training steps for the proxy)."""

    @property
    def unit(self) -> str:
        return "steps"

    @property
    def top(self) -> int:
        """The index of the top rung."""
        return len(self.rungs) - 1

    def phase_text(self, rung: int) -> str:
        """What the progress display says while a candidate is scored at `rung`."""
        if rung < self.free_rungs:
            return f"predicting rung {rung} (free)"
        return f"{self.phase} to rung {rung} ({self.rungs[rung]} {self.unit})"

    def trained_model(self, arch: Any, num_classes: int) -> Any:
        """`arch` with the weights this model scored it with, where it keeps any (a supernet's);
        None: the architecture is exported untrained."""
        return None

    def check(self, data: DatasetSplits | None, space: Any) -> None:  # noqa: B027 - optional
        """Everything the model needs before the first trial (one `UserError` line otherwise).
        `data`: the search's dataset (None where `needs_data` is False); `space`: the search's."""

    @abstractmethod
    def evaluate(self, arch: Any, rung: int, *, seed: int, state: Path | None = None) -> RungResult:
        """Score `arch` at `rung`. A model that `can_continue` keeps the candidate's checkpoint after
        each rung at `mnas.train.proxy.state_at(state, budget)` and continues from the previous
        rung's; the search resumes a trial from the one its last stored rung names."""

    def first_rung(self, arch: Any) -> int:
        """The rung a new candidate starts at: 0, or above the free rungs for one the model cannot
        predict yet."""
        return 0

    def observe(self, results: Sequence[tuple[Any, int, float]]) -> None:  # noqa: B027 - optional
        """Finished rungs (architecture, rung, accuracy) of the search's candidates, as the search
        tells them to its strategy (a batch at a time; all told ones again on a resume). Only
        models that `learn` are handed them."""

    def in_driver(self, rung: int) -> bool:
        """True: `rung` runs in the search's own process, never in a worker (it uses what the model
        learned there)."""
        return False

    @abstractmethod
    def describe(self) -> str:
        """One line for the report: what the accuracies are."""

    def can_continue(self) -> bool:
        """True when a higher rung continues from the lower one's state (it writes `state`)."""
        return False


class TrainedAccuracy(AccuracyModel):
    """The paper's proxy: stand-alone training on the training split, scored on the held-out split."""

    kind = "train"
    phase = "training"
    parallel = True

    @property
    def proxy(self) -> ProxyConfig:
        return self.config.proxy

    @property
    def rungs(self) -> list[int]:
        return proxy_rungs(self.proxy, dataset(self.config.data))

    @property
    def top(self) -> int:
        return len(self.proxy.steps) - 1 if self.proxy.steps is not None else 0  # without loading the data

    def check(self, data: DatasetSplits | None, space: Any) -> None:
        assert data is not None
        p = self.proxy
        if self.config.executor.name == "local":
            resolve_device(p.device)
            if p.threads is not None and p.threads > (os.cpu_count() or 1):
                raise UserError(f"proxy.threads {p.threads} is more than the {os.cpu_count()} cores here")
        if len(data.train) < p.batch_size:
            raise UserError(f"the training split has {len(data.train)} images, fewer than one proxy batch of "
                            f"{p.batch_size}; lower proxy.batch_size or raise data.train_subset")

    def can_continue(self) -> bool:
        return True

    def _result(self, result: TrainResult, start: float, rung: int) -> RungResult:
        accuracy = result.val_acc if result.ok and math.isfinite(result.val_acc) else None
        error = None if accuracy is not None else "accuracy: " + (
            result.status if not result.ok else f"error: came back as {result.val_acc}")[:ERROR_CHARS]
        return RungResult(accuracy, error, time.time() - start, self.rungs[rung], rung=rung)

    def evaluate(self, arch: Any, rung: int, *, seed: int, state: Path | None = None) -> RungResult:
        start = time.time()
        result = train_rung(arch, dataset(self.config.data), self.proxy, rung=rung, seed=seed, state=state)
        return self._result(result, start, rung)

    def describe(self) -> str:
        p = self.proxy
        rungs = self.rungs
        halving = (f", successive halving keeps the best {_fraction(p.keep)} of each rung (by reward)"
                   if len(rungs) > 1 else "")
        return (f"proxy training: {' -> '.join(map(str, rungs))} steps of {p.batch_size} images{halving}, "
                f"{p.optimizer} lr {p.lr if p.lr is not None else 'default'} (one cosine to zero at the top rung), "
                f"scored on {self.config.data.val_size} held-out training images")


class SupernetAccuracy(AccuracyModel):
    """The weights a candidate inherits from a supernet trained once for the whole space."""

    kind = "supernet"
    phase = "scoring"
    scores_any_architecture = False

    @property
    def rungs(self) -> list[int]:
        return [self.config.proxy.score_images]

    @property
    def unit(self) -> str:
        return "images"

    def check(self, data: DatasetSplits | None, space: Any) -> None:
        from mnas.supernet import load_supernet, supernet_path

        assert data is not None
        p = self.config.proxy
        if self.config.executor.name == "local":
            resolve_device(p.device)
        assert p.path is not None
        if not supernet_path(p.path).is_file() and p.train_if_missing:
            train_supernet_for(self.config, data)
        load_supernet(p.path, space=space, resolution=data.resolution, num_classes=data.num_classes)

    def evaluate(self, arch: Any, rung: int, *, seed: int, state: Path | None = None) -> RungResult:
        from mnas.supernet import score_one

        start = time.time()
        try:
            net, sd = _scorer(self.config.proxy.model_dump_json(), self.config.data.model_dump_json())
            accuracy: float | None = float(score_one(net, arch, sd))
            error = None if accuracy is not None and math.isfinite(accuracy) else f"accuracy: came back as {accuracy}"
        except Exception as exc:
            accuracy, error = None, "accuracy: " + short_error(exc)
        return RungResult(accuracy if error is None else None, error, time.time() - start, self.rungs[rung], rung=rung)

    def trained_model(self, arch: Any, num_classes: int) -> Any:
        from mnas.supernet import extract, load_supernet

        assert self.config.proxy.path is not None
        return extract(load_supernet(self.config.proxy.path)[0], arch).eval()

    def describe(self) -> str:
        p = self.config.proxy
        return (f"supernet {p.path} (weights inherited, BN re-estimated on {p.bn_batches} batches, "
                f"{p.score_images} held-out images)")


class PredictedAccuracy(AccuracyModel):
    """`inner` with a learned, free rung 0 in front (`mnas.search.predictor`): rung 0 predicts the
    candidate's accuracy from what this search measured so far; rung k >= 1 is `inner`'s rung k - 1."""

    kind = "predicted"
    learns = True
    free_rungs = 1

    def __init__(self, inner: AccuracyModel, settings: PredictorConfig, space: Any = None) -> None:
        super().__init__(inner.config)
        self.inner, self.settings = inner, settings
        self.phase = inner.phase
        self.parallel = inner.parallel  # its rungs; rung 0 runs in the driver (`in_driver`)
        self.needs_data = inner.needs_data
        self.scores_any_architecture = inner.scores_any_architecture
        self.predictor = Predictor(settings, inner.top + 1 if settings.fit_on == "top" else 1, space)

    @property
    def rungs(self) -> list[int]:
        return [0, *self.inner.rungs]

    @property
    def unit(self) -> str:
        return self.inner.unit

    @property
    def top(self) -> int:
        return self.inner.top + 1

    def can_continue(self) -> bool:
        return self.inner.can_continue()

    def in_driver(self, rung: int) -> bool:
        return rung == 0 or self.inner.in_driver(rung - 1)

    def check(self, data: DatasetSplits | None, space: Any) -> None:
        self.predictor.space = space
        self.inner.check(data, space)

    def trained_model(self, arch: Any, num_classes: int) -> Any:
        return self.inner.trained_model(arch, num_classes)

    def first_rung(self, arch: Any) -> int:
        return 0 if self.predictor.ready and self.predictor.tokens(arch) is not None else 1

    def observe(self, results: Sequence[tuple[Any, int, float]]) -> None:
        self.predictor.observe(results)

    def evaluate(self, arch: Any, rung: int, *, seed: int, state: Path | None = None) -> RungResult:
        if rung > 0:
            result = self.inner.evaluate(arch, rung - 1, seed=seed, state=state)
            result.rung = rung
            return result
        start = time.time()
        value = self.predictor.predict(arch)
        if value is None:  # a worker's copy, or a candidate `first_rung` sends above rung 0
            why = "it has not learned from enough results" if not self.predictor.ready else "not in its space"
            return RungResult(None, f"accuracy: no prediction for {arch.id} ({why})", time.time() - start, 0)
        return RungResult(value, None, time.time() - start, 0)

    def describe(self) -> str:
        s = self.settings
        tau, n = self.predictor.quality()
        rung = "top" if s.fit_on == "top" else "first trained"
        quality = (f"prediction vs trained accuracy: Kendall tau {tau:.2f} over the {n} candidates trained after "
                   "a prediction (promoted ones only)" if tau is not None else
                   "its Kendall tau against the trained accuracy: the 'rung 0 vs rung 1' line of the report")
        return (f"{self.inner.describe()}; before it a learned rung 0: ridge regression (alpha {s.alpha:g}) on the "
                f"one-hot decisions, refitted before each batch on this search's accuracies at the {rung} rung once "
                f"{s.min_results} candidates have one, predicts each new candidate for free, and successive halving "
                f"trains only the best {_fraction(self.config.proxy.keep)} of the predicted; {quality}")


MODELS: dict[str, Callable[[SearchConfig], AccuracyModel]] = {
    TrainedAccuracy.kind: TrainedAccuracy,
    SupernetAccuracy.kind: SupernetAccuracy,
}


def make_accuracy_model(config: SearchConfig) -> AccuracyModel:
    """The accuracy model the config's `proxy.kind` names: the one place that reads the kind;
    behind the learned rung 0 of the `predictor` section where the config has one."""
    try:
        model = MODELS[config.proxy.kind](config)
    except KeyError:
        raise UserError(f"proxy.kind {config.proxy.kind!r} is unknown; choose one of: {', '.join(MODELS)}") from None
    return with_predictor(model, config)


def with_predictor(model: AccuracyModel, config: SearchConfig) -> AccuracyModel:
    """`model` behind the learned rung 0 of the config's `predictor` section, where it has one."""
    return PredictedAccuracy(model, config.predictor) if config.predictor is not None else model


def short_error(exc: BaseException) -> str:
    """One line of at most ERROR_CHARS characters, for the store and the progress display."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def _fraction(keep: float) -> str:
    n = round(1 / keep)
    return {2: "half", 3: "third", 4: "quarter"}.get(n, f"1/{n}")


# -- per-process resources, built once ---------------------------------------------------------
@lru_cache(maxsize=4)
def _dataset(data_json: str) -> DatasetSplits:
    data = DataConfig.model_validate_json(data_json)
    return load_dataset(data.dataset, data_root=data.data_root, val_size=data.val_size,
                        train_subset=data.train_subset, seed=0)


def dataset(data: DataConfig) -> DatasetSplits:
    """The search's dataset and its one fixed held-out split, loaded once per process."""
    return _dataset(data.model_dump_json())


@lru_cache(maxsize=2)
def _scorer(proxy_json: str, data_json: str) -> tuple[Any, Any]:
    """The supernet and its scoring data (BN batches, held-out images), loaded once per process."""
    from mnas.supernet import load_supernet, scoring_data

    proxy = ProxyConfig.model_validate_json(proxy_json)
    data = _dataset(data_json)
    assert proxy.path is not None
    device = resolve_device(proxy.device)
    net, _ = load_supernet(proxy.path, resolution=data.resolution, num_classes=data.num_classes, device=device)
    sd = scoring_data(data, bn_batches=proxy.bn_batches, images=proxy.score_images, device=device)
    return net, sd


def train_supernet_for(config: SearchConfig, data: DatasetSplits) -> None:
    """`proxy.train_if_missing`: the search's supernet, trained with the proxy's epochs and batch
    size on the search's data (the recipe for the resolution: `recipe` left to `run_recipe`),
    before the first trial."""
    from mnas.supernet.fit import fit_supernet

    p = config.proxy
    assert p.path is not None
    fit_config = FitConfig(arch_name=f"supernet:{config.space}", data=config.data.dataset,
                           data_root=config.data.data_root, epochs=max(1, math.ceil(p.epochs)),
                           batch_size=p.batch_size, train_subset=config.data.train_subset,
                           val_size=config.data.val_size, seed=config.seed, device=p.device,
                           # each epoch's largest path scored as the search will score
                           supernet=SupernetSettings(rule=p.rule, eval_bn_batches=p.bn_batches))
    fit_supernet(SearchSpace.load(config.space), data, fit_config, p.path, progress=True,
                 resume=(Path(p.path) / "checkpoint.pt").is_file())


@lru_cache(maxsize=4)
def _model(config_json: str) -> AccuracyModel:
    return make_accuracy_model(SearchConfig.model_validate_json(config_json))


def accuracy_model(config: SearchConfig) -> AccuracyModel:
    """The config's accuracy model, built once per process (workers rebuild it from the config)."""
    return _model(config.model_dump_json())
