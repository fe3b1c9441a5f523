"""Training recipes as data, and the one learning-rate schedule every run uses.

A recipe is everything about *how* a network is trained that is not the network or the data:
optimiser, learning rate per 256 images, schedule and warm-up, regularisation, BatchNorm settings.
Full training (`fit`) takes a recipe by name; the proxy (`train_proxy`) takes the same fields
from the search config's `proxy` section. Both turn them into a learning-rate function through
`lr_schedule`, so there is one place where a schedule is defined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mnas.errors import UserError
from mnas.optim import SCHEDULES, cosine_lr, mnasnet_lr

#: Peak learning rate per 256 images when a proxy config leaves `lr` empty.
DEFAULT_LR_PER_256 = {"sgd": 0.2, "rmsprop": 0.016, "adamw": 0.002}


@dataclass(frozen=True)
class Recipe:
    """A full training recipe. Learning rates are per 256 images and scale with the batch size.

    Warm-up lasts `warmup_epochs`, but never more than a tenth of the run, so a short run still
    reaches its peak rate.
    """

    name: str
    optimizer: str
    base_lr: float
    batch_size: int
    schedule: str  # "mnasnet" (warm-up then x0.97 every 2.4 epochs) | "cosine"
    warmup_epochs: float
    weight_decay: float
    decay_biases: bool
    label_smoothing: float
    ema_decay: float | None
    dropout: float
    bn_momentum: float
    bn_eps: float = 1e-3
    stable_init: bool = False  # zero classifier + zero last BN of residual layers (see stable_init_)
    description: str = ""

    def warmup_steps(self, epochs: int, steps_per_epoch: int) -> int:
        return int(min(self.warmup_epochs * steps_per_epoch, 0.1 * epochs * steps_per_epoch))


RECIPES: dict[str, Recipe] = {
    # The paper's / tensorflow/tpu mnasnet_main.py recipe (reference sheet section 3).
    "mnasnet": Recipe(
        name="mnasnet", optimizer="rmsprop", base_lr=0.016, batch_size=128, schedule="mnasnet",
        warmup_epochs=5.0, weight_decay=1e-5, decay_biases=True, label_smoothing=0.1,
        ema_decay=0.9999, dropout=0.2, bn_momentum=0.01,
        description="TF MnasNet: RMSProp-TF (0.9/0.9/1e-3), lr 0.016*batch/256, 5 warm-up epochs, "
        "x0.97 every 2.4 epochs, wd 1e-5 except BN, label smoothing 0.1, EMA 0.9999, dropout 0.2, BN momentum 0.99 (TF)",
    ),
    # CIFAR in few epochs: batch 64 (twice the steps of 128 per epoch; CPU throughput is the same),
    # SGD Nesterov with a short warm-up into a cosine decay to zero, the usual pad-4 crop + flip,
    # weight decay 5e-4 on conv/linear weights only, PyTorch's faster BN momentum (0.1) so running
    # statistics settle within a few hundred steps, no EMA.
    "cifar": Recipe(
        name="cifar", optimizer="sgd", base_lr=0.2, batch_size=64, schedule="cosine",
        warmup_epochs=1.0, weight_decay=5e-4, decay_biases=False, label_smoothing=0.1,
        ema_decay=None, dropout=0.2, bn_momentum=0.1, stable_init=True,
        description="SGD Nesterov 0.9, batch 64, lr 0.05 (0.2 per 256), warm-up min(1 epoch, 10%), cosine to 0, "
        "wd 5e-4 on weights (not BN, not biases), label smoothing 0.1, dropout 0.2, BN momentum 0.1, "
        "zero-init classifier and last BN of residual layers",
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


def lr_schedule(schedule: str, *, peak: float, total_steps: int, warmup_steps: int, steps_per_epoch: int,
                batch_size: int) -> Callable[[int], float]:
    """The learning rate at each step: a pure function, so a resumed run gets the same rates.

    "cosine": linear warm-up to `peak`, then half a cosine to 0 at `total_steps`;
    "mnasnet": the paper's warm-up then x0.97 every 2.4 epochs (staircase from step 0);
    "constant": `peak` throughout.
    """
    if schedule == "cosine":
        return lambda s: cosine_lr(s, total_steps, peak, warmup_steps)
    if schedule == "mnasnet":
        base = peak * 256.0 / batch_size
        return lambda s: mnasnet_lr(s, steps_per_epoch, batch_size, base, warmup_steps=warmup_steps)
    if schedule == "constant":
        return lambda s: peak
    raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


def proxy_warmup_steps(schedule: str, fraction: float | None, total_steps: int) -> int:
    """Warm-up of a proxy run: `fraction` of its steps (default 5% for cosine, 10% for mnasnet)."""
    if fraction is None:
        fraction = {"cosine": 0.05, "mnasnet": 0.1}.get(schedule, 0.0)
    return int(math.floor(fraction * total_steps))
