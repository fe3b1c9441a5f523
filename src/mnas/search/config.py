"""The search configuration: one YAML file, validated by pydantic models that forbid unknown keys.

The `proxy` section is the training side's own settings model (`mnas.train.settings.ProxyConfig`),
used here as a section: the trainer never imports the search.

A typo in a key or a bad value must stop the run before any trial is spent, with one line that
names the file and the key's path in it (``quick.yaml: reward.target_ms: Input should be greater
than 0``), so every section is a strict model and `load_config` turns pydantic's errors into a
`UserError`.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mnas import zoo
from mnas.arch_strings import parse_arch
from mnas.architecture import check_resolution
from mnas.errors import UserError
from mnas.latency.backends.base import get_backend
from mnas.latency.backends.registry import backend_names
from mnas.latency.measure.measuring import cores
from mnas.latency.measure.protocol import DEFAULT_REFERENCE, MAX_PROCESSES, PROCESSES
from mnas.latency.model import LatencyModel, latency_model, parse_multiple
from mnas.latency.target import MAX_BATCH, MAX_CLASSES, Target
from mnas.reward import Reward
from mnas.run_options import DEFAULT_DATASET, DEFAULT_VAL_SIZE
from mnas.textfiles import load_yaml, read_text
from mnas.train.settings import ProxyConfig, StrictModel

__all__ = [
    "BudgetConfig",
    "DataConfig",
    "ExecutorConfig",
    "LatencyConfig",
    "PredictorConfig",
    "ReferencesConfig",
    "RewardConfig",
    "SearchConfig",
    "StrategyConfig",
    "load_config",
    "parse_config",
]


_TARGET_DEFAULTS = Target()  # one default per setting: the latency target's own


class DataConfig(StrictModel):
    """Which dataset the proxy trains on, and how much of it."""

    dataset: str = DEFAULT_DATASET
    data_root: str | None = None  # None: $MNAS_DATA, else ~/.cache/mnas/data
    train_subset: int | None = Field(default=None, gt=0)
    val_size: float | int = DEFAULT_VAL_SIZE  # a fraction of train (0 < f < 1) or a count of images

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, value: float | int) -> float | int:
        if isinstance(value, float) and not value.is_integer() and not 0 < value < 1:
            raise ValueError("a fraction must lie between 0 and 1 (or give a count of images)")
        if value <= 0:
            raise ValueError("Input should be greater than 0")
        return int(value) if isinstance(value, float) and value >= 1 else value


class ReferencesConfig(StrictModel):
    """Hand-designed networks trained in every run with the same proxy, at its top rung, and drawn
    beside the front: does the search beat them? Zoo names, scaled to the middle of the space's
    width range. The first is trained with `seeds` seeds: their spread is the run's noise floor."""

    models: list[str] = Field(default_factory=lambda: ["mobilenet_v2", "mnasnet_a1"], max_length=8)
    seeds: int = Field(default=2, ge=1, le=8)

    @field_validator("models", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                zoo.entry(name)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        if len(set(value)) < len(value):
            raise ValueError(f"a reference is named twice in {value}")
        return value


MAX_TARGET_NAME = 64  # a latency target's name labels plots, tables and the store


class LatencyConfig(StrictModel):
    """One latency target: measured for real (against a reference network, through the latency
    cache) or predicted by a LUT. A search may name several; the first is the reward's."""

    name: str | None = None  # its label in the store and the report (default: derived from the target)
    backend: str = Field(default_factory=lambda: _TARGET_DEFAULTS.backend)
    threads: int = Field(default=1, gt=0)
    resolution: int | None = Field(default=None, gt=0)  # None: the dataset's resolution
    batch: int = Field(default=1, gt=0, le=MAX_BATCH)
    num_classes: int | None = Field(default=None, gt=0, le=MAX_CLASSES)  # None: the dataset's class count
    precision: str = "fp32"
    device: str = "cpu"
    serial: str | None = None  # android: the phone's adb serial
    benchmark_binary: str | None = None  # android: TFLite benchmark_model built for the phone
    processes: int = Field(default=PROCESSES, gt=0, le=MAX_PROCESSES)
    lut: str | None = None  # a lookup table file: predict instead of measuring
    reference: str = "mobilenet_v2"  # the network every measurement is timed against (a zoo name or arch string)
    host: str | None = None  # Ray: the node the target device sits on (default: the driver's)
    # The reference's latency every ms figure of the run is scaled with (ms = relative x this):
    # pinned when the search starts and reused by a resume, so a reference measured again in
    # between (another cache, --fresh) never mixes two scales in one run. Leave it out.
    reference_ms: float | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _short_name(cls, value: str | None) -> str | None:
        if value is not None and len(value) > MAX_TARGET_NAME:
            raise ValueError(f"a target name of {len(value):,} characters is too long; use at most {MAX_TARGET_NAME}")
        if value is not None and not value.isprintable():
            raise ValueError("a target name must be one printable line (no newlines or control characters)")
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: int | None) -> int | None:
        try:  # the one bound on an input size (mnas.architecture), as for --resolution
            return None if value is None else check_resolution(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: str) -> str:
        if value.strip().lower() == "none":
            raise ValueError("a search times every candidate against a reference network; 'none' is not possible "
                             f"here: give a zoo name (e.g. {DEFAULT_REFERENCE})")
        try:  # a zoo name, or an architecture string (as the latency commands' --reference)
            parse_arch(value) if zoo.is_arch_text(value) else zoo.entry(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value

    def check_here(self) -> None:
        """The checks that depend on this machine (run where the search starts): a target measured
        here (no table, no Ray host, a local backend) gets at most one thread per core, as the
        latency commands' --threads."""
        if self.lut is not None or self.host is not None:
            return
        if self.backend in backend_names() and get_backend(self.backend).local:
            have = len(cores())
            if self.threads > have:
                raise UserError(f"threads: {self.threads} is more than the {have} cores here; use at most {have}")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.lut:
            return f"lut:{Path(self.lut).stem}"
        return f"{self.backend}-{self.threads}t" + (f"-{self.device}" if self.device != "cpu" else "")

    @property
    def measured(self) -> bool:
        """True: timed on the target's machine (a measurement); False: a table lookup, anywhere."""
        return self.lut is None

    def to_model(self) -> LatencyModel:
        """The `LatencyModel` of this target: its table, or measurements against `reference`."""
        return latency_model(self.to_target(), lut=self.lut, processes=self.processes, reference=self.reference,
                             reference_ms=self.reference_ms)

    def to_target(self) -> Target:
        """The `Target` this section describes (resolution and classes must be resolved first)."""
        if self.resolution is None or self.num_classes is None:
            raise UserError("latency.resolution / num_classes are unresolved; the search fills them in from the "
                            "dataset (mnas.search.prepare)")
        return Target(backend=self.backend, threads=self.threads, resolution=self.resolution, batch=self.batch,
                      num_classes=self.num_classes, precision=self.precision, device=self.device,
                      serial=self.serial, benchmark_binary=self.benchmark_binary)


MAX_TARGET_MS = 1e6  # a latency target of over 16 minutes is a typo


class RewardConfig(StrictModel):
    """The MnasNet reward ACC x (LAT/T)^w: a target T and exponents, or a named preset.

    T is `target_ms`, or `target` as a multiple of a reference network's latency on the first
    latency target ("1.0 x mobilenet_v2", as the paper put T near MobileNetV2's latency); the
    search resolves it to `target_ms` once and stores both."""

    target_ms: float | None = Field(default=None, gt=0, le=MAX_TARGET_MS)
    target: str | None = None
    # The exponents: 0 (latency ignored) down to -1 (the hard preset's beta); the paper uses -0.07.
    alpha: float | None = Field(default=None, ge=-1, le=0)  # None: the soft preset's
    beta: float | None = Field(default=None, ge=-1, le=0)
    preset: Literal["soft", "hard"] | None = None

    @model_validator(mode="after")
    def _checks(self) -> RewardConfig:
        if self.preset is not None and (self.alpha is not None or self.beta is not None):
            raise ValueError("give either a preset or alpha/beta, not both")
        if self.target is None and self.target_ms is None:
            raise ValueError("give target_ms (e.g. 75) or target as a multiple (e.g. '1.0 x mobilenet_v2')")
        if self.target is not None:
            try:
                factor, name = parse_multiple(self.target)
                zoo.entry(name)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return self

    def to_reward(self) -> Reward:
        if self.target_ms is None:
            raise UserError(f"reward.target {self.target!r} is not resolved to milliseconds yet (mnas.search.prepare "
                            "does it against the first latency target)")
        if self.preset:
            return Reward.preset(self.preset, self.target_ms)
        soft = Reward(self.target_ms)
        return Reward(self.target_ms, soft.alpha if self.alpha is None else self.alpha,
                      soft.beta if self.beta is None else self.beta)


class StrategyConfig(StrictModel):
    """The search strategy by name, with its knobs passed through to its constructor."""

    name: str = "tpe"  # the winner of benchmarks/search_strategies.py (docs/benchmarks/search.md)
    knobs: dict[str, Any] = Field(default_factory=dict)


class BudgetConfig(StrictModel):
    """How many trials, how many per `ask`, and an optional wall-clock limit."""

    trials: int = Field(default=100, gt=0)
    batch_size: int = Field(default=8, gt=0)
    max_seconds: float | None = Field(default=None, gt=0)


class ExecutorConfig(StrictModel):
    """Where trials run: in this process, or as tasks on a Ray cluster."""

    name: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None with name=ray: start a local Ray instance
    gpus_per_trial: float = Field(default=1.0, ge=0)  # used only when the cluster has GPUs
    cpus_per_trial: float = Field(default=1.0, gt=0)
    max_retries: int = Field(default=1, ge=0)  # retries of a trial whose worker died

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class PredictorConfig(StrictModel):
    """A learned, free rung 0 in front of the proxy (`mnas.search.predictor`; off unless the YAML
    has a `predictor` section, `{}` for these defaults): once `min_results` of the search's
    candidates have a trained accuracy at the `fit_on` rung (the proxy's first, or its top), a
    ridge regression (penalty `alpha`) on their one-hot decisions, refitted before every batch,
    predicts each new candidate's accuracy, and successive halving trains only the best-predicted
    (`proxy.keep` of them, by reward)."""

    min_results: int = Field(default=16, ge=4, le=100_000)
    fit_on: Literal["first", "top"] = "first"
    alpha: float = Field(default=1.0, gt=0, le=1e6)


class SearchConfig(StrictModel):
    """The whole search YAML."""

    space: str = "mnasnet_cifar"  # a space name or a YAML/JSON file
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    latency: list[LatencyConfig] = Field(default_factory=lambda: [LatencyConfig()], min_length=1)
    reward: RewardConfig
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    references: ReferencesConfig = Field(default_factory=ReferencesConfig)
    predictor: PredictorConfig | None = None  # None: no learned rung 0

    @field_validator("latency", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("latency")
    @classmethod
    def _distinct_names(cls, value: list[LatencyConfig]) -> list[LatencyConfig]:
        labels = [t.label for t in value]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"two targets are both called {twice[0]!r}; give each a distinct name")
        return value

    @property
    def primary(self) -> LatencyConfig:
        """The first latency target: the one the reward uses."""
        return self.latency[0]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys a model accepts at `loc` (the path of the unknown key's parent)."""
    for part in loc:
        if isinstance(part, int):  # an item of a list of models
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return list(model.model_fields)


def _format_errors(source: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(SearchConfig, loc[:-1])
            msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{path}: {msg}")
    return f"{source}: " + "; ".join(parts)


def parse_config(data: Any, source: str = "config", base_dir: Path | None = None) -> SearchConfig:
    """Validate a mapping as a `SearchConfig`; relative file paths resolve against `base_dir`."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: the file must hold a mapping of keys (space, data, proxy, ...)")
    problem = _number_problem(SearchConfig, data, ())
    if problem:
        raise UserError(f"{source}: {problem}")
    try:
        config = SearchConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_errors(source, exc)) from None
    from mnas.strategies import check_knobs, knobs_model  # lazy: the strategies bring torch (PPO's controller)

    try:
        problem = _number_problem(knobs_model(config.strategy.name), config.strategy.knobs, ("strategy", "knobs"))
        if problem:
            raise UserError(problem)
        check_knobs(config.strategy.name, config.strategy.knobs)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    return config


def _looks_like_file(text: str) -> bool:
    return "/" in text or text.endswith((".yaml", ".yml", ".json"))


def _resolve_paths(config: SearchConfig, base_dir: Path) -> SearchConfig:
    def resolve(text: str | None) -> str | None:
        if text is None:
            return None
        path = Path(text).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())

    updates: dict[str, Any] = {}
    if _looks_like_file(config.space):
        updates["space"] = resolve(config.space)
    data = config.data.model_copy(update={"data_root": resolve(config.data.data_root)})
    proxy = config.proxy.model_copy(update={"path": resolve(config.proxy.path)})
    latency = [t.model_copy(update={"lut": resolve(t.lut), "benchmark_binary": resolve(t.benchmark_binary)})
               for t in config.latency]
    return config.model_copy(update={**updates, "data": data, "proxy": proxy, "latency": latency})


def load_config(path: str | Path) -> SearchConfig:
    """Read and validate a search YAML; any problem is a one-line `UserError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    data = load_yaml(read_text(path, "config file"), str(path))  # UTF-8, no key twice
    reward = data.get("reward") if isinstance(data, dict) else None
    if isinstance(reward, dict) and reward.get("target") is not None and reward.get("target_ms") is not None:
        # (a stored config holds both: the target and what it resolved to; a file gives one)
        raise UserError(f"{path}: reward: give target_ms or target, not both ({reward['target_ms']!r} ms and "
                        f"{reward['target']!r} contradict each other)")
    config = parse_config(data, source=str(path), base_dir=path.parent.resolve())
    for i, t in enumerate(config.latency):
        try:
            t.check_here()
        except UserError as exc:
            where = "latency" if len(config.latency) == 1 and not isinstance(data.get("latency"), list) else f"latency.{i}"
            raise UserError(f"{path}: {where}.{exc}") from None
    return config


# ---- numbers: one rule for every number a config file holds -------------------------------------------
# pydantic's lax mode reads `true` as 1 and "8" as 8, and floats accept .inf and .nan: a boolean
# where a number goes would train with batch 1, an infinite epoch count fails every trial. Before
# validation, every value whose field takes a number (and not a boolean or text) is checked to be
# one, and every number anywhere in the file to be finite. 1.0 stays a valid int (pydantic checks
# it is whole) and an int a valid float.

def _kinds(annotation: Any) -> tuple[set[type], list[type[BaseModel]], Any]:
    """(plain types, models, the item annotation of a list) an annotation accepts."""
    plain: set[type] = set()
    models: list[type[BaseModel]] = []
    item: Any = None
    stack = [annotation]
    while stack:
        a = stack.pop()
        origin = typing.get_origin(a)
        if origin is typing.Annotated:
            stack.append(typing.get_args(a)[0])
        elif origin in (typing.Union, types.UnionType):
            stack.extend(typing.get_args(a))
        elif origin is list:
            plain.add(list)
            item = typing.get_args(a)[0] if typing.get_args(a) else Any
        elif origin is typing.Literal:
            plain.update(type(v) for v in typing.get_args(a))
        elif origin is not None:
            plain.add(origin)
        elif isinstance(a, type) and issubclass(a, BaseModel):
            models.append(a)
        elif isinstance(a, type):
            plain.add(a)
        else:
            plain.add(object)  # Any
    return plain, models, item


def _value_problem(annotation: Any, value: Any, loc: tuple[Any, ...]) -> str | None:
    path = ".".join(map(str, loc))
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path}: {value} is not a finite number; give a number (or leave the key out for the default)"
    plain, models, item = _kinds(annotation)
    numeric = bool(plain & {int, float}) and object not in plain
    if numeric and isinstance(value, bool) and bool not in plain:
        return f"{path}: {str(value).lower()} is a boolean, not a number; give a number"
    if numeric and isinstance(value, str) and str not in plain:
        return f"{path}: {value!r} is text, not a number; write the number without quotes"
    if isinstance(value, dict):
        if not models and isinstance(item, type) and issubclass(item, BaseModel):
            models = [item]  # one section written where a list of them goes (latency)
        if models:
            return _number_problem(models[0], value, loc)
        return next((p for k, v in value.items() if (p := _value_problem(Any, v, (*loc, k)))), None)
    if isinstance(value, list):
        inner = item if item is not None else (models[0] if models else Any)
        return next((p for i, v in enumerate(value) if (p := _value_problem(inner, v, (*loc, i)))), None)
    return None


def _number_problem(model: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> str | None:
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        field = model.model_fields.get(str(key))
        problem = _value_problem(field.annotation if field is not None else Any, value, (*loc, key))
        if problem:
            return problem
    return None
