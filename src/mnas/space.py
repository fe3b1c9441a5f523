"""The MnasNet factorized hierarchical search space, as data.

A `SearchSpace` is a skeleton (base widths, depths, strides, stem, head) plus per-block choice
lists, all plain data, so another space is a YAML file rather than new code. It maps
architectures (`mnas.architecture`) to the controller's token sequences and back, samples them,
and lists the layer configurations it can produce.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mnas.architecture import (
    MAX_BLOCKS,
    MAX_EXPAND,
    MAX_FILTERS,
    MAX_HEAD_FILTERS,
    MAX_KERNEL,
    MAX_LAYERS_PER_BLOCK,
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    SKIPS,
    Architecture,
    BlockSpec,
    LayerConfig,
    check_resolution,
    conv_out_size,
    plain_number,
    real_number,
    round_filters,
)
from mnas.errors import UserError
from mnas.textfiles import load_yaml, read_text


@dataclass(frozen=True)
class OpChoice:
    """One ConvOp choice: an op with its expansion ratio (MBConv3 and MBConv6 are two choices)."""

    op: str
    expand: float = 1

    @property
    def label(self) -> str:
        return BlockSpec(self.op, self.expand, 3, 0, "none", 8, 1, 1).op_label


DECISIONS = ("op", "kernel", "se_ratio", "skip", "filters", "layers")


@dataclass(frozen=True)
class SearchSpace:
    """Skeleton + per-block choices. Every field is data; see `SearchSpace.from_dict`."""

    name: str
    base_filters: tuple[int, ...]
    base_layers: tuple[int, ...]
    strides: tuple[int, ...]
    ops: tuple[OpChoice, ...]
    kernels: tuple[int, ...]
    se_ratios: tuple[float, ...]
    skips: tuple[str, ...]
    filter_multipliers: tuple[float, ...]
    layer_deltas: tuple[int, ...]
    stem_filters: int = 32
    stem_stride: int = 2
    head_filters: int = 1280
    act: str = "relu"
    resolution: int = 224

    def __post_init__(self) -> None:
        n = len(self.base_filters)
        if not (n == len(self.base_layers) == len(self.strides)) or n == 0:
            raise UserError(f"space {self.name!r}: base_filters, base_layers and strides must have "
                            "the same, non-zero length")
        for label, values in (("ops", self.ops), ("kernels", self.kernels), ("se_ratios", self.se_ratios),
                              ("skips", self.skips), ("filter_multipliers", self.filter_multipliers),
                              ("layer_deltas", self.layer_deltas)):
            if not values:
                raise UserError(f"space {self.name!r}: choice list {label!r} is empty")
        for s in self.skips:
            if s not in SKIPS:
                raise UserError(f"space {self.name!r}: unknown skip {s!r}; choose from {', '.join(SKIPS)}")
        try:  # the largest network of the space must be buildable (every value in range)
            widest = max(self.ops, key=lambda o: o.expand)
            blocks = [BlockSpec(widest.op, widest.expand, max(self.kernels), max(self.se_ratios), self.skips[0],
                                max(c["filters"]), max(c["layers"]), self.strides[i])
                      for i, c in enumerate(self.block_choices(i) for i in range(self.num_blocks))]
            Architecture(tuple(blocks), self.stem_filters, self.stem_stride, self.head_filters, self.act)
            for o in self.ops:
                BlockSpec(o.op, o.expand, 3, 0, "none", 8, 1, 1)
            check_resolution(self.resolution)
        except UserError as exc:
            raise UserError(f"space {self.name!r}: {exc}") from None

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def default(cls) -> SearchSpace:
        """MnasNet's space on the MobileNetV2 skeleton (paper section 4.1)."""
        return cls.from_dict(DEFAULT_SPACE)

    @classmethod
    def cifar(cls) -> SearchSpace:
        """The same choices on a 32x32 skeleton: stride-1 stem and one stride-2 stage less."""
        return cls.from_dict(CIFAR_SPACE)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "space definition") -> SearchSpace:
        """Validated (types and ranges, `SpaceFile`) before anything is built."""
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a mapping of keys (name, base_filters, ...)")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise UserError(f"unknown key(s) in {source}: {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(known))}")
        try:
            spec = SpaceFile.model_validate(d)
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(top level)"
                msg = "required key is missing" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
                parts.append(f"{where}: {msg}")
            raise UserError(f"{source}: " + "; ".join(parts)) from None
        data: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.model_dump().items()}
        data["ops"] = tuple(_op_choice(o) for o in d["ops"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = [{"op": o.op, "expand": o.expand} for o in self.ops]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def load(cls, name_or_path: str | Path | None) -> SearchSpace:
        """A named space (`mnasnet`, `mnasnet_cifar`) or a YAML/JSON file."""
        if name_or_path is None or str(name_or_path) in ("mnasnet", "default"):
            return cls.default()
        if str(name_or_path) in ("mnasnet_cifar", "cifar"):
            return cls.cifar()
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"space {str(name_or_path)!r} is neither a known space (mnasnet, "
                            "mnasnet_cifar) nor a file; pass a YAML/JSON space file")
        return cls.from_dict(_load_mapping(path, "space"), source=f"space file {path}")

    # ---- the decisions --------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.base_filters)

    def block_choices(self, i: int) -> dict[str, tuple]:
        """The concrete values each decision of block i can take, in token order."""
        return {
            "op": self.ops,
            "kernel": self.kernels,
            "se_ratio": self.se_ratios,
            "skip": self.skips,
            "filters": tuple(round_filters(self.base_filters[i], m) for m in self.filter_multipliers),
            "layers": tuple(max(1, self.base_layers[i] + d) for d in self.layer_deltas),
        }

    def decision_sizes(self) -> list[int]:
        """Cardinality of each categorical decision in controller order (6 per block)."""
        per_block = [len(self.ops), len(self.kernels), len(self.se_ratios), len(self.skips),
                     len(self.filter_multipliers), len(self.layer_deltas)]
        return per_block * self.num_blocks

    def decision_names(self) -> list[str]:
        return [f"block{i + 1}.{d}" for i in range(self.num_blocks) for d in DECISIONS]

    def size(self) -> int:
        """Number of token sequences: the product of all decision sizes (432^7 by default)."""
        return math.prod(self.decision_sizes())

    def decode(self, tokens: Sequence[int]) -> Architecture:
        sizes = self.decision_sizes()
        if len(tokens) != len(sizes):
            raise UserError(f"expected {len(sizes)} tokens for space {self.name!r}, got {len(tokens)}")
        for token, n, name in zip(tokens, sizes, self.decision_names(), strict=True):
            if not 0 <= int(token) < n:
                raise UserError(f"token {token} for {name} is out of range 0..{n - 1}")
        blocks = []
        for i in range(self.num_blocks):
            t = [int(x) for x in tokens[6 * i: 6 * i + 6]]
            c = self.block_choices(i)
            op = c["op"][t[0]]
            blocks.append(BlockSpec(op=op.op, expand=op.expand, kernel=c["kernel"][t[1]],
                                    se_ratio=c["se_ratio"][t[2]], skip=c["skip"][t[3]],
                                    filters=c["filters"][t[4]], layers=c["layers"][t[5]],
                                    stride=self.strides[i]))
        return Architecture(blocks=tuple(blocks), stem_filters=self.stem_filters,
                            stem_stride=self.stem_stride, head_filters=self.head_filters, act=self.act)

    def encode(self, arch: Architecture) -> list[int]:
        """Tokens for an architecture of this space (the first matching choice where two coincide)."""
        tokens = self._encode(arch)
        if tokens is None:
            raise UserError(f"architecture {arch.name or arch.id} is not in space {self.name!r} "
                            f"(`mnas space info` lists its choices)")
        return tokens

    def _encode(self, arch: Architecture) -> list[int] | None:
        if (len(arch.blocks) != self.num_blocks or arch.stem_filters != self.stem_filters
                or arch.stem_stride != self.stem_stride or arch.head_filters != self.head_filters
                or arch.act != self.act):
            return None
        tokens: list[int] = []
        for i, b in enumerate(arch.blocks):
            if b.stride != self.strides[i]:
                return None
            c = self.block_choices(i)
            values = (OpChoice(b.op, b.expand), b.kernel, b.se_ratio, b.skip, b.filters, b.layers)
            for key, value in zip(DECISIONS, values, strict=True):
                try:
                    tokens.append(c[key].index(value))
                except ValueError:
                    return None
        return tokens

    def contains(self, arch: Architecture) -> bool:
        return self._encode(arch) is not None

    def sample_tokens(self, rng: random.Random) -> list[int]:
        return [rng.randrange(n) for n in self.decision_sizes()]

    def sample(self, rng: random.Random | int | None = None) -> Architecture:
        """A uniform sample over token sequences."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return self.decode(self.sample_tokens(rng))

    def layer_configs(self) -> set[LayerConfig]:
        """Every distinct layer configuration any architecture of the space can contain."""
        configs: set[LayerConfig] = set()
        size = conv_out_size(self.resolution, self.stem_stride)
        in_widths = {self.stem_filters}
        for i in range(self.num_blocks):
            c = self.block_choices(i)
            out_size = conv_out_size(size, self.strides[i])
            max_layers = max(c["layers"])
            for op, k, se, skip, out_f in itertools.product(c["op"], c["kernel"], c["se_ratio"],
                                                            c["skip"], set(c["filters"])):
                for in_f in in_widths:
                    configs.add(LayerConfig(op.op, op.expand, k, se, skip, in_f, out_f,
                                            self.strides[i], size, self.act))
                if max_layers > 1:
                    configs.add(LayerConfig(op.op, op.expand, k, se, skip, out_f, out_f, 1,
                                            out_size, self.act))
            in_widths = set(c["filters"])
            size = out_size
        return configs


_Whole = Annotated[int, Field(strict=True)]


class SpaceFile(BaseModel):
    """The types and ranges of a space definition (a YAML/JSON file or `SearchSpace.to_dict()`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    base_filters: list[Annotated[_Whole, Field(ge=1, le=MAX_FILTERS)]] = Field(min_length=1, max_length=MAX_BLOCKS)
    base_layers: list[Annotated[_Whole, Field(ge=1, le=MAX_LAYERS_PER_BLOCK)]] = Field(min_length=1)
    strides: list[Literal[1, 2]] = Field(min_length=1)
    ops: list[str | dict[str, Any]] = Field(min_length=1)
    kernels: list[Annotated[_Whole, Field(ge=1, le=MAX_KERNEL)]] = Field(min_length=1)
    se_ratios: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=1)
    skips: list[Literal["identity", "pool", "none"]] = Field(min_length=1)
    filter_multipliers: list[Annotated[float, Field(gt=0, le=8)]] = Field(min_length=1)
    layer_deltas: list[Annotated[_Whole, Field(ge=-MAX_LAYERS_PER_BLOCK, le=MAX_LAYERS_PER_BLOCK)]] = Field(min_length=1)
    stem_filters: _Whole = Field(default=32, ge=1, le=MAX_FILTERS)
    stem_stride: Literal[1, 2] = 2
    head_filters: _Whole = Field(default=1280, ge=1, le=MAX_HEAD_FILTERS)
    act: Literal["relu", "relu6", "swish", "hard_swish"] = "relu"
    resolution: _Whole = Field(default=224, ge=MIN_RESOLUTION, le=MAX_RESOLUTION)

    @field_validator("ops", "kernels", "se_ratios", "skips", "filter_multipliers", "layer_deltas")
    @classmethod
    def _distinct(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        # A choice listed twice would be two decisions for one network: a bigger space, biased draws.
        seen: list[Any] = []
        for v in value:
            key = _op_choice(v) if info.field_name == "ops" else v  # mbconv6 and {op: mbconv, expand: 6} alike
            if key in seen:
                raise ValueError(f"{v!r} is listed twice; list each choice once")
            seen.append(key)
        return value

    @field_validator("kernels")
    @classmethod
    def _odd(cls, value: list[int]) -> list[int]:
        even = [k for k in value if k % 2 == 0]
        if even:
            raise ValueError(f"kernels must be odd (got {', '.join(map(str, even))})")
        return value

    @field_validator("ops")
    @classmethod
    def _ops(cls, value: list[Any]) -> list[Any]:
        for o in value:
            _op_choice(o)  # raises a UserError with the allowed forms
        return value


def _op_choice(o: Any) -> OpChoice:
    if isinstance(o, OpChoice):
        return o
    if isinstance(o, str):  # "conv", "ds", "mbconv3", "mbconv6"
        m = re.fullmatch(r"(conv|ds|mbconv)([0-9]+(?:\.[0-9]+)?)?", o)
        if not m or (m.group(1) == "mbconv" and not m.group(2)):
            raise UserError(f"unknown op choice {o!r}; use conv, ds or mbconv<expand> (e.g. mbconv6)")
        return OpChoice(m.group(1), plain_number(float(m.group(2))) if m.group(2) else 1)
    if isinstance(o, dict):
        if not set(o) <= {"op", "expand"} or not isinstance(o.get("op"), str):
            raise UserError(f"op choice {o!r} must be a mapping with 'op' (conv, ds, mbconv) and optional 'expand'")
        expand = real_number(o.get("expand", 1), "op expand", 0.0, MAX_EXPAND)
        return OpChoice(o["op"], plain_number(expand))
    raise UserError(f"unknown op choice {o!r}")


def _load_mapping(path: Path, what: str) -> dict[str, Any]:
    data = load_yaml(read_text(path, f"{what} file"), f"{what} file {path}")  # JSON is YAML too
    if not isinstance(data, dict):
        raise UserError(f"{what} file {path} must hold a mapping (YAML or JSON object)")
    return data


_MNASNET_CHOICES: dict[str, Any] = {
    "ops": ["conv", "ds", "mbconv3", "mbconv6"],
    "kernels": [3, 5],
    "se_ratios": [0, 0.25],
    "skips": ["pool", "identity", "none"],
    "filter_multipliers": [0.75, 1.0, 1.25],
    "layer_deltas": [-1, 0, 1],
}

DEFAULT_SPACE: dict[str, Any] = {
    "name": "mnasnet",
    # MobileNetV2 skeleton (torchvision mobilenetv2.py: t,c,n,s)
    "base_filters": [16, 24, 32, 64, 96, 160, 320],
    "base_layers": [1, 2, 3, 4, 3, 3, 1],
    "strides": [1, 2, 2, 2, 1, 2, 1],
    **_MNASNET_CHOICES,
    "stem_filters": 32,
    "stem_stride": 2,
    "head_filters": 1280,
    "act": "relu",
    "resolution": 224,
}

CIFAR_SPACE: dict[str, Any] = {
    **DEFAULT_SPACE,
    "name": "mnasnet_cifar",
    "strides": [1, 1, 2, 2, 1, 2, 1],
    "stem_stride": 1,
    "resolution": 32,
}
