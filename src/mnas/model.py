"""Build a plain PyTorch module from an `Architecture`.

The module depends on nothing from mnas at inference time (only torch.nn), so torch.onnx,
litert-torch and TorchScript export it as is. Module order and parameter shapes follow timm's
EfficientNet family and torchvision's MNASNet, which is what lets the parity tests copy their
weights by order and shape.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from mnas.architecture import Architecture, BlockSpec, adds_shortcut
from mnas.errors import UserError

# TF's BatchNorm defaults in MnasNet (momentum 0.99 in TF terms = 0.01 in PyTorch's, eps 1e-3).
TF_BN_MOMENTUM = 0.01
TF_BN_EPS = 1e-3


def make_act(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "hard_swish": nn.Hardswish}
    if name not in acts:
        raise UserError(f"unknown activation {name!r}; choose one of {', '.join(acts)}")
    return acts[name](inplace=True)


class ConvBnAct(nn.Sequential):
    """conv (no bias) -> BN -> optional activation, with symmetric k//2 padding like timm."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", bn: dict | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, **(bn or {})),
        ]
        if act:
            layers.append(make_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """SE: global mean -> 1x1 reduce (bias) -> act -> 1x1 expand (bias) -> sigmoid gate."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_act(act)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * torch.sigmoid(s)


class Shortcut(nn.Module):
    """The `pool` skip on a layer that changes shape: avg-pool (kernel = stride), then 1x1 conv + BN
    when widths differ (the ResNet-D shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, bn: dict) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        self.proj = ConvBnAct(cin, cout, 1, act=None, bn=bn) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class Layer(nn.Module):
    """One layer of a block: the op's body plus its shortcut (see mnas.space for skip semantics)."""

    def __init__(self, spec: BlockSpec, cin: int, stride: int, act: str, bn: dict) -> None:
        super().__init__()
        cout, k = spec.filters, spec.kernel
        se_width = max(1, int(cin * spec.se_ratio)) if spec.se_ratio > 0 else 0
        body: list[tuple[str, nn.Module]] = []
        if spec.op == "conv":  # regular conv: conv kxk -> BN -> act -> [SE]
            body.append(("conv", ConvBnAct(cin, cout, k, stride, act=act, bn=bn)))
            if se_width:
                body.append(("se", SqueezeExcite(cout, se_width, act)))
        elif spec.op == "ds":  # depthwise kxk -> BN -> act -> [SE] -> pointwise -> BN
            body.append(("conv_dw", ConvBnAct(cin, cin, k, stride, groups=cin, act=act, bn=bn)))
            if se_width:
                body.append(("se", SqueezeExcite(cin, se_width, act)))
            body.append(("conv_pw", ConvBnAct(cin, cout, 1, act=None, bn=bn)))
        else:  # MBConv: [expand 1x1 -> BN -> act] -> dw kxk -> BN -> act -> [SE] -> project -> BN
            mid = int(round(cin * spec.expand))
            if mid != cin:
                body.append(("conv_pw", ConvBnAct(cin, mid, 1, act=act, bn=bn)))
            body.append(("conv_dw", ConvBnAct(mid, mid, k, stride, groups=mid, act=act, bn=bn)))
            if se_width:
                body.append(("se", SqueezeExcite(mid, se_width, act)))
            body.append(("conv_pwl", ConvBnAct(mid, cout, 1, act=None, bn=bn)))
        self.body = nn.Sequential(OrderedDict(body))
        same_shape = stride == 1 and cin == cout
        self.has_skip = adds_shortcut(spec.skip, cin, spec.filters, stride)
        self.shortcut = Shortcut(cin, cout, stride, bn) if self.has_skip and not same_shape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.has_skip:
            return out
        return out + (self.shortcut(x) if self.shortcut is not None else x)


class MnasModel(nn.Module):
    """stem -> blocks -> head (1x1 conv, BN, act, global pool, dropout, linear)."""

    def __init__(self, arch: Architecture, num_classes: int, dropout: float, bn: dict,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.arch = arch  # plain data: lets a latency backend rebuild the network from a file
        act = arch.act
        self.stem = ConvBnAct(in_chans, arch.stem_filters, 3, arch.stem_stride, act=act, bn=bn)
        blocks = []
        cin = arch.stem_filters
        for spec in arch.blocks:
            layers = []
            for j in range(spec.layers):
                layers.append(Layer(spec, cin, spec.stride if j == 0 else 1, act, bn))
                cin = spec.filters
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBnAct(cin, arch.head_filters, 1, act=act, bn=bn)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(arch.head_filters, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def init_tf_(model: nn.Module) -> None:
    """TF MnasNet init: conv N(0, sqrt(2 / (k*k*out/groups))), dense U(+-1/sqrt(classes)), BN 1/0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def build_model(arch: Architecture, num_classes: int = 1000, width_mult: float = 1.0,
                dropout: float = 0.2, bn_eps: float = TF_BN_EPS, bn_momentum: float = TF_BN_MOMENTUM,
                in_chans: int = 3) -> nn.Module:
    """A plain `nn.Module` for `arch` (scaled by `width_mult`; the 1280 head is never scaled)."""
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1 (got {num_classes})")
    if not 0 <= dropout < 1:
        raise UserError(f"dropout must lie in [0, 1) (got {dropout})")
    model = MnasModel(arch.scaled(width_mult), num_classes, dropout,
                      {"eps": bn_eps, "momentum": bn_momentum}, in_chans)
    init_tf_(model)
    return model
