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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from mnas.errors import UserError

OPS = ("conv", "ds", "mbconv")
SKIPS = ("identity", "pool", "none")
ACTIVATIONS = ("relu", "relu6", "swish", "hard_swish")
SKELETONS = ("auto", "cifar", "imagenet")
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
        if self.op not in OPS:
            raise UserError(f"unknown op {self.op!r}; choose one of {', '.join(OPS)}")
        if self.skip not in SKIPS:
            raise UserError(f"unknown skip {self.skip!r}; choose one of {', '.join(SKIPS)}")
        if self.op in ("conv", "ds") and self.expand != 1:
            raise UserError(f"op {self.op!r} has no expansion; use expand 1 (got {self.expand})")
        if self.expand <= 0 or self.kernel < 1 or self.kernel % 2 == 0:
            raise UserError(f"bad block: expand must be > 0 and kernel odd and >= 1 ({self})")
        if self.filters < 1 or self.layers < 1 or self.stride not in (1, 2):
            raise UserError(f"bad block: filters and layers must be >= 1, stride 1 or 2 ({self})")
        if not 0 <= self.se_ratio <= 1:
            raise UserError(f"bad block: se_ratio must lie in [0, 1] (got {self.se_ratio})")
        # Normalise numbers so equal blocks hash equal (3 == 3.0 already; keep ints ints).
        object.__setattr__(self, "expand", _num(self.expand))
        object.__setattr__(self, "se_ratio", _num(self.se_ratio))

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
    """One layer as the latency lookup table keys it: everything that changes its cost."""

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
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise UserError("an architecture needs at least one block")
        if self.act not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.act!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.stem_stride not in (1, 2) or self.stem_filters < 1 or self.head_filters < 1:
            raise UserError("bad stem/head: stem_stride must be 1 or 2, widths >= 1")

    # ---- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Architecture":
        try:
            blocks = tuple(BlockSpec(**b) for b in d["blocks"])
            rest = {k: v for k, v in d.items() if k != "blocks"}
            return cls(blocks=blocks, **rest)
        except (KeyError, TypeError) as exc:
            raise UserError(f"not an architecture description ({exc}); expected keys "
                            "'blocks' (list of op/expand/kernel/se_ratio/skip/filters/layers/stride), "
                            "optional stem_filters, stem_stride, head_filters, act, name") from None

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
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

    def with_name(self, name: str) -> "Architecture":
        return replace(self, name=name)

    # ---- transforms -----------------------------------------------------------------------
    def scaled(self, width_mult: float) -> "Architecture":
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


def _split_opts(item: str) -> tuple[list[str], dict[str, str]]:
    """Split `ir_r2_k3_s2` into flags and key->value pairs, the way timm/TF decoders do."""
    flags, opts = [], {}
    for tok in item.split("_"):
        m = re.fullmatch(r"([a-z]+?)(\d.*)", tok)
        if m and m.group(1) in ("r", "k", "s", "e", "c", "i", "o", "se"):
            opts[m.group(1)] = m.group(2)
        else:
            flags.append(tok)
    return flags, opts


def _num_opt(opts: dict[str, str], key: str, item: str, cast=int, default=None):
    if key not in opts:
        if default is not None:
            return default
        raise UserError(f"block string {item!r} lacks '{key}<number>'")
    try:
        return cast(opts[key])
    except ValueError:
        raise UserError(f"block string {item!r}: '{key}{opts[key]}' is not a number") from None


