"""The units a latency table keys: every layer (a `LayerConfig`), the stem and the head.

Each unit has a stable string key, a MAC count (for the regression that fills rare keys) and a
constructor that builds exactly the module `mnas.model` builds for it, so a table entry times the
same operators the whole network runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from mnas.architecture import Architecture, BlockSpec, LayerConfig
from mnas.space import SearchSpace

if TYPE_CHECKING:
    from torch import nn


def _out(size: int, stride: int) -> int:
    return -(-size // stride)


@dataclass(frozen=True)
class StemConfig:
    out_filters: int
    stride: int
    input_size: int
    act: str
    op: str = "stem"

    @property
    def key(self) -> str:
        return f"stem_i3_o{self.out_filters}_s{self.stride}_r{self.input_size}_{self.act}"


@dataclass(frozen=True)
class HeadConfig:
    in_filters: int
    out_filters: int
    num_classes: int
    input_size: int
    act: str
    op: str = "head"

    @property
    def key(self) -> str:
        return f"head_i{self.in_filters}_o{self.out_filters}_c{self.num_classes}_r{self.input_size}_{self.act}"


Unit = LayerConfig | StemConfig | HeadConfig


def arch_units(arch: Architecture, resolution: int, num_classes: int) -> list[Unit]:
    """stem, every layer, head: the units whose times add up to the network's."""
    layers = arch.layer_configs(resolution)
    last = layers[-1]
    size = _out(last.input_size, last.stride)
    return [StemConfig(arch.stem_filters, arch.stem_stride, resolution, arch.act), *layers,
            HeadConfig(last.out_filters, arch.head_filters, num_classes, size, arch.act)]


def space_at(space: SearchSpace, resolution: int) -> SearchSpace:
    """The space whose architectures are `arch.for_resolution(resolution)` of this space's: the
    skeleton that really runs at that input size (one rule: `Architecture.for_resolution`)."""
    skeleton = space.decode([0] * len(space.decision_sizes())).for_resolution(resolution)
    return replace(space, resolution=resolution, stem_stride=skeleton.stem_stride,
                   strides=tuple(b.stride for b in skeleton.blocks))


def space_units(space: SearchSpace, resolution: int, num_classes: int) -> list[Unit]:
    """Every distinct unit any architecture of the space can contain when it runs at
    `resolution`, in a stable order."""
    sp = space_at(space, resolution)
    layers = sorted(sp.layer_configs(), key=lambda c: c.key)
    size = _out(resolution, sp.stem_stride)
    for s in sp.strides:
        size = _out(size, s)
    last_widths = sorted(set(sp.block_choices(sp.num_blocks - 1)["filters"]))
    heads = [HeadConfig(w, sp.head_filters, num_classes, size, sp.act) for w in last_widths]
    return [StemConfig(sp.stem_filters, sp.stem_stride, resolution, sp.act), *layers, *heads]


def unit_input_shape(unit: Unit) -> tuple[int, int, int, int]:
    cin = 3 if isinstance(unit, StemConfig) else unit.in_filters
    return (1, cin, unit.input_size, unit.input_size)


def build_unit(unit: Unit) -> nn.Module:
    """The module mnas.model builds for this unit (eval mode, TF BatchNorm settings)."""
    from torch import nn  # lazy: tables and predictions use units without torch; only building needs it

    from mnas.model import TF_BN_EPS, TF_BN_MOMENTUM, ConvBnAct, Layer

    bn = {"eps": TF_BN_EPS, "momentum": TF_BN_MOMENTUM}
    if isinstance(unit, StemConfig):
        return ConvBnAct(3, unit.out_filters, 3, unit.stride, act=unit.act, bn=bn).eval()
    if isinstance(unit, HeadConfig):
        return nn.Sequential(ConvBnAct(unit.in_filters, unit.out_filters, 1, act=unit.act, bn=bn),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                             nn.Linear(unit.out_filters, unit.num_classes)).eval()
    spec = BlockSpec(unit.op, unit.expand, unit.kernel, unit.se_ratio, unit.skip, unit.out_filters, 1, unit.stride)
    return Layer(spec, unit.in_filters, unit.stride, unit.act, bn).eval()


def unit_macs(unit: Unit) -> float:
    """Multiply-adds, analytically (used only to regress rare or missing keys)."""
    if isinstance(unit, StemConfig):
        o = _out(unit.input_size, unit.stride)
        return 27.0 * unit.out_filters * o * o
    if isinstance(unit, HeadConfig):
        s = unit.input_size
        return float(unit.in_filters * unit.out_filters * s * s + unit.out_filters * unit.num_classes)
    h, o, k = unit.input_size, _out(unit.input_size, unit.stride), unit.kernel
    cin, cout = unit.in_filters, unit.out_filters
    if unit.op == "conv":
        return float(k * k * cin * cout * o * o)
    if unit.op == "ds":
        return float(k * k * cin * o * o + cin * cout * o * o)
    mid = int(round(cin * unit.expand))
    expand = cin * mid * h * h if mid != cin else 0
    return float(expand + k * k * mid * o * o + mid * cout * o * o)


def unit_to_dict(unit: Unit) -> dict[str, Any]:
    return {"kind": type(unit).__name__, **asdict(unit)}


def unit_from_dict(d: dict[str, Any]) -> Unit:
    d = dict(d)
    kind = d.pop("kind")
    cls = {"LayerConfig": LayerConfig, "StemConfig": StemConfig, "HeadConfig": HeadConfig}[kind]
    return cls(**d)
