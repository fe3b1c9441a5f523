"""Training recipes as data, the one rule that picks one by resolution, and the one learning-rate
schedule every run uses.

A recipe is everything about *how* a network is trained that is not the network or the data:
optimiser, learning rate, batch size, schedule and warm-up, regularisation, BatchNorm settings.
Every training config turns into a `Recipe` once, here: `run_recipe` (full training and the
supernet: a recipe by name, or `recipe_for(resolution)`), `proxy_recipe` (the search's proxy).
`mnas.train.engine.build_engine` is the one builder that turns a recipe into an engine, and
`Recipe.lr_fn` the one place a schedule is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from mnas.architecture import LOW_RESOLUTION_MAX
from mnas.errors import UserError
from mnas.optim import SCHEDULES, cosine_lr, mnasnet_lr
from mnas.train.settings import FitConfig, ProxyConfig

#: Peak learning rate per 256 images when a proxy config leaves `lr` empty.
DEFAULT_LR_PER_256 = {"sgd": 0.2, "rmsprop": 0.016, "adamw": 0.002}
#: The proxy's warm-up, as a share of its steps, when its config leaves `warmup` empty.
PROXY_WARMUP = {"cosine": 0.05, "mnasnet": 0.1}


@dataclass(frozen=True)
class Recipe:
    """A full training recipe. Learning rates are per 256 images and scale with the batch size
    (unless `lr` fixes the peak).

    Warm-up lasts `warmup_epochs`, but never more than a tenth of the run, so a short run still
    reaches its peak rate; or, with `warmup_fraction`, that share of the run's steps (the proxy's).
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
    lr: float | None = None  # a fixed peak learning rate, whatever the batch; None: base_lr x batch/256
    warmup_fraction: float | None = None  # warm-up as this share of the run's steps; None: warmup_epochs

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256.0

    def warmup_steps(self, total_steps: int, steps_per_epoch: int) -> int:
        if self.warmup_fraction is not None:
            return int(math.floor(self.warmup_fraction * total_steps))
        return int(min(self.warmup_epochs * steps_per_epoch, 0.1 * total_steps))

    def lr_fn(self, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
        """The learning rate at each step of a run of `total_steps` (see `lr_schedule`)."""
        return lr_schedule(self.schedule, peak=self.peak_lr(), total_steps=total_steps,
                           warmup_steps=self.warmup_steps(total_steps, steps_per_epoch),
                           steps_per_epoch=steps_per_epoch, batch_size=self.batch_size)


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


def recipe_for(resolution: int) -> Recipe:
    """The recipe a run gets when none is named: cifar for low-resolution data (at most
    `LOW_RESOLUTION_MAX` px, the inputs that also get the CIFAR skeleton), mnasnet above. The one
    place this rule lives."""
    return RECIPES["cifar" if resolution <= LOW_RESOLUTION_MAX else "mnasnet"]


def run_recipe(config: FitConfig, resolution: int) -> Recipe:
    """The recipe of a full (or supernet) training run: the one `config.recipe` names, else the one
    for the data's resolution; `config.batch_size`, when given, replaces the recipe's."""
    recipe = get_recipe(config.recipe) if config.recipe else recipe_for(resolution)
    return recipe if config.batch_size is None else replace(recipe, batch_size=config.batch_size)


def proxy_recipe(proxy: ProxyConfig) -> Recipe:
    """The proxy's settings as a recipe: the peak rate defaults to `DEFAULT_LR_PER_256` x batch/256,
    warm-up is a share of the steps (default 5% for cosine, 10% for mnasnet), biases decay."""
    return Recipe(
        name="proxy", optimizer=proxy.optimizer, base_lr=DEFAULT_LR_PER_256[proxy.optimizer],
        batch_size=proxy.batch_size, schedule=proxy.schedule, warmup_epochs=0.0,
        weight_decay=proxy.weight_decay, decay_biases=True, label_smoothing=proxy.label_smoothing,
        ema_decay=proxy.ema_decay, dropout=proxy.dropout, bn_momentum=proxy.bn_momentum, bn_eps=proxy.bn_eps,
        stable_init=proxy.stable_init, lr=proxy.lr,
        warmup_fraction=(proxy.warmup if proxy.warmup is not None
                         else PROXY_WARMUP.get(proxy.schedule, 0.0)),
    )


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


