"""One supernet training step: the forward(s) and backward(s) of a batch, for any training engine.

The engine zeroes the gradients, calls `step(model, x, y, step)`, then `optimizer.step()`. `model` is
the supernet or a wrapper that forwards `(x, arch)` to it (DistributedDataParallel, torch.compile).

DDP: every parameter receives a gradient in every backward (zero where the path does not use it),
so DDP runs without `find_unused_parameters`, all ranks reduce the same buckets, and a single
process trains exactly as one DDP rank does (an unused weight still sees weight decay and momentum,
as the unused slices of a shared weight always do). Paths come from (seed, step) only, so every rank
trains the same paths; the sandwich's first backwards run under `no_sync()` and the last one
all-reduces the accumulated gradients once.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnas.architecture import Architecture
from mnas.supernet import stopping
from mnas.supernet.network import Supernet
from mnas.supernet.sampling import RULES, step_paths


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (in-place distillation from the teacher's predictions)."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


class SupernetStep:
    """`step(model, x, y, step) -> (detached loss, logits)` for uniform single-path (SPOS) or
    sandwich-rule training with in-place distillation.

    sandwich: the largest path learns from the labels (with `label_smoothing`); the smallest path
    and `num_random` random paths learn from the largest path's softmax (detached). Gradients of all
    paths add up. Returned: the largest path's hard-label loss and logits (spos: the sampled path's).
    """

    def __init__(self, supernet: Supernet, rule: str = "sandwich", num_random: int = 2,
                 label_smoothing: float = 0.1, seed: int = 0) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown sampling rule {rule!r}; choose one of {', '.join(RULES)}")
        if num_random < 0:
            raise ValueError(f"num_random must be >= 0 (got {num_random})")
        self.supernet = supernet
        self.rule = rule
        self.num_random = num_random
        self.seed = seed
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def paths(self, step: int) -> list[Architecture]:
        return step_paths(self.supernet, self.rule, self.seed, step, self.num_random)

    def _anchor(self) -> torch.Tensor:
        """0 x (sum of every parameter): puts each parameter into the backward graph."""
        return torch.stack([p.sum() for p in self.supernet.parameters()]).sum() * 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        paths = self.paths(step)
        ddp = isinstance(model, DistributedDataParallel)
        stopping.watch()
        teacher_logits: torch.Tensor | None = None
        teacher_loss: torch.Tensor | None = None
        soft: torch.Tensor | None = None
        try:
            with stopping.in_step(enabled=not ddp):
                for i, path in enumerate(paths):
                    last = i == len(paths) - 1
                    sync = (model.no_sync() if isinstance(model, DistributedDataParallel) and not last
                            else contextlib.nullcontext())
                    with sync:
                        logits = model(x, path).float()
                        if soft is None:
                            loss = self.criterion(logits, y)
                            teacher_logits, teacher_loss = logits.detach(), loss.detach()
                            soft = torch.softmax(teacher_logits, dim=1)
                        else:
                            loss = soft_cross_entropy(logits, soft)
                        (loss + self._anchor()).backward()
        except stopping.Stopped:
            # a signal (see mnas.supernet.stopping): drop the step, so the optimiser's step after it
            # changes nothing (parameters without a gradient are skipped) and the engine stops
            for p in self.supernet.parameters():
                p.grad = None
            if teacher_loss is None or teacher_logits is None:  # cut in the teacher's pass: no numbers
                n = int(y.shape[0])
                return torch.zeros((), device=x.device), torch.zeros(n, self.supernet.num_classes, device=x.device)
        assert teacher_loss is not None and teacher_logits is not None
        return teacher_loss, teacher_logits
