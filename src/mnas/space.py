"""Architectures as data, and the MnasNet factorized hierarchical search space.

An `Architecture` is an immutable value (stem, a tuple of `BlockSpec`, head, activation). It
round-trips losslessly through JSON, the controller's token sequence, timm-style strings and TF
block strings, and has a short stable id for caches and stores.

A `SearchSpace` is a skeleton (base widths, depths, strides, stem, head) plus per-block choice
lists, all plain data, so another space is a YAML file rather than new code.

Skip semantics (paper section 4.1 names the SkipOp choices {pooling, identity residual, no skip}
without defining them; this is our definition):
- ``identity``: the residual ``x + f(x)`` on every layer whose stride is 1 and whose input and
  output widths match (as in MobileNetV2, timm and TF, where only such layers get a skip);
  a layer that changes shape gets no shortcut.
- ``pool``: like ``identity`` where shapes match; on a layer that changes shape the shortcut is
  average pooling (kernel = stride) followed, if widths differ, by a 1x1 conv + BN to match the
  width (the ResNet-D shortcut), so every layer of the block keeps a shortcut.
- ``none``: no shortcut at all.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mnas.errors import UserError

OPS = ("conv", "ds", "mbconv")
SKIPS = ("identity", "pool", "none")
ACTIVATIONS = ("relu", "relu6", "swish", "hard_swish")
SKELETONS = ("auto", "cifar", "imagenet")

# What a 24 GB machine can build, train and time: larger values are refused with these numbers.
MAX_KERNEL = 15
MAX_FILTERS = 4096
MAX_HEAD_FILTERS = 8192
MAX_LAYERS_PER_BLOCK = 32
MAX_BLOCKS = 32
MAX_EXPAND = 16
MAX_PARAMS = 500_000_000  # 2 GB of fp32 weights (x4 with gradients and optimiser state)
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024
LOW_RESOLUTION_MAX = 64  # inputs up to this size get the CIFAR skeleton under "auto"


def round_filters(filters: float, multiplier: float | None = 1.0, divisor: int = 8,
                  min_depth: int | None = None) -> int:
    """TF `round_filters`: scale, round to a multiple of `divisor`, never drop more than 10%.

    A multiplier of None returns the width unchanged (TF's `depth_multiplier=None`), which is what
    keeps MnasNet-D1's 36-wide block at 36.
    """
    if not multiplier:
        return int(filters)
    scaled = filters * multiplier
    min_depth = min_depth or divisor
    new = max(min_depth, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


@dataclass(frozen=True)
class BlockSpec:
    """One block: `layers` repeats of one layer; only the first may stride or change width."""

    op: str
    expand: float
    kernel: int
    se_ratio: float
    skip: str
    filters: int
    layers: int
    stride: int

    def __post_init__(self) -> None:
        if not isinstance(self.op, str) or self.op not in OPS:
            raise UserError(f"unknown op {self.op!r}; choose one of {', '.join(OPS)}")
        if not isinstance(self.skip, str) or self.skip not in SKIPS:
            raise UserError(f"unknown skip {self.skip!r}; choose one of {', '.join(SKIPS)}")
        for key, low, high in (("kernel", 1, MAX_KERNEL), ("filters", 1, MAX_FILTERS),
                               ("layers", 1, MAX_LAYERS_PER_BLOCK), ("stride", 1, 2)):
            object.__setattr__(self, key, whole_number(getattr(self, key), f"block {key}", low, high))
        expand = real_number(self.expand, "block expand", 0.0, MAX_EXPAND)
        se_ratio = real_number(self.se_ratio, "block se_ratio", 0.0, 1.0)
        if expand <= 0:
            raise UserError(f"block expand must be > 0 (got {self.expand!r})")
        if self.kernel % 2 == 0:
            raise UserError(f"block kernel must be odd (got {self.kernel})")
        if self.op in ("conv", "ds") and expand != 1:
            raise UserError(f"op {self.op!r} has no expansion; use expand 1 (got {self.expand})")
        # Normalise numbers so equal blocks hash equal (3 == 3.0 already; keep ints ints).
        object.__setattr__(self, "expand", _num(expand))
        object.__setattr__(self, "se_ratio", _num(se_ratio))

    @property
    def op_label(self) -> str:
        """Paper naming: Conv, SepConv, MBConv3, MBConv6 ..."""
        if self.op == "conv":
            return "Conv"
        if self.op == "ds":
            return "SepConv"
        return f"MBConv{_fmt(self.expand)}"


@dataclass(frozen=True)
class LayerConfig:
    """One layer as the latency lookup table keys it: everything that changes its cost. A skip
    that adds no shortcut (identity across a change of shape) changes nothing, so it is stored as
    "none": such a layer is one table entry, measured once (a quarter of the default space's
    layers were measured twice before)."""

    op: str
    expand: float
    kernel: int
    se_ratio: float
    skip: str
    in_filters: int
    out_filters: int
    stride: int
    input_size: int
    act: str

    def __post_init__(self) -> None:
        if self.skip != "none" and not self.adds_shortcut:
            object.__setattr__(self, "skip", "none")

    @property
    def adds_shortcut(self) -> bool:
        return adds_shortcut(self.skip, self.in_filters, self.out_filters, self.stride)

    @property
    def key(self) -> str:
        return (f"{self.op}_e{_fmt(self.expand)}_k{self.kernel}_se{_fmt(self.se_ratio)}_{self.skip}"
                f"_i{self.in_filters}_o{self.out_filters}_s{self.stride}_r{self.input_size}_{self.act}")


@dataclass(frozen=True)
class Architecture:
    """A whole network: stem conv, blocks, 1x1 head conv. `name` is a label, not identity."""

    blocks: tuple[BlockSpec, ...]
    stem_filters: int = 32
    stem_stride: int = 2
    head_filters: int = 1280
    act: str = "relu"
    name: str = field(default="", compare=False, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.blocks, (str, bytes)) or not isinstance(self.blocks, Sequence):
            raise UserError(f"an architecture's blocks must be a list (got {type(self.blocks).__name__})")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise UserError("an architecture needs at least one block")
        if len(self.blocks) > MAX_BLOCKS:
            raise UserError(f"{len(self.blocks)} blocks is more than the {MAX_BLOCKS} mnas builds")
        if not all(isinstance(b, BlockSpec) for b in self.blocks):
            raise UserError("an architecture's blocks must be BlockSpec values")
        if not isinstance(self.act, str) or self.act not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.act!r}; choose one of {', '.join(ACTIVATIONS)}")
        object.__setattr__(self, "stem_filters", whole_number(self.stem_filters, "stem_filters", 1, MAX_FILTERS))
        object.__setattr__(self, "stem_stride", whole_number(self.stem_stride, "stem_stride", 1, 2))
        object.__setattr__(self, "head_filters", whole_number(self.head_filters, "head_filters", 1, MAX_HEAD_FILTERS))
        if not isinstance(self.name, str):
            raise UserError(f"an architecture's name must be text (got {self.name!r})")
        params = self.approx_params()
        if params > MAX_PARAMS:
            raise UserError(f"this architecture has about {params / 1e6:,.0f}M parameters; mnas builds up to "
                            f"{MAX_PARAMS / 1e6:,.0f}M (what a 24 GB machine trains): use fewer layers or filters")

    def approx_params(self, num_classes: int = 1000) -> int:
        """Weights of the convolutions and the classifier (BN, biases and SE left out): the size
        check before anything is allocated."""
        total = 27 * self.stem_filters
        cin = self.stem_filters
        for b in self.blocks:
            for j in range(b.layers):
                c_in = cin if j == 0 else b.filters
                mid = round(c_in * b.expand)
                if b.op == "conv":
                    total += b.kernel**2 * c_in * b.filters
                elif b.op == "ds":
                    total += b.kernel**2 * c_in + c_in * b.filters
                else:
                    total += c_in * mid + b.kernel**2 * mid + mid * b.filters
            cin = b.filters
        return int(total + cin * self.head_filters + self.head_filters * num_classes)

    def activation_elements(self, resolution: int) -> int:
        """Elements of every layer output at batch 1 (what training keeps for the backward pass)."""
        check_resolution(resolution)
        total = 0
        for layer in self.layer_configs(resolution):
            out = _conv_out(layer.input_size, layer.stride)
            mid = round(layer.in_filters * layer.expand)
            total += (mid * layer.input_size**2 if mid != layer.in_filters else 0) + 2 * mid * out**2 + layer.out_filters * out**2
        return total

    # ---- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Architecture:
        """Validated: unknown or missing keys and wrong types are a UserError naming the block."""
        if not isinstance(d, dict) or not isinstance(d.get("blocks"), list):
            raise UserError("not an architecture description: expected a mapping with 'blocks' (a list of "
                            f"{', '.join(BLOCK_KEYS)}), optional {', '.join(ARCH_KEYS)}")
        unknown = sorted(set(d) - {"blocks", *ARCH_KEYS})
        if unknown:
            raise UserError(f"unknown architecture key(s) {', '.join(map(str, unknown))}; "
                            f"allowed: blocks, {', '.join(ARCH_KEYS)}")
        blocks = []
        for i, b in enumerate(d["blocks"], start=1):
            if not isinstance(b, dict) or set(b) != set(BLOCK_KEYS):
                got = ", ".join(map(str, b)) if isinstance(b, dict) else type(b).__name__
                raise UserError(f"block {i}: expected exactly the keys {', '.join(BLOCK_KEYS)} (got {got})")
            try:
                blocks.append(BlockSpec(**b))
            except UserError as exc:
                raise UserError(f"block {i}: {exc}") from None
        return cls(blocks=tuple(blocks), **{k: v for k, v in d.items() if k != "blocks"})

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise UserError(f"malformed architecture JSON: {exc}") from None

    @property
    def id(self) -> str:
        """12 hex chars of the SHA-256 of the canonical JSON without the name."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def with_name(self, name: str) -> Architecture:
        return replace(self, name=name)

    # ---- transforms -----------------------------------------------------------------------
    def scaled(self, width_mult: float) -> Architecture:
        """Width multiplier the TF way: stem and block widths rounded; the head never scaled."""
        if width_mult == 1.0:
            return self
        if not 0.1 <= width_mult <= 4.0:
            raise UserError(f"width multiplier {width_mult} is out of range; use 0.35 to 1.4")
        blocks = tuple(replace(b, filters=round_filters(b.filters, width_mult)) for b in self.blocks)
        name = f"{self.name}_x{_fmt(width_mult)}" if self.name else ""
        return replace(self, blocks=blocks, stem_filters=round_filters(self.stem_filters, width_mult),
                       name=name)

    def for_resolution(self, resolution: int, skeleton: str = "auto") -> Architecture:
        """The network that really runs at `resolution` (the one place this rule lives).

        "auto": inputs of 64 px or less get the low-resolution (CIFAR) skeleton, a stride-1 stem
        and one stride-2 stage less, unless the stem already has stride 1; "cifar" forces it;
        "imagenet" keeps the architecture as it is. Training, latency, export and the supernet
        all go through here, so they always talk about the same network.
        """
        if skeleton not in SKELETONS:
            raise UserError(f"unknown skeleton {skeleton!r}; choose one of {', '.join(SKELETONS)}")
        low = skeleton == "cifar" or (skeleton == "auto" and resolution <= LOW_RESOLUTION_MAX)
        if not low or self.stem_stride == 1:
            return self
        blocks = list(self.blocks)
        for i, b in enumerate(blocks):
            if b.stride == 2:
                blocks[i] = replace(b, stride=1)
                break
        name = f"{self.name}_lowres" if self.name else ""
        return replace(self, blocks=tuple(blocks), stem_stride=1, name=name)

    # ---- layers ---------------------------------------------------------------------------
    def layer_configs(self, resolution: int = 224) -> list[LayerConfig]:
        """Every layer of every block with its input width and spatial size, in order."""
        size = _conv_out(resolution, self.stem_stride)
        in_f = self.stem_filters
        layers = []
        for b in self.blocks:
            for j in range(b.layers):
                stride = b.stride if j == 0 else 1
                layers.append(LayerConfig(b.op, b.expand, b.kernel, b.se_ratio, b.skip, in_f,
                                          b.filters, stride, size, self.act))
                size = _conv_out(size, stride)
                in_f = b.filters
        return layers

    def output_shapes(self, resolution: int = 224) -> list[tuple[int, int]]:
        """(channels, spatial size) after the stem and after each block."""
        size = _conv_out(resolution, self.stem_stride)
        shapes = [(self.stem_filters, size)]
        for b in self.blocks:
            size = _conv_out(size, b.stride)
            shapes.append((b.filters, size))
        return shapes

    # ---- strings --------------------------------------------------------------------------
    def to_timm_string(self) -> str:
        """timm arch_def block strings, comma-joined, framed by mnas `stem_...` and `head_...` items.

        Block strings follow timm (`ds`, `ir`, `cn`; `_noskip`); mnas adds `_pool` for the pooling
        shortcut. Example: ``stem_k3_s2_c32_nre,ds_r1_k3_s1_e1_c16_noskip,...,head_c1280``.
        """
        items = [f"stem_k3_s{self.stem_stride}_c{self.stem_filters}_{_ACT_TOKEN[self.act]}"]
        items += [_timm_block(b) for b in self.blocks]
        items.append(f"head_c{self.head_filters}")
        return ",".join(items)

    def to_tf_string(self) -> str:
        """TF MnasNet block strings (`r2_k3_s22_e6_i16_o24_se0.25`), comma-joined, with stem/head items.

        TF has no op type (e1 means no expansion); mnas adds `_conv` for a regular conv and `_pool`
        for the pooling shortcut so every architecture round-trips.
        """
        items = [f"stem_k3_s{self.stem_stride}_c{self.stem_filters}_{_ACT_TOKEN[self.act]}"]
        in_f = self.stem_filters
        for b in self.blocks:
            items.append(_tf_block(b, in_f))
            in_f = b.filters
        items.append(f"head_c{self.head_filters}")
        return ",".join(items)


BLOCK_KEYS = ("op", "expand", "kernel", "se_ratio", "skip", "filters", "layers", "stride")
ARCH_KEYS = ("stem_filters", "stem_stride", "head_filters", "act", "name")


def adds_shortcut(skip: str, cin: int, cout: int, stride: int) -> bool:
    """Whether a layer adds a shortcut: its skip is not "none" and the shapes match, or its skip is
    "pool" (which projects). The one place this rule lives (the model, the supernet and the
    latency calibration use it)."""
    return skip != "none" and ((stride == 1 and cin == cout) or skip == "pool")


def whole_number(value: Any, what: str, low: int, high: int) -> int:
    """An integer (or an integral float like 24.0) within [low, high], else a UserError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise UserError(f"{what} must be a whole number (got {value!r})")
    if not low <= value <= high:
        raise UserError(f"{what} must lie in {low}..{high} (got {int(value)})")
    return int(value)


def real_number(value: Any, what: str, low: float, high: float) -> float:
    """A finite number within [low, high], else a UserError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{what} must be a number (got {value!r})")
    if not low <= value <= high:
        raise UserError(f"{what} must lie in [{low:g}, {high:g}] (got {value:g})")
    return float(value)


def check_resolution(resolution: Any) -> int:
    """An input size mnas can build, train and time on a 24 GB machine."""
    return whole_number(resolution, "resolution", MIN_RESOLUTION, MAX_RESOLUTION)


# ---- string codecs -------------------------------------------------------------------------
_ACT_TOKEN = {"relu": "nre", "relu6": "nr6", "swish": "nsw", "hard_swish": "nhs"}
_TOKEN_ACT = {v: k for k, v in _ACT_TOKEN.items()}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _num(x: float) -> float:
    return int(x) if float(x).is_integer() else float(x)


def _conv_out(size: int, stride: int) -> int:
    return (size + stride - 1) // stride if stride > 1 else size


def _timm_block(b: BlockSpec) -> str:
    kind = {"conv": "cn", "ds": "ds", "mbconv": "ir"}[b.op]
    s = f"{kind}_r{b.layers}_k{b.kernel}_s{b.stride}_e{_fmt(b.expand)}_c{b.filters}"
    if b.se_ratio:
        s += f"_se{_fmt(b.se_ratio)}"
    if b.op == "conv":  # timm's ConvBnAct has no skip unless `_skip` is given
        s += {"identity": "_skip", "pool": "_pool", "none": ""}[b.skip]
    else:
        s += {"identity": "", "pool": "_pool", "none": "_noskip"}[b.skip]
    return s


def _tf_block(b: BlockSpec, in_f: int) -> str:
    s = f"r{b.layers}_k{b.kernel}_s{b.stride}{b.stride}_e{_fmt(b.expand)}_i{in_f}_o{b.filters}"
    if b.se_ratio:
        s += f"_se{_fmt(b.se_ratio)}"
    if b.op == "conv":
        s += "_conv"
    s += {"identity": "", "pool": "_pool", "none": "_noskip"}[b.skip]
    return s


_KEY_TOKEN = re.compile(r"(se|r|k|s|e|c|i|o)(\d+(?:\.\d+)?)")
_SKIP_FLAGS = ("noskip", "skip", "pool")
#: Per item kind: the number keys it takes, the ones it must have, and its flags.
_GRAMMAR: dict[str, tuple[set[str], set[str], set[str]]] = {
    "stem": ({"k", "s", "c"}, {"c"}, set(_TOKEN_ACT)),
    "head": ({"c"}, {"c"}, set()),
    "ds": ({"r", "k", "s", "e", "c", "se"}, {"r", "k", "s", "c"}, {"noskip", "pool"}),
    "ir": ({"r", "k", "s", "e", "c", "se"}, {"r", "k", "s", "c"}, {"noskip", "pool"}),
    "cn": ({"r", "k", "s", "e", "c", "se"}, {"r", "k", "s", "c"}, {"skip", "pool"}),
    "tf": ({"r", "k", "s", "e", "i", "o", "se"}, {"r", "k", "s", "e", "i", "o"}, {"conv", "noskip", "pool"}),
}


class _Item:
    """One comma-separated item of an architecture string, read strictly: every token must be a
    known key with a number or a known flag, at most once."""

    def __init__(self, item: str, position: int) -> None:
        self.text, self.position = item, position
        tokens = item.split("_")
        self.kind = tokens[0] if tokens[0] in _GRAMMAR else ("tf" if re.fullmatch(r"r\d+", tokens[0]) else "")
        if not self.kind:
            raise self.error(f"unknown block type {tokens[0]!r}: expected timm block strings like "
                             "'ir_r2_k3_s2_e6_c24_se0.25' or TF block strings like 'r2_k3_s22_e6_i16_o24_se0.25'")
        keys, required, flags = _GRAMMAR[self.kind]
        self.values: dict[str, str] = {}
        self.flags: set[str] = set()
        for j, tok in enumerate(tokens[0 if self.kind == "tf" else 1:], start=1 if self.kind == "tf" else 2):
            m = _KEY_TOKEN.fullmatch(tok)
            if m and m.group(1) in keys:
                seen = m.group(1) in self.values
                self.values[m.group(1)] = m.group(2)
            elif tok in flags:
                seen = tok in self.flags
                self.flags.add(tok)
            else:
                allowed = sorted(f"{k}<n>" for k in keys) + sorted(flags)
                raise self.error(f"unknown or malformed token {tok!r} (token {j}); allowed: {', '.join(allowed)}")
            if seen:
                raise self.error(f"token {tok!r} (token {j}) repeats an earlier one")
        missing = sorted(required - set(self.values))
        if missing:
            raise self.error(f"missing {', '.join(k + '<n>' for k in missing)}")
        if len(self.flags & set(_SKIP_FLAGS)) > 1:
            raise self.error(f"more than one skip flag ({', '.join(sorted(self.flags & set(_SKIP_FLAGS)))})")

    def error(self, message: str) -> UserError:
        return UserError(f"architecture string item {self.position} ({self.text!r}): {message}")

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.values:
            assert default is not None
            return default
        value = self.values[key]
        if not value.isdigit():
            raise self.error(f"'{key}{value}' must be a whole number")
        return int(value)

    def float(self, key: str, default: float) -> float:
        return float(self.values[key]) if key in self.values else default

    def skip(self, default: str) -> str:
        if "pool" in self.flags:
            return "pool"
        if "noskip" in self.flags:
            return "none"
        return "identity" if "skip" in self.flags else default

    def block(self, **fields: Any) -> BlockSpec:
        try:
            return BlockSpec(**fields)
        except UserError as exc:
            raise self.error(str(exc)) from None


def parse_arch_string(text: str) -> Architecture:
    """Parse a timm-style or TF-style architecture string (comma- or space-separated items).

    Strict: an unknown, duplicated or malformed token is an error naming the item and the token,
    never silently ignored; a stem item may only come first and a head item only last.
    """
    raw = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not raw:
        raise UserError("empty architecture string")
    items = [_Item(t, i) for i, t in enumerate(raw, start=1)]
    stem = items.pop(0) if items[0].kind == "stem" else None
    head = items.pop() if items and items[-1].kind == "head" else None
    for it in items:
        if it.kind in ("stem", "head"):
            raise it.error(f"a {it.kind} item may only come {'first' if it.kind == 'stem' else 'last'}, once")
    if not items:
        raise UserError(f"no blocks in architecture string {text!r}")
    blocks: list[BlockSpec] = []
    first_in = None
    for it in items:
        if it.kind == "tf":
            stride = it.values["s"]
            if len(stride) != 2 or stride[0] != stride[1]:
                raise it.error("strides must be a pair of equal digits like s11 or s22")
            expand = it.float("e", 1.0)
            op = "conv" if "conv" in it.flags else ("ds" if expand == 1 else "mbconv")
            if first_in is None:
                first_in = it.int("i")
            blocks.append(it.block(op=op, expand=expand, kernel=it.int("k"), se_ratio=it.float("se", 0.0),
                                   skip=it.skip("identity"), filters=it.int("o"), layers=it.int("r"),
                                   stride=int(stride[0])))
        else:
            op = {"ds": "ds", "ir": "mbconv", "cn": "conv"}[it.kind]
            blocks.append(it.block(op=op, expand=it.float("e", 1.0), kernel=it.int("k"),
                                   se_ratio=it.float("se", 0.0), skip=it.skip("none" if op == "conv" else "identity"),
                                   filters=it.int("c"), layers=it.int("r"), stride=it.int("s")))
    stem_filters = stem.int("c") if stem else (first_in if first_in is not None else 32)
    if stem is not None and stem.int("k", 3) != 3:
        raise stem.error("the stem is a 3x3 convolution: use k3 or leave k out")
    acts = [a for a in (stem.flags if stem else ()) if a in _TOKEN_ACT]
    if len(acts) > 1:
        raise stem.error(f"more than one activation ({', '.join(sorted(acts))})")  # type: ignore[union-attr]
    return Architecture(blocks=tuple(blocks), stem_filters=stem_filters, stem_stride=stem.int("s", 2) if stem else 2,
                        head_filters=head.int("c") if head else 1280, act=_TOKEN_ACT[acts[0]] if acts else "relu")


def parse_arch(text: str) -> Architecture:
    """An architecture from JSON text or a timm/TF string."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return Architecture.from_json(stripped)
    return parse_arch_string(stripped)


# ---- the search space ----------------------------------------------------------------------
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
        size = _conv_out(self.resolution, self.stem_stride)
        in_widths = {self.stem_filters}
        for i in range(self.num_blocks):
            c = self.block_choices(i)
            out_size = _conv_out(size, self.strides[i])
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
        m = re.fullmatch(r"(conv|ds|mbconv)(\d+(?:\.\d+)?)?", o)
        if not m or (m.group(1) == "mbconv" and not m.group(2)):
            raise UserError(f"unknown op choice {o!r}; use conv, ds or mbconv<expand> (e.g. mbconv6)")
        return OpChoice(m.group(1), _num(float(m.group(2))) if m.group(2) else 1)
    if isinstance(o, dict):
        if not set(o) <= {"op", "expand"} or not isinstance(o.get("op"), str):
            raise UserError(f"op choice {o!r} must be a mapping with 'op' (conv, ds, mbconv) and optional 'expand'")
        expand = real_number(o.get("expand", 1), "op expand", 0.0, MAX_EXPAND)
        return OpChoice(o["op"], _num(expand))
    raise UserError(f"unknown op choice {o!r}")


def _load_mapping(path: Path, what: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {what} file {path}: {str(exc).splitlines()[0]}") from None
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