def parse_arch_string(text: str) -> Architecture:
    """Parse a timm-style or TF-style architecture string (comma- or space-separated items)."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not items:
        raise UserError("empty architecture string")
    stem_filters, stem_stride, head, act = None, 2, 1280, "relu"
    blocks: list[BlockSpec] = []
    first_in = None
    for item in items:
        head_tok = item.split("_", 1)[0]
        flags, opts = _split_opts(item)
        if head_tok == "stem":
            stem_filters = _num_opt(opts, "c", item)
            stem_stride = _num_opt(opts, "s", item, default=2)
            acts = [f for f in flags if f in _TOKEN_ACT]
            act = _TOKEN_ACT[acts[0]] if acts else "relu"
        elif head_tok == "head":
            head = _num_opt(opts, "c", item)
        elif head_tok in ("ds", "ir", "cn"):
            blocks.append(_parse_timm_block(head_tok, flags, opts, item))
        elif re.fullmatch(r"r\d+", head_tok):
            b, in_f = _parse_tf_block(flags, opts, item)
            if first_in is None:
                first_in = in_f
            blocks.append(b)
        else:
            raise UserError(f"cannot read {item!r} in the architecture string: expected timm block "
                            "strings like 'ir_r2_k3_s2_e6_c24_se0.25' or TF block strings like "
                            "'r2_k3_s22_e6_i16_o24_se0.25'")
    if not blocks:
        raise UserError(f"no blocks in architecture string {text!r}")
    if stem_filters is None:
        stem_filters = first_in if first_in is not None else 32
    return Architecture(blocks=tuple(blocks), stem_filters=stem_filters, stem_stride=stem_stride,
                        head_filters=head, act=act)


def _parse_timm_block(kind: str, flags: list[str], opts: dict[str, str], item: str) -> BlockSpec:
    op = {"ds": "ds", "ir": "mbconv", "cn": "conv"}[kind]
    expand = _num_opt(opts, "e", item, float, default=1.0)
    if op == "ds":
        expand = 1.0
    if op == "conv":
        skip = "pool" if "pool" in flags else ("identity" if "skip" in flags else "none")
    else:
        skip = "pool" if "pool" in flags else ("none" if "noskip" in flags else "identity")
    return BlockSpec(op=op, expand=expand, kernel=_num_opt(opts, "k", item),
                     se_ratio=_num_opt(opts, "se", item, float, default=0.0), skip=skip,
                     filters=_num_opt(opts, "c", item), layers=_num_opt(opts, "r", item),
                     stride=_num_opt(opts, "s", item))


def _parse_tf_block(flags: list[str], opts: dict[str, str], item: str) -> tuple[BlockSpec, int]:
    s = opts.get("s", "")
    if len(s) != 2 or not s.isdigit() or s[0] != s[1]:
        raise UserError(f"block string {item!r}: strides must be a pair of equal digits like s11 or s22")
    expand = _num_opt(opts, "e", item, float)
    op = "conv" if "conv" in flags else ("ds" if expand == 1 else "mbconv")
    skip = "pool" if "pool" in flags else ("none" if "noskip" in flags else "identity")
    b = BlockSpec(op=op, expand=expand, kernel=_num_opt(opts, "k", item),
                  se_ratio=_num_opt(opts, "se", item, float, default=0.0), skip=skip,
                  filters=_num_opt(opts, "o", item), layers=_num_opt(opts, "r", item),
                  stride=int(s[0]))
    return b, _num_opt(opts, "i", item)


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
        for o in self.ops:
            BlockSpec(o.op, o.expand, 3, 0, "none", 8, 1, 1)  # validates op and expansion

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def default(cls) -> "SearchSpace":
        """MnasNet's space on the MobileNetV2 skeleton (paper section 4.1)."""
        return cls.from_dict(DEFAULT_SPACE)

    @classmethod
    def cifar(cls) -> "SearchSpace":
        """The same choices on a 32x32 skeleton: stride-1 stem and one stride-2 stage less."""
        return cls.from_dict(CIFAR_SPACE)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown key(s) in space definition: {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(known))}")
        try:
            data = dict(d)
            data["ops"] = tuple(_op_choice(o) for o in data.get("ops", ()))
            for key in ("base_filters", "base_layers", "strides", "kernels", "se_ratios", "skips",
                        "filter_multipliers", "layer_deltas"):
                if key in data:
                    data[key] = tuple(data[key])
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"bad space definition: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = [{"op": o.op, "expand": o.expand} for o in self.ops]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def load(cls, name_or_path: str | Path | None) -> "SearchSpace":
        """A named space (`mnasnet`, `mnasnet_cifar`) or a YAML/JSON file."""
        if name_or_path is None or str(name_or_path) in ("mnasnet", "default"):
            return cls.default()
        if str(name_or_path) in ("mnasnet_cifar", "cifar"):
            return cls.cifar()
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"space {str(name_or_path)!r} is neither a known space (mnasnet, "
                            "mnasnet_cifar) nor a file; pass a YAML/JSON space file")
        return cls.from_dict(_load_mapping(path, "space"))

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
        for t, n, name in zip(tokens, sizes, self.decision_names()):
            if not 0 <= int(t) < n:
                raise UserError(f"token {t} for {name} is out of range 0..{n - 1}")
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
            for key, value in zip(DECISIONS, values):
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

    def mutate(self, arch: Architecture, rng: random.Random | int | None = None) -> Architecture:
        """Change exactly one decision to another value that changes the architecture."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        tokens = self.encode(arch)
        sizes = self.decision_sizes()
        candidates = [(i, v) for i, n in enumerate(sizes) for v in range(n) if v != tokens[i]]
        rng.shuffle(candidates)
        for i, v in candidates:
            new = list(tokens)
            new[i] = v
            child = self.decode(new)
            if child != arch:
                return child
        raise UserError(f"space {self.name!r} has a single architecture; nothing to mutate")

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


def _op_choice(o: Any) -> OpChoice:
    if isinstance(o, OpChoice):
        return o
    if isinstance(o, str):  # "conv", "ds", "mbconv3", "mbconv6"
        m = re.fullmatch(r"(conv|ds|mbconv)(\d+(?:\.\d+)?)?", o)
        if not m or (m.group(1) == "mbconv" and not m.group(2)):
            raise UserError(f"unknown op choice {o!r}; use conv, ds or mbconv<expand> (e.g. mbconv6)")
        return OpChoice(m.group(1), _num(float(m.group(2))) if m.group(2) else 1)
    if isinstance(o, dict):
        return OpChoice(o.get("op", ""), _num(float(o.get("expand", 1))))
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
