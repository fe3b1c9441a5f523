"""Parameters and multiply-adds, counted by `torch.utils.flop_counter` (never by hand).

FlopCounterMode counts 2 FLOPs per multiply-add for convolutions and matrix products and nothing
for BN, bias, activations, pooling, the SE gate or residual adds, so MACs = FLOPs / 2 is exactly
the conv + linear multiply-add count the MnasNet paper and torchvision report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.model import build_model


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int
    resolution: int


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int = 224, in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass at batch 1 and `resolution` x `resolution`."""
    if not 8 <= resolution <= 2048:
        raise UserError(f"resolution {resolution} is out of range; use 32 to 320 (or up to 2048)")
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_chans, resolution, resolution))
    model.train(was_training)
    return counter.get_total_flops() // 2


def model_for(arch: Architecture, num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    """The module whose params and MACs an architecture has (BN and dropout do not count)."""
    return build_model(arch, num_classes=num_classes, width_mult=width_mult)


def profile(arch_or_module: Architecture | nn.Module, resolution: int = 224,
            num_classes: int = 1000, width_mult: float = 1.0) -> Profile:
    """Params and MACs of an architecture (built with `num_classes`) or of a ready module."""
    if isinstance(arch_or_module, Architecture):
        model = model_for(arch_or_module, num_classes, width_mult)
    else:
        model = arch_or_module
    return Profile(count_params(model), count_macs(model, resolution), resolution)
