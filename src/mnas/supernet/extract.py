"""Extraction: a path of the supernet as a plain `mnas.model.build_model` network.

The extracted network is an ordinary mnas model (same classes, parameter names, init-free copy of
the inherited weights), so it exports, times and fine-tunes like any other; it shares no memory
with the supernet.
"""

from __future__ import annotations

import torch
from torch import nn

from mnas.architecture import Architecture, BlockSpec
from mnas.model import ConvBnAct, Layer, MnasModel, SqueezeExcite, build_model
from mnas.supernet.modules import LAST_BN, SlicedBatchNorm, SlicedConvBn, SlicedSE, SuperLayer, mid_width, se_width
from mnas.supernet.network import Supernet


def _copy_bn(dst: nn.BatchNorm2d, src: SlicedBatchNorm) -> None:
    c = dst.num_features
    assert src.running_mean is not None and src.running_var is not None and src.num_batches_tracked is not None
    assert dst.running_mean is not None and dst.running_var is not None and dst.num_batches_tracked is not None
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _copy_conv_bn(dst: nn.Module, src: SlicedConvBn | None) -> None:
    if not isinstance(dst, ConvBnAct) or src is None:
        raise TypeError(f"cannot copy into {type(dst).__name__} from {type(src).__name__}")
    conv, bn = dst[0], dst[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    cout, k = conv.out_channels, conv.kernel_size[0]
    conv.weight.copy_(src.weight(conv.in_channels, cout, k))
    _copy_bn(bn, src.bn)


def _copy_se(dst: nn.Module, src: SlicedSE | None) -> None:
    if not isinstance(dst, SqueezeExcite) or src is None:
        raise TypeError(f"cannot copy into {type(dst).__name__} from {type(src).__name__}")
    r, c = dst.conv_reduce.out_channels, dst.conv_reduce.in_channels
    dst.conv_reduce.weight.copy_(src.conv_reduce.weight[:r, :c])
    dst.conv_expand.weight.copy_(src.conv_expand.weight[:c, :r])
    for d, s, n in ((dst.conv_reduce.bias, src.conv_reduce.bias, r), (dst.conv_expand.bias, src.conv_expand.bias, c)):
        assert d is not None and s is not None  # SE convs have biases
        d.copy_(s[:n])


def _copy_layer(dst: Layer, src: SuperLayer, spec: BlockSpec, cin: int) -> None:
    family = src.families[spec.op]
    body = dict(dst.body.named_children())
    expected = {"conv": {"conv"}, "ds": {"conv_dw", "conv_pw"}, "mbconv": {"conv_dw", "conv_pwl"}}[spec.op]
    if spec.op == "mbconv" and mid_width(cin, spec.expand) != cin:
        expected = expected | {"conv_pw"}
    if se_width(cin, spec.se_ratio):
        expected = expected | {"se"}
    if set(body) != expected:  # the model's layer layout changed: refuse rather than copy wrongly
        raise RuntimeError(f"mnas.model.Layer has parts {sorted(body)}, extraction expects {sorted(expected)}")
    for name, module in body.items():
        if name == "se":
            _copy_se(module, getattr(family, "se", None))
        else:
            _copy_conv_bn(module, getattr(family, name))
    if dst.shortcut is not None and isinstance(dst.shortcut.proj, ConvBnAct):
        _copy_conv_bn(dst.shortcut.proj, src.projection)
    if dst.has_skip:  # fold the residual scale into the body's last BN (weight and bias)
        last = body[LAST_BN[spec.op]]
        assert isinstance(last, ConvBnAct)
        bn = last[1]
        assert isinstance(bn, nn.BatchNorm2d)
        scale = src.residual_scales[spec.op][:bn.num_features]
        bn.weight.mul_(scale)
        bn.bias.mul_(scale)


@torch.no_grad()
def extract(supernet: Supernet, arch: Architecture) -> MnasModel:
    """`build_model(arch.for_resolution(res), num_classes)` carrying the path's inherited weights.

    BN running statistics are the supernet's (sliced); re-estimate them for the path before scoring
    (`mnas.supernet.reestimate_bn`). The result is in the supernet's train/eval mode."""
    path = supernet.resolve(arch)
    with torch.random.fork_rng(devices=[]):  # build_model's init draws numbers we overwrite anyway
        model = build_model(path, num_classes=supernet.num_classes, dropout=supernet.dropout,
                            bn_eps=supernet.bn_eps, bn_momentum=supernet.bn_momentum, in_chans=supernet.in_chans)
    assert isinstance(model, MnasModel)
    device = next(supernet.parameters()).device
    model.to(device)
    model.stem.load_state_dict(supernet.stem.state_dict())
    cin = path.stem_filters
    for i, spec in enumerate(path.blocks):
        block = model.blocks[i]
        assert isinstance(block, nn.Sequential)
        for j in range(spec.layers):
            layer = block[j]
            assert isinstance(layer, Layer)
            _copy_layer(layer, supernet.layer(i, j), spec, cin)
            cin = spec.filters
    _copy_conv_bn(model.head, supernet.head.conv)
    model.classifier.load_state_dict(supernet.head.classifier.state_dict())
    return model.train(supernet.training)
