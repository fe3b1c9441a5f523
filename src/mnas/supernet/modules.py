"""The supernet's modules: weights at their widest shape, sliced per path at forward time.

Every sliced module keeps full-size `nn.Conv2d` / `nn.BatchNorm2d` / `nn.Linear` children as
parameter holders (so mnas.model.init_tf_ and the optimiser's weight-decay groups treat them like
any mnas model) and computes with `torch.nn.functional` on the leading slices a path asks for.
The sharing rules themselves are documented in the package docstring (`mnas.supernet`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnas.architecture import Architecture, BlockSpec, adds_shortcut
from mnas.model import ConvBnAct, make_act
from mnas.space import SearchSpace


def se_width(cin: int, se_ratio: float) -> int:
    """mnas.model's rule: the SE reduce width follows the LAYER INPUT width (0 = no SE)."""
    return max(1, int(cin * se_ratio)) if se_ratio > 0 else 0


def mid_width(cin: int, expand: float) -> int:
    """mnas.model's rule for the MBConv expanded width."""
    return int(round(cin * expand))


class SlicedBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the first `x.shape[1]` channels; running statistics updated in place in the slice.

    Same arithmetic as `nn.BatchNorm2d` (including momentum=None, the cumulative average used to
    re-estimate statistics), on views of the full-size buffers."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """`scale` (per channel, optional) multiplies the affine output: BN with weight*scale, bias*scale."""
        c = x.shape[1]
        assert self.running_mean is not None and self.running_var is not None  # always tracked here
        factor = self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        weight, bias = self.weight[:c], self.bias[:c]
        if scale is not None:
            weight, bias = weight * scale[:c], bias * scale[:c]
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias,
                            self.training, factor or 0.0, self.eps)


class SlicedConvBn(nn.Module):
    """conv (no bias) -> BN -> optional act, at the widest shape; a path uses leading slices.

    Smaller kernels are the centre of the next larger one times a learned (k*k x k*k) matrix per
    kernel size, initialised to the identity (Once-for-All's kernel transformation), so a 3x3 path
    starts as the centre of the 5x5 and may drift from it without disturbing the 5x5 path.
    `depthwise`: one filter per channel (groups = active channels)."""

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...], *, depthwise: bool = False,
                 act: str | None = None, bn: dict | None = None) -> None:
        super().__init__()
        if depthwise and cin != cout:
            raise ValueError("a depthwise conv keeps its width")
        self.kernels = tuple(sorted(set(kernels), reverse=True))
        kmax = self.kernels[0]
        self.depthwise = depthwise
        self.conv = nn.Conv2d(cin, cout, kmax, padding=kmax // 2, groups=cin if depthwise else 1, bias=False)
        self.bn = SlicedBatchNorm(cout, **(bn or {}))
        self.act = make_act(act) if act else None
        self.kernel_transforms = nn.ParameterDict(
            {f"k{k}": nn.Parameter(torch.eye(k * k)) for k in self.kernels[1:]})

    def weight(self, cin: int, cout: int, k: int) -> torch.Tensor:
        """The kernel a path with `cin` inputs, `cout` outputs and kernel size `k` uses."""
        w = self.conv.weight[:cout] if self.depthwise else self.conv.weight[:cout, :cin]
        size = self.kernels[0]
        for smaller in self.kernels[1:]:
            if smaller < k:
                break
            lo = (size - smaller) // 2
            centre = w[:, :, lo:lo + smaller, lo:lo + smaller]
            flat = centre.reshape(-1, smaller * smaller) @ self.kernel_transforms[f"k{smaller}"]
            w = flat.reshape(centre.shape)
            size = smaller
        if size != k:
            raise ValueError(f"kernel {k} is not one of this layer's kernels {self.kernels}")
        return w

    def forward(self, x: torch.Tensor, cout: int, k: int = 1, stride: int = 1,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        cin = x.shape[1]
        if self.depthwise:
            cout = cin
        out = F.conv2d(x, self.weight(cin, cout, k), None, stride, k // 2, 1, cin if self.depthwise else 1)
        out = self.bn(out, scale)
        return self.act(out) if self.act is not None else out


class SlicedSE(nn.Module):
    """Squeeze-excite on the first c channels with the first r reduce channels (mnas.model's SE)."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_act(act)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor, reduced: int) -> torch.Tensor:
        c = x.shape[1]
        b_reduce, b_expand = self.conv_reduce.bias, self.conv_expand.bias
        assert b_reduce is not None and b_expand is not None  # built with bias=True
        s = x.mean((2, 3), keepdim=True)
        s = F.conv2d(s, self.conv_reduce.weight[:reduced, :c], b_reduce[:reduced])
        s = F.conv2d(self.act(s), self.conv_expand.weight[:c, :reduced], b_expand[:c])
        return x * torch.sigmoid(s)


@dataclass(frozen=True)
class LayerBounds:
    """The widest shapes one layer position can take over the whole space."""

    cin: int  # widest input
    cout: int  # widest output
    mid: int  # widest MBConv expansion
    se: int  # widest SE reduce width
    stride: int
    needs_projection: bool  # some path has a pooling shortcut whose widths differ


class ConvFamily(nn.Module):
    """Regular conv: conv kxk -> BN -> act -> [SE on the output]."""

    def __init__(self, b: LayerBounds, kernels: tuple[int, ...], act: str, bn: dict, has_se: bool) -> None:
        super().__init__()
        self.conv = SlicedConvBn(b.cin, b.cout, kernels, act=act, bn=bn)
        self.se = SlicedSE(b.cout, b.se, act) if has_se else None

    def forward(self, x: torch.Tensor, spec: BlockSpec, stride: int, scale: torch.Tensor | None = None) -> torch.Tensor:
        se = se_width(x.shape[1], spec.se_ratio)
        out = self.conv(x, spec.filters, spec.kernel, stride, scale)
        return self.se(out, se) if (se and self.se is not None) else out


class DsFamily(nn.Module):
    """Depthwise-separable: depthwise kxk -> BN -> act -> [SE] -> pointwise -> BN."""

    def __init__(self, b: LayerBounds, kernels: tuple[int, ...], act: str, bn: dict, has_se: bool) -> None:
        super().__init__()
        self.conv_dw = SlicedConvBn(b.cin, b.cin, kernels, depthwise=True, act=act, bn=bn)
        self.se = SlicedSE(b.cin, b.se, act) if has_se else None
        self.conv_pw = SlicedConvBn(b.cin, b.cout, (1,), bn=bn)

    def forward(self, x: torch.Tensor, spec: BlockSpec, stride: int, scale: torch.Tensor | None = None) -> torch.Tensor:
        se = se_width(x.shape[1], spec.se_ratio)
        out = self.conv_dw(x, x.shape[1], spec.kernel, stride)
        if se and self.se is not None:
            out = self.se(out, se)
        return self.conv_pw(out, spec.filters, scale=scale)


class MbconvFamily(nn.Module):
    """MBConv: [expand 1x1 -> BN -> act] -> dw kxk -> BN -> act -> [SE] -> project 1x1 -> BN.

    Every expansion ratio slices the same expanded weights (mbconv3 is the first 3*cin channels of
    mbconv6); a ratio whose width equals the input skips the expansion conv, as in mnas.model."""

    def __init__(self, b: LayerBounds, kernels: tuple[int, ...], act: str, bn: dict, has_se: bool,
                 has_expansion: bool) -> None:
        super().__init__()
        self.conv_pw = SlicedConvBn(b.cin, b.mid, (1,), act=act, bn=bn) if has_expansion else None
        self.conv_dw = SlicedConvBn(b.mid, b.mid, kernels, depthwise=True, act=act, bn=bn)
        self.se = SlicedSE(b.mid, b.se, act) if has_se else None
        self.conv_pwl = SlicedConvBn(b.mid, b.cout, (1,), bn=bn)

    def forward(self, x: torch.Tensor, spec: BlockSpec, stride: int, scale: torch.Tensor | None = None) -> torch.Tensor:
        cin = x.shape[1]
        mid = mid_width(cin, spec.expand)
        se = se_width(cin, spec.se_ratio)
        out = x
        if mid != cin:
            if self.conv_pw is None:
                raise ValueError("this layer was built without an expansion conv")
            out = self.conv_pw(out, mid)
        out = self.conv_dw(out, mid, spec.kernel, stride)
        if se and self.se is not None:
            out = self.se(out, se)
        return self.conv_pwl(out, spec.filters, scale=scale)


#: Per op family, the part whose BN the residual scale multiplies (the body's last BN).
LAST_BN = {"conv": "conv", "ds": "conv_pw", "mbconv": "conv_pwl"}


class SuperLayer(nn.Module):
    """One layer position of a block: a body per op family present in the space, one shared
    pooling-shortcut projection (the shortcut does not depend on the op), and per op family a
    residual scale: a per-channel factor on the body's last BN, used only by paths that add a
    shortcut, starting at zero (so every residual layer starts as its shortcut, as
    `mnas.train.engine.stable_init_` does for a stand-alone network; a "none" path, which shares
    that BN, is not scaled). Extraction folds it into the BN's weight and bias."""

    def __init__(self, b: LayerBounds, space: SearchSpace, act: str, bn: dict, expansions: set[bool]) -> None:
        super().__init__()
        kernels = tuple(space.kernels)
        has_se = any(r > 0 for r in space.se_ratios)
        families: dict[str, nn.Module] = {}
        ops = {o.op for o in space.ops}
        if "conv" in ops:
            families["conv"] = ConvFamily(b, kernels, act, bn, has_se)
        if "ds" in ops:
            families["ds"] = DsFamily(b, kernels, act, bn, has_se)
        if "mbconv" in ops:
            families["mbconv"] = MbconvFamily(b, kernels, act, bn, has_se, has_expansion=True in expansions)
        self.families = nn.ModuleDict(families)
        self.residual_scales = nn.ParameterDict(
            {op: nn.Parameter(torch.zeros(b.cout)) for op in families} if set(space.skips) - {"none"} else {})
        self.stride = b.stride
        self.projection = SlicedConvBn(b.cin, b.cout, (1,), bn=bn) if b.needs_projection else None

    def forward(self, x: torch.Tensor, spec: BlockSpec, stride: int) -> torch.Tensor:
        cin, cout = x.shape[1], spec.filters
        if not adds_shortcut(spec.skip, cin, cout, stride):
            return self.families[spec.op](x, spec, stride)
        out = self.families[spec.op](x, spec, stride, self.residual_scales[spec.op])
        if stride == 1 and cin == cout:
            return out + x
        short = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else x
        if cin != cout:
            if self.projection is None:
                raise ValueError("this layer was built without a shortcut projection")
            short = self.projection(short, cout)
        return out + short


def layer_bounds(space: SearchSpace, skeleton: Architecture) -> list[list[tuple[LayerBounds, set[bool]]]]:
    """Per block, per layer position: the widest shapes and which expansion cases occur
    (True: some path expands, False: some path does not)."""
    se_max = max(space.se_ratios)
    expands = [o.expand for o in space.ops if o.op == "mbconv"]
    out: list[list[tuple[LayerBounds, set[bool]]]] = []
    in_widths: set[int] = {space.stem_filters}
    for i in range(space.num_blocks):
        choices = space.block_choices(i)
        widths = set(choices["filters"])
        stride0 = skeleton.blocks[i].stride
        positions = []
        for j in range(max(choices["layers"])):
            cins = in_widths if j == 0 else widths
            stride = stride0 if j == 0 else 1
            # only the first layer can change width (later ones map the block width to itself)
            needs_proj = j == 0 and "pool" in space.skips and any(ci != co for ci in cins for co in widths)
            cin_max, cout_max = max(cins), max(widths)
            mids = [mid_width(ci, e) for ci in cins for e in expands]
            expansion_cases = {mid_width(ci, e) != ci for ci in cins for e in expands}
            bounds = LayerBounds(cin=cin_max, cout=cout_max, mid=max(mids + [cin_max]),
                                 se=max(1, se_width(cin_max, se_max)), stride=stride, needs_projection=needs_proj)
            positions.append((bounds, expansion_cases))
        out.append(positions)
        in_widths = widths
    return out


class SuperHead(nn.Module):
    """The shared head: 1x1 conv (input sliced) -> BN -> act -> pool -> dropout -> linear."""

    def __init__(self, cin: int, head_filters: int, num_classes: int, act: str, bn: dict, dropout: float) -> None:
        super().__init__()
        self.conv = SlicedConvBn(cin, head_filters, (1,), act=act, bn=bn)
        self.head_filters = head_filters
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(head_filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x, self.head_filters)).flatten(1)
        return self.classifier(self.dropout(x))


def build_stem(space: SearchSpace, skeleton: Architecture, bn: dict, in_chans: int = 3) -> ConvBnAct:
    """The stem is not a decision: exactly mnas.model's stem, shared by every path."""
    return ConvBnAct(in_chans, space.stem_filters, 3, skeleton.stem_stride, act=space.act, bn=bn)
