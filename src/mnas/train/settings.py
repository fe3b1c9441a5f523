"""The training configs, strict pydantic models: `FitConfig` (full training, `mnas train`, and
supernet training, `mnas supernet train`, with its `SupernetSettings`) and `ProxyConfig` (the short proxy training a search gives
each candidate).

They belong to the training side (`mnas.train` reads them; `mnas.train.recipes` turns each into a
`Recipe` once) and `ProxyConfig` is the `proxy` section of the search YAML (`mnas.search.config`
uses this model as it is), so the trainer never imports the search. Every setting lives here once
with its default; the defaults shared with the CLI and the device check come from
`mnas.run_options` (no torch here either).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mnas.errors import UserError
from mnas.run_options import (
    DEFAULT_BN_BATCHES,
    DEFAULT_DATASET,
    DEFAULT_DEVICE,
    DEFAULT_EPOCHS,
    DEFAULT_SCORE_IMAGES,
    DEFAULT_SEED,
    DEFAULT_SKELETON,
    DEFAULT_VAL_SIZE,
    MAX_NUM_RANDOM,
    SUPERNET_RULES,
    check_device,
    check_seed,
)

MAX_PROXY_STEPS = 1_000_000  # a proxy rung above this is a typo, not a budget


class StrictModel(BaseModel):
    """A settings model that forbids unknown keys and validates its defaults."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def _valid_device(value: str) -> str:
    try:
        return check_device(value)
    except UserError as exc:
        raise ValueError(str(exc)) from None


