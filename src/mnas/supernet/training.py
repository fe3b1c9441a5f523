"""A minimal supernet training loop for experiments and tests (SGD Nesterov, warm-up + cosine,
mnas.data's device-side pipeline). The project's training engine (checkpoints, resume, progress,
DDP, CUDA speed options) drives the same `SupernetStep` for real runs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnas.data import BatchLoader, DatasetSplits, mix_seed
from mnas.errors import UserError
from mnas.optim import cosine_lr, param_groups
from mnas.supernet.io import save_supernet
from mnas.supernet.network import Supernet
from mnas.supernet.step import SupernetStep


def supernet_param_groups(supernet: nn.Module, weight_decay: float) -> list[dict]:
    """mnas.optim's groups (no decay on BN and biases), and no decay on the kernel transforms
    either: they start as the identity, and decay would pull them towards zero, not towards it."""
    transforms = {id(p) for name, p in supernet.named_parameters() if ".kernel_transforms." in name}
    groups = param_groups(supernet, weight_decay, decay_biases=False)
    decayed = [p for p in groups[0]["params"] if id(p) not in transforms]
    rest = [p for g in groups[1:] for p in g["params"]] + [p for p in groups[0]["params"] if id(p) in transforms]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train_supernet(
    supernet: Supernet,
    data: DatasetSplits,
    *,
    epochs: float = 1.0,
    batch_size: int = 64,
    lr: float | None = None,
    weight_decay: float = 5e-4,
    rule: str = "sandwich",
    num_random: int = 2,
    label_smoothing: float = 0.1,
    warmup_epochs: float = 0.5,
    seed: int = 0,
    max_steps: int | None = None,
    channels_last: bool = True,
    out: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `supernet` in place on `data.train`; returns per-epoch records and totals.

    lr: peak learning rate (default 0.2 x batch/256, the cifar recipe's). Warm-up is linear over
    min(warmup_epochs, 10% of the run), then cosine to zero. With `out`, the supernet is saved there
    (`supernet.pt`) with the data description and these settings in its meta."""
    if batch_size < 1 or epochs <= 0:
        raise UserError("batch_size and epochs must be positive")
    device = next(supernet.parameters()).device
    if channels_last:
        supernet.to(memory_format=torch.channels_last)
    step_fn = SupernetStep(supernet, rule=rule, num_random=num_random, label_smoothing=label_smoothing, seed=seed)
    steps_per_epoch = BatchLoader(data, data.train, batch_size, train=True).num_batches
    total = max(1, math.ceil(epochs * steps_per_epoch))
    if max_steps is not None:
        total = min(total, max_steps)
    peak = lr if lr is not None else 0.2 * batch_size / 256.0
    warm = int(min(warmup_epochs * steps_per_epoch, 0.1 * total))
    optimizer = torch.optim.SGD(supernet_param_groups(supernet, weight_decay), lr=peak, momentum=0.9, nesterov=True)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": peak, "weight_decay": weight_decay, "rule": rule,
                "num_random": num_random, "label_smoothing": label_smoothing, "warmup_steps": warm, "seed": seed,
                "steps": total}
    records: list[dict[str, Any]] = []
    step, epoch = 0, 0
    t_run = time.perf_counter()
    supernet.train()
    while step < total:
        torch.manual_seed(mix_seed(seed, epoch, 7))  # dropout draws, reseeded per epoch like mnas.train
        loader = BatchLoader(data, data.train, batch_size, train=True, device=device, seed=seed, epoch=epoch,
                             channels_last=channels_last)
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        for x, y in loader:
            if step >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, peak, warm)
            optimizer.zero_grad(set_to_none=True)
            loss, logits = step_fn(supernet, x, y, step)
            optimizer.step()
            step += 1
            n = y.shape[0]
            sums += torch.stack([loss.double() * n, (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device)])
        seconds = time.perf_counter() - t0
        loss_sum, correct, seen = sums.tolist()
        if not math.isfinite(loss_sum):
            raise UserError(f"supernet training diverged in epoch {epoch + 1} (step {step}); lower the learning rate")
        record = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "images_per_s": seen / seconds if seconds else 0.0, "seconds": seconds}
        records.append(record)
        if on_epoch is not None:
            on_epoch(record)
        epoch += 1
    train_seconds = sum(r["seconds"] for r in records)
    images = sum(r["images_per_s"] * r["seconds"] for r in records)
    summary = {"records": records, "steps": step, "seconds": time.perf_counter() - t_run, "settings": settings,
               "images_per_s": images / train_seconds if train_seconds else 0.0}
    if out is not None:
        summary["path"] = str(save_supernet(supernet, out, {"data": data.describe(), "training": settings, **(meta or {})}))
    return summary
