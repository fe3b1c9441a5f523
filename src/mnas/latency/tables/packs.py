"""Many table units per exported model, so building a table pays one conversion per pack.

A pack is one torch module holding K independent units, each with its own input and output;
every backend turns it into its file format and times each unit of it (`Backend.export_pack` /
`load_pack`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mnas.latency.tables.units import Unit, build_unit, unit_input_shape


class PackModule(nn.Module):
    """forward(x0, ..., xK-1) -> (unit0(x0), ..., unitK-1(xK-1))."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.units = nn.ModuleList(modules)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m, x in zip(self.units, xs, strict=True))


def pack_module(units: Sequence[Unit], seed: int = 0) -> tuple[PackModule, tuple[torch.Tensor, ...]]:
    """The pack in eval mode and one example input per unit; the same weights for the same units
    (seeded, without touching the caller's random state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = [build_unit(u) for u in units]
        xs = tuple(torch.randn(*unit_input_shape(u)) for u in units)
    return PackModule(modules).eval(), xs