class SupernetSettings(StrictModel):
    """Supernet training (`mnas.supernet.fit`): how paths are sampled per step, how each epoch's
    largest path is scored, and the space (its dict; `fit_supernet` fills it in, `--resume` reads it)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    rule: str = "sandwich"
    num_random: int = 2
    eval_bn_batches: int = 4
    space: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SupernetSettings:
        # UserError is not a ValueError: pydantic lets it through as the one line the CLI shows
        if self.rule not in SUPERNET_RULES:
            raise UserError(f"unknown sampling rule {self.rule!r}; choose one of {', '.join(SUPERNET_RULES)}")
        if not 0 <= self.num_random <= MAX_NUM_RANDOM or self.eval_bn_batches < 1:
            raise UserError(f"num_random must be 0 to {MAX_NUM_RANDOM} (got {self.num_random}) and eval_bn_batches >= 1")
        return self


#: Where checkpoints written before `FitConfig.supernet` kept the supernet settings.
_LEGACY_EXTRA = "extra"


class FitConfig(StrictModel):
    """A full training run (`mnas.train.fit`, `mnas.supernet.fit`): everything needed to rebuild
    it; stored in the checkpoint under "config"."""

    arch_name: str
    data: str = DEFAULT_DATASET
    data_root: str | None = None
    epochs: int = DEFAULT_EPOCHS
    recipe: str | None = None  # a name in mnas.train.recipes.RECIPES; None: by resolution (recipe_for)
    batch_size: int | None = None  # None: the recipe's
    train_subset: int | None = None
    val_size: float | int = DEFAULT_VAL_SIZE
    seed: int = DEFAULT_SEED
    skeleton: str = DEFAULT_SKELETON
    width_mult: float = 1.0
    device: str = DEFAULT_DEVICE
    compile: bool = False
    supernet: SupernetSettings | None = None  # supernet training only (mnas supernet train, train_if_missing)

    @model_validator(mode="before")
    @classmethod
    def _legacy_extra(cls, data: Any) -> Any:
        """A checkpoint written before `supernet` kept its settings in `extra` (rule, num_random,
        eval_bn_batches, space; {} for `mnas train`): read them as `supernet`."""
        if isinstance(data, dict) and _LEGACY_EXTRA in data:
            data = dict(data)
            extra = data.pop(_LEGACY_EXTRA) or {}
            if extra and data.get("supernet") is None and isinstance(extra, dict):
                data["supernet"] = {k: v for k, v in extra.items() if k in SupernetSettings.model_fields}
        return data

    @classmethod
    def from_saved(cls, saved: dict[str, Any], source: str = "the checkpoint") -> FitConfig:
        """The config a checkpoint records (its "config", maybe with --resume's changes applied),
        old ones included; keys that are no setting are left out. One that does not validate is a
        damaged checkpoint: one line naming `source`."""
        try:
            return cls.model_validate({k: v for k, v in saved.items() if k in cls.model_fields or k == _LEGACY_EXTRA})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "config"
            raise UserError(f"{source} records a config that does not validate ({where}: {first['msg']}); it is "
                            "damaged: start the run again with --out DIR") from None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return _valid_device(value)

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int) -> int:
        check_seed(value, "seed")  # a UserError: pydantic lets it through as the one line the CLI shows
        return value


class ProxyConfig(StrictModel):
    """The short proxy training that gives each candidate its accuracy (`mnas.train.train_proxy`).

    Every setting of the proxy lives here, once, with its default."""

    # The budget of kind train, in training steps of `batch_size` images: one value, or the rungs of
    # successive halving (e.g. [30, 90, 240]): every candidate trains to the first rung, and the
    # best `keep` of each rung (by reward) continue from their checkpoint to the next one
    # (Optuna's SuccessiveHalvingPruner decides). None: `epochs` of the training split, one rung.
    steps: list[int] | None = None
    keep: float = Field(default=1 / 3, gt=0, lt=1)  # the share of a rung promoted to the next
    workers: int | None = Field(default=None, gt=0, le=256)  # training processes at once; None: cores / threads
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=128, gt=0, le=65536)
    optimizer: Literal["sgd", "rmsprop", "adamw"] = "sgd"
    lr: float | None = Field(default=None, gt=0)  # None: 0.2 x batch/256 (sgd), 0.016 (rmsprop), 0.002 (adamw)
    schedule: Literal["cosine", "mnasnet", "constant"] = "cosine"
    warmup: float | None = Field(default=None, ge=0, lt=1)  # fraction of the steps; None: 5% cosine, 10% mnasnet
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=4e-5, ge=0)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    bn_momentum: float = Field(default=0.1, gt=0, le=1)
    bn_eps: float = Field(default=1e-3, gt=0)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    stable_init: bool = True  # zero classifier and last BN of residual layers (short runs, few classes)
    skeleton: Literal["auto", "cifar", "imagenet"] = "auto"
    time_budget_s: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    eval_batch_size: int | None = Field(default=None, gt=0)
    device: str = DEFAULT_DEVICE  # auto, cpu, cuda or cuda:N
    threads: int | None = Field(default=None, gt=0)  # torch CPU threads for training (None: torch's default)
    # Where accuracy comes from: "train" = the paper's per-candidate proxy training (the settings
    # above); "supernet" = the weights a candidate inherits from a supernet (mnas supernet train).
    kind: Literal["train", "supernet"] = "train"
    path: str | None = None  # supernet: its folder (relative to the config file)
    train_if_missing: bool = False  # supernet: train it at `path` first (epochs/batch_size above) if absent
    rule: Literal["sandwich", "spos"] = "sandwich"  # supernet training's path sampling
    bn_batches: int = Field(default=DEFAULT_BN_BATCHES, gt=0)  # supernet: training batches that re-estimate BN per candidate
    score_images: int = Field(default=DEFAULT_SCORE_IMAGES, gt=0)  # supernet: held-out images a candidate is scored on
    amp: bool | None = None  # bf16 autocast; None: on for CUDA
    channels_last: bool | None = None  # None: on (CPU and CUDA)
    fused: bool | None = None  # fused optimizer kernels; None: on for CUDA
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return _valid_device(value)

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("steps")
    @classmethod
    def _rungs(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one rung of training steps, e.g. [30, 90, 240]")
        if value[0] < 1:
            raise ValueError(f"a rung of {value[0]} steps trains nothing; give positive step counts, e.g. [30, 90, 240]")
        for low, high in zip(value, value[1:], strict=False):
            if high <= low:
                raise ValueError(f"rungs must increase: {high} comes after {low} in {value}")
        if value[-1] > MAX_PROXY_STEPS:
            raise ValueError(f"a top rung of {value[-1]} steps is above the limit of {MAX_PROXY_STEPS}")
        return value

    @field_validator("keep")
    @classmethod
    def _keep(cls, value: float) -> float:
        eta = 1 / value
        if abs(eta - round(eta)) > 0.02 * eta:
            raise ValueError(f"keep {value} is not 1/n: successive halving keeps the best half, third, quarter, "
                             "... of a rung; use 0.5, 0.333 or 0.25")
        return value

    @property
    def reduction_factor(self) -> int:
        """1 / keep: a rung's candidates per promotion (Optuna's reduction_factor)."""
        return round(1 / self.keep)

    @model_validator(mode="after")
    def _supernet_path(self) -> ProxyConfig:
        if self.kind == "supernet" and not self.path:
            raise ValueError("kind supernet needs path: the folder of a supernet (mnas supernet train --out DIR)")
        if self.kind == "train" and (self.path or self.train_if_missing):
            raise ValueError("path and train_if_missing apply to kind: supernet only")
        if self.kind != "train" and self.steps is not None and len(self.steps) > 1:
            raise ValueError(f"rungs of training steps apply to kind: train only (kind {self.kind} scores once)")
        if self.steps is not None and self.max_steps is not None and self.steps[-1] > self.max_steps:
            raise ValueError(f"the top rung of {self.steps[-1]} steps is above the budget max_steps {self.max_steps}; "
                             "lower the rung or raise max_steps")
        return self
