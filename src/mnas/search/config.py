"""The search configuration: one YAML file, validated by pydantic models that forbid unknown keys.

The `proxy` section is the training side's own settings model (`mnas.train.settings.ProxyConfig`),
used here as a section: the trainer never imports the search.

A typo in a key or a bad value must stop the run before any trial is spent, with one line that
names the file and the key's path in it (``quick.yaml: reward.target_ms: Input should be greater
than 0``), so every section is a strict model and `load_config` turns pydantic's errors into a
`UserError`.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mnas import zoo
from mnas.errors import UserError
from mnas.latency.model import LatencyModel, latency_model, parse_multiple
from mnas.latency.target import Target
from mnas.reward import Reward
from mnas.train.settings import ProxyConfig, StrictModel

__all__ = [
    "BudgetConfig",
    "DataConfig",
    "ExecutorConfig",
    "LatencyConfig",
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

    dataset: str = "cifar10"
    data_root: str | None = None  # None: $MNAS_DATA, else ~/.cache/mnas/data
    train_subset: int | None = Field(default=None, gt=0)
    val_size: float | int = 0.1  # a fraction of train (0 < f < 1) or a count of images

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
    batch: int = Field(default=1, gt=0)
    num_classes: int | None = Field(default=None, gt=0)  # None: the dataset's class count
    precision: str = "fp32"
    device: str = "cpu"
    serial: str | None = None  # android: the phone's adb serial
    benchmark_binary: str | None = None  # android: TFLite benchmark_model built for the phone
    processes: int = Field(default=3, gt=0)
    lut: str | None = None  # a lookup table file: predict instead of measuring
    reference: str = "mobilenet_v2"  # the network every measurement is timed against (a zoo name)
    host: str | None = None  # Ray: the node the target device sits on (default: the driver's)

    @field_validator("name")
    @classmethod
    def _short_name(cls, value: str | None) -> str | None:
        if value is not None and len(value) > MAX_TARGET_NAME:
            raise ValueError(f"a target name of {len(value):,} characters is too long; use at most {MAX_TARGET_NAME}")
        if value is not None and not value.isprintable():
            raise ValueError("a target name must be one printable line (no newlines or control characters)")
        return value

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
        return latency_model(self.to_target(), lut=self.lut, processes=self.processes, reference=self.reference)

    def to_target(self) -> Target:
        """The `Target` this section describes (resolution and classes must be resolved first)."""
        if self.resolution is None or self.num_classes is None:
            raise UserError("latency.resolution / num_classes are unresolved; the search fills them in from the "
                            "dataset (mnas.search.prepare)")
        return Target(backend=self.backend, threads=self.threads, resolution=self.resolution, batch=self.batch,
                      num_classes=self.num_classes, precision=self.precision, device=self.device,
                      serial=self.serial, benchmark_binary=self.benchmark_binary)


class RewardConfig(StrictModel):
    """The MnasNet reward ACC x (LAT/T)^w: a target T and exponents, or a named preset.

    T is `target_ms`, or `target` as a multiple of a reference network's latency on the first
    latency target ("1.0 x mobilenet_v2", as the paper put T near MobileNetV2's latency); the
    search resolves it to `target_ms` once and stores both."""

    target_ms: float | None = Field(default=None, gt=0)
    target: str | None = None
    alpha: float | None = Field(default=None, le=0)  # None: the soft preset's
    beta: float | None = Field(default=None, le=0)
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
    try:
        config = SearchConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_errors(source, exc)) from None
    from mnas.strategies import check_knobs  # lazy: the strategies bring torch (PPO's controller)

    try:
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
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    return parse_config(data, source=str(path), base_dir=path.parent.resolve())
