"""Several processes through torchrun: DistributedDataParallel, never a hand-made all-reduce.

`torchrun --nproc_per_node N -m mnas train|supernet train ...` starts N copies; each sees its rank
in the environment. Every rank trains on its share of each global batch (`BatchLoader(shard=...)`)
and DDP averages the gradients, so a step is the same step a single process takes on the whole
batch. Rank 0 alone writes checkpoints, metrics and progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnas.errors import UserError


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says so (e.g. a signal that reached only some)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device: torch.device) -> Distributed | None:
    """The process group torchrun asked for (WORLD_SIZE > 1), else None (one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun started {world} processes but this machine has {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, device)
