"""`Supernet`: one network that holds every architecture of a `SearchSpace` as a path."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mnas.architecture import Architecture, BlockSpec
from mnas.errors import UserError
from mnas.model import TF_BN_EPS, init_tf_
from mnas.space import OpChoice, SearchSpace
from mnas.supernet import stopping
from mnas.supernet.modules import SuperHead, SuperLayer, build_stem, layer_bounds

SKIP_ORDER = ("pool", "identity", "none")  # most shortcut parameters first


class Supernet(nn.Module):
    """Every architecture of `space`, at `resolution`, as a path through shared weights.

    The skeleton is the one `Architecture.for_resolution(resolution, skeleton)` gives, so a 224-px
    space used with 32-px data gets the CIFAR skeleton, exactly as training does. `forward(x, arch)`
    runs one path; `arch` is an architecture of the space (as `space.decode` gives it) or the same
    architecture after `for_resolution`.
    """

    def __init__(self, space: SearchSpace, num_classes: int, resolution: int | None = None, *,
                 skeleton: str = "auto", dropout: float = 0.2, bn_momentum: float = 0.1,
                 bn_eps: float = TF_BN_EPS, in_chans: int = 3, zero_init_classifier: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise UserError(f"num_classes must be >= 1 (got {num_classes})")
        if not 0 <= dropout < 1:
            raise UserError(f"dropout must lie in [0, 1) (got {dropout})")
        self.space = space
        self.num_classes = int(num_classes)
        self.resolution = int(resolution or space.resolution)
        self.skeleton = skeleton
        self.dropout = float(dropout)
        self.bn_momentum = bn_momentum
        self.bn_eps = bn_eps
        self.in_chans = in_chans
        self.runnable = self._resolve_space_arch(space.decode([0] * len(space.decision_sizes())))
        bn = {"eps": bn_eps, "momentum": bn_momentum}
        self.stem = build_stem(space, self.runnable, bn, in_chans)
        blocks = []
        for positions in layer_bounds(space, self.runnable):
            blocks.append(nn.ModuleList(SuperLayer(b, space, space.act, bn, cases) for b, cases in positions))
        self.blocks = nn.ModuleList(blocks)
        widest_last = max(space.block_choices(space.num_blocks - 1)["filters"])
        self.head = SuperHead(widest_last, space.head_filters, num_classes, space.act, bn, dropout)
        init_tf_(self)  # kernel transforms keep their identity start (init_tf_ touches conv/BN/linear only)
        if zero_init_classifier:  # as the cifar recipe's stable_init_: the loss starts at log(classes)
            nn.init.zeros_(self.head.classifier.weight)
            nn.init.zeros_(self.head.classifier.bias)

    # ---- paths ---------------------------------------------------------------------------------
    def _resolve_space_arch(self, arch: Architecture) -> Architecture:
        return arch.for_resolution(self.resolution, self.skeleton)

    def resolve(self, arch: Architecture) -> Architecture:
        """The runnable architecture (after `for_resolution`) of a path; UserError if not in the space."""
        if self.space.contains(arch):
            return self._resolve_space_arch(arch)
        # Already resolved? Put the space's strides back and check it maps onto itself.
        if len(arch.blocks) == self.space.num_blocks:
            back = replace(arch, stem_stride=self.space.stem_stride,
                           blocks=tuple(replace(b, stride=s) for b, s in zip(arch.blocks, self.space.strides, strict=True)))
            if self.space.contains(back) and self._resolve_space_arch(back) == arch:
                return arch
        raise UserError(f"architecture {arch.name or arch.id} is not a path of this supernet (space "
                        f"{self.space.name!r} at {self.resolution} px); `mnas space info` lists its choices")

    def _extreme(self, largest: bool) -> Architecture:
        blocks = []
        pick = max if largest else min
        skip_rank = {s: i for i, s in enumerate(SKIP_ORDER if largest else tuple(reversed(SKIP_ORDER)))}
        skip = min(self.space.skips, key=lambda s: skip_rank[s])
        for i in range(self.space.num_blocks):
            c = self.space.block_choices(i)
            width, kernel = pick(c["filters"]), pick(c["kernel"])
            # The op with the most (fewest) multiply-adds per output pixel at this block's width.
            ops = sorted(c["op"], key=lambda o: op_macs_per_pixel(o, width, kernel), reverse=largest)
            op: OpChoice = ops[0]
            blocks.append(BlockSpec(op.op, op.expand, kernel, pick(c["se_ratio"]), skip, width,
                                    pick(c["layers"]), self.space.strides[i]))
        return Architecture(blocks=tuple(blocks), stem_filters=self.space.stem_filters,
                            stem_stride=self.space.stem_stride, head_filters=self.space.head_filters,
                            act=self.space.act, name="largest" if largest else "smallest")

    def largest(self) -> Architecture:
        """The sandwich rule's teacher: every decision at its largest (see the package docstring)."""
        return self._extreme(largest=True)

    def smallest(self) -> Architecture:
        """Every decision at its smallest."""
        return self._extreme(largest=False)

    # ---- computing -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        path = self.resolve(arch)
        x = self.stem(x)
        abortable = stopping.step_abortable() and x.requires_grad  # a signal stops a training step midway
        for i, spec in enumerate(path.blocks):
            for j in range(spec.layers):
                if abortable:
                    stopping.check_step()
                    x.register_hook(stopping.in_step_hook)
                x = self.layer(i, j)(x, spec, spec.stride if j == 0 else 1)
        return self.head(x)

    def layer(self, block: int, position: int) -> SuperLayer:
        """Layer `position` of block `block` (every path with enough layers runs it)."""
        layers = self.blocks[block]
        assert isinstance(layers, nn.ModuleList)
        layer = layers[position]
        assert isinstance(layer, SuperLayer)
        return layer

    def config(self) -> dict[str, Any]:
        """Everything besides the weights that rebuilds this supernet (stored with it; plain data)."""
        return {"space": self.space.to_dict(), "num_classes": self.num_classes, "resolution": self.resolution,
                "skeleton": self.skeleton, "dropout": self.dropout, "bn_momentum": self.bn_momentum,
                "bn_eps": self.bn_eps, "in_chans": self.in_chans}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Supernet:
        """The supernet `config()` describes, freshly initialised (load the weights after)."""
        return cls(SearchSpace.from_dict(config["space"]), int(config["num_classes"]), int(config["resolution"]),
                   skeleton=str(config["skeleton"]), dropout=float(config["dropout"]),
                   bn_momentum=float(config["bn_momentum"]), bn_eps=float(config["bn_eps"]),
                   in_chans=int(config.get("in_chans", 3)))


def op_macs_per_pixel(op: OpChoice, width: int, kernel: int) -> float:
    """Multiply-adds per output pixel of one op at input = output `width` (orders ops by size)."""
    if op.op == "conv":
        return kernel * kernel * width * width
    if op.op == "ds":
        return kernel * kernel * width + width * width
    mid = width * op.expand
    return (width * mid if mid != width else 0) + kernel * kernel * mid + mid * width
