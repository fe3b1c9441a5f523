"""Supernet training for experiments and tests: `train_supernet`, a supernet trained in place for a
number of epochs or steps, with no checkpoints. It is a thin use of the project's one training path
(a `Recipe`, `mnas.train.engine.build_engine`, `Engine.train_epoch`) driving `SupernetStep`; real
runs (checkpoints, resume, progress, DDP) go through `mnas.supernet.fit.fit_supernet`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from mnas.data import DatasetSplits
from mnas.errors import UserError
from mnas.optim import param_groups
from mnas.supernet.io import save_supernet
from mnas.supernet.network import Supernet
from mnas.supernet.step import SupernetStep
from mnas.train.engine import SpeedOptions, build_engine, train_steps_per_epoch
from mnas.train.recipes import RECIPES, Recipe

#: `train_supernet`'s warm-up: half an epoch (the cifar recipe's is one), at most 10% of the run.
WARMUP_EPOCHS = 0.5


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
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    rule: str = "sandwich",
    num_random: int = 2,
    label_smoothing: float | None = None,
    warmup_epochs: float = WARMUP_EPOCHS,
    seed: int = 0,
    max_steps: int | None = None,
    channels_last: bool = True,
    out: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    recipe: Recipe | None = None,
) -> dict[str, Any]:
    """Train `supernet` in place on `data.train`; returns per-epoch records and totals.

    `recipe` (default: the cifar recipe: SGD Nesterov, batch 64, peak 0.2 x batch/256, weight decay
    5e-4, label smoothing 0.1, cosine to zero) with these overrides where given: `batch_size`,
    `lr` (the peak learning rate), `weight_decay`, `label_smoothing`, `warmup_epochs` (linear over
    min(warmup_epochs, 10% of the run)). Dropout and BatchNorm are the supernet's own. With `out`,
    the supernet is saved there (`supernet.pt`) with the data description and these settings in its
    meta."""
    base = recipe or RECIPES["cifar"]
    recipe = replace(
        base, warmup_epochs=warmup_epochs, warmup_fraction=None, lr=base.lr if lr is None else lr,
        batch_size=base.batch_size if batch_size is None else batch_size,
        weight_decay=base.weight_decay if weight_decay is None else weight_decay,
        label_smoothing=base.label_smoothing if label_smoothing is None else label_smoothing,
    )
    if recipe.batch_size < 1 or epochs <= 0:
        raise UserError("batch_size and epochs must be positive")
    device = next(supernet.parameters()).device
    step_fn = SupernetStep(supernet, rule=rule, num_random=num_random, label_smoothing=recipe.label_smoothing, seed=seed)
    steps_per_epoch = train_steps_per_epoch(data, recipe.batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    if max_steps is not None:
        total = min(total, max_steps)
    engine = build_engine(supernet, data, recipe, total_steps=total, device=device, seed=seed, step_fn=step_fn,
                          speed=SpeedOptions(amp=False, channels_last=channels_last, fused=False),
                          param_groups=supernet_param_groups(supernet, recipe.weight_decay))
    settings = {"epochs": epochs, "batch_size": recipe.batch_size, "lr": recipe.peak_lr(),
                "weight_decay": recipe.weight_decay, "rule": rule, "num_random": num_random,
                "label_smoothing": recipe.label_smoothing, "warmup_steps": recipe.warmup_steps(total, steps_per_epoch),
                "seed": seed, "steps": total}
    records: list[dict[str, Any]] = []
    epoch = 0
    t_run = time.perf_counter()
    while engine.step < total:
        stats, _, reason = engine.train_epoch(epoch, max_steps=total)
        if reason == "diverged":
            raise UserError(f"supernet training diverged in epoch {epoch + 1} (step {engine.step}); "
                            "lower the learning rate")
        record = {"epoch": epoch + 1, "step": engine.step, "train_loss": stats.loss, "train_acc": stats.acc,
                  "images_per_s": stats.seen / stats.seconds if stats.seconds else 0.0, "seconds": stats.seconds}
        records.append(record)
        if on_epoch is not None:
            on_epoch(record)
        epoch += 1
    train_seconds = sum(r["seconds"] for r in records)
    images = sum(r["images_per_s"] * r["seconds"] for r in records)
    summary = {"records": records, "steps": engine.step, "seconds": time.perf_counter() - t_run, "settings": settings,
               "images_per_s": images / train_seconds if train_seconds else 0.0}
    if out is not None:
        summary["path"] = str(save_supernet(supernet, out, {"data": data.describe(), "training": settings, **(meta or {})}))
    return summary
