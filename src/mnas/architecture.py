"""Architectures as data: the immutable value every part of mnas passes around.

An `Architecture` is a stem, a tuple of `BlockSpec` (one block repeats one layer `layers` times),
a head and an activation. It round-trips losslessly through JSON (here), the controller's token
sequence (`mnas.space`) and timm-style and TF block strings (`mnas.arch_strings`), and has a short
stable id for caches and stores. `LayerConfig` is one concrete layer of it at a resolution.

Skip semantics (paper section 4.1 names the SkipOp choices {pooling, identity residual, no skip}
without defining them; this is our definition):
- ``identity``: the residual ``x + f(x)`` on every layer whose stride is 1 and whose input and
  output widths match (as in MobileNetV2, timm and TF, where only such layers get a skip);
  a layer that changes shape gets no shortcut.
- ``pool``: like ``identity`` where shapes match; on a layer that changes shape the shortcut is
  average pooling (kernel = stride) followed, if widths differ, by a 1x1 conv + BN to match the
  width (the ResNet-D shortcut), so every layer of the block keeps a shortcut.
- ``none``: no shortcut at all.

Where two of these build the same network (``pool`` on a block whose first layer keeps its shape
is ``identity``; ``identity`` on a one-layer block that changes shape is ``none``), the
architectures differ as values but share one id (`Architecture.canonical`, `ID_VERSION`), so a
search evaluates such a network once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from mnas.errors import UserError
from mnas.textfiles import load_json

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
        object.__setattr__(self, "expand", plain_number(expand))
        object.__setattr__(self, "se_ratio", plain_number(se_ratio))

    @property
    def op_label(self) -> str:
        """Paper naming: Conv, SepConv, MBConv3, MBConv6 ..."""
        if self.op == "conv":
            return "Conv"
        if self.op == "ds":
            return "SepConv"
        return f"MBConv{format_number(self.expand)}"


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
        return (f"{self.op}_e{format_number(self.expand)}_k{self.kernel}_se{format_number(self.se_ratio)}_{self.skip}"
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
        return cls.from_dict(load_json(text, "architecture JSON", hint='an architecture needs 3: {"blocks": [{...}]}'))

    @property
    def id(self) -> str:
        """12 hex chars of the SHA-256 of the canonical encoding's JSON, without the name (scheme
        `ID_VERSION`: see there for what enters the hash and how it may change)."""
        c = self.canonical()
        d = {**_hashed_fields(c, ARCH_FIELDS_V1), "blocks": [_hashed_fields(b, BLOCK_KEYS) for b in c.blocks]}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def canonical(self) -> Architecture:
        """The one encoding, among those that build the same network, that the id hashes.

        Two skip choices build the same module on some blocks (`adds_shortcut`, `mnas.model.Layer`):
        "pool" on a block whose first layer keeps its shape (stride 1, same width) adds the same
        plain residual as "identity" on every layer, so it is written "identity"; and on a block of
        one layer that changes shape "identity" adds no shortcut, like "none", so "none" is written
        "identity" there (the form of MobileNetV2, the default latency reference, and of TF's
        block strings). The name is dropped. Everything else is already one encoding per network
        (an SE ratio above 0 always adds an SE module; `BlockSpec` keeps numbers plain)."""
        blocks = []
        cin = self.stem_filters
        for b in self.blocks:
            keeps_shape = b.stride == 1 and cin == b.filters
            same_as_identity = ((b.skip == "pool" and keeps_shape)
                                or (b.skip == "none" and not keeps_shape and b.layers == 1))
            blocks.append(replace(b, skip="identity") if same_as_identity else b)
            cin = b.filters
        return replace(self, blocks=tuple(blocks), name="")

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
        name = f"{self.name}_x{format_number(width_mult)}" if self.name else ""
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
        size = conv_out_size(resolution, self.stem_stride)
        in_f = self.stem_filters
        layers = []
        for b in self.blocks:
            for j in range(b.layers):
                stride = b.stride if j == 0 else 1
                layers.append(LayerConfig(b.op, b.expand, b.kernel, b.se_ratio, b.skip, in_f,
                                          b.filters, stride, size, self.act))
                size = conv_out_size(size, stride)
                in_f = b.filters
        return layers

    def output_shapes(self, resolution: int = 224) -> list[tuple[int, int]]:
        """(channels, spatial size) after the stem and after each block."""
        size = conv_out_size(resolution, self.stem_stride)
        shapes = [(self.stem_filters, size)]
        for b in self.blocks:
            size = conv_out_size(size, b.stride)
            shapes.append((b.filters, size))
        return shapes


BLOCK_KEYS = ("op", "expand", "kernel", "se_ratio", "skip", "filters", "layers", "stride")
ARCH_KEYS = ("stem_filters", "stem_stride", "head_filters", "act", "name")

#: The architecture id's scheme (`Architecture.id`): 12 hex chars of the SHA-256 of the sorted
#: JSON of the canonical encoding's fields, the name left out.
#: - 1: the fields as written.
#: - 2 (now): the canonical encoding (`Architecture.canonical`), so two encodings of one network
#:   share an id; the id of every architecture already in that form is its id of scheme 1.
#: The rule that keeps old ids valid: a field added to `BlockSpec` or `Architecture` after scheme 1
#: enters the hash only where it differs from its default, so every architecture that could be
#: written before the field existed keeps its id. Anything else that changes ids (a new
#: canonicalisation, a field without a default) raises this number and says what it changed.
#: tests/test_arch_id.py pins every zoo model's id.
ID_VERSION = 2
#: The fields scheme 1 hashed; a field not listed enters the hash only away from its default.
ARCH_FIELDS_V1 = ("stem_filters", "stem_stride", "head_filters", "act")


def _hashed_fields(value: Any, always: Sequence[str]) -> dict[str, Any]:
    """The dataclass fields of `value` that enter its id: those of scheme 1 (`always`) and any
    later field away from its default (blocks and the name are the caller's)."""
    out: dict[str, Any] = {}
    for f in fields(value):
        if f.name in ("blocks", "name"):
            continue
        v = getattr(value, f.name)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        if f.name in always or default is MISSING or v != default:
            out[f.name] = v
    return out


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


def format_number(x: float) -> str:
    """`3` for a whole number, `0.25` otherwise (as the strings and labels write numbers)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def plain_number(x: float) -> float:
    """An int where the value is whole, so equal architectures compare and hash alike."""
    return int(x) if float(x).is_integer() else float(x)


def conv_out_size(size: int, stride: int) -> int:
    """The spatial size after a "same"-padded convolution with `stride`."""
    return (size + stride - 1) // stride if stride > 1 else size
