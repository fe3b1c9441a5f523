"""Optimisers, learning-rate schedules and the weight EMA of the MnasNet recipe.

The paper's learning rate (0.016 x batch/256) only transfers with TensorFlow's RMSProp semantics
(epsilon inside the square root, accumulator starting at 1, learning rate folded into momentum);
PyTorch's stock RMSprop is a different optimiser. Schedules are pure functions of the step so a
resumed run gets exactly the same rates and a test can check them against the formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

#: The optimisers `make_optimizer` builds and the schedules `mnas.train.recipes.lr_schedule` knows.
OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("cosine", "mnasnet", "constant")

# ---------------------------------------------------------------------------------------------
# RMSProp with TensorFlow semantics
# ---------------------------------------------------------------------------------------------


class RMSpropTF(torch.optim.Optimizer):
    """tf.train.RMSPropOptimizer(lr, decay, momentum, epsilon) in PyTorch.

    ms  = decay * ms + (1 - decay) * g^2          (ms starts at 1)
    mom = momentum * mom + lr * g / sqrt(ms + eps)  (eps inside the root, lr folded into momentum)
    w  -= mom
    Weight decay is coupled L2 (g += wd * w), as TF adds `wd * l2_loss(w)` to the loss.
    All parameters of a group are updated with foreach kernels (one launch per op on CUDA).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.016,
        decay: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or not 0.0 <= decay < 1.0 or momentum < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("RMSpropTF: lr, momentum, eps, weight_decay >= 0 and 0 <= decay < 1")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        # torch's overloads type a closure-less step as returning None; one signature covers both.
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] | tuple[torch.Tensor, ...] = []
            squares: list[torch.Tensor] = []
            moms: list[torch.Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)  # type: ignore[union-attr]  # a list until weight decay below
                squares.append(state["square_avg"])
                moms.append(state["momentum_buffer"])
            if not params:
                continue
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            decay, lr = group["decay"], group["lr"]
            torch._foreach_mul_(squares, decay)
            torch._foreach_addcmul_(squares, grads, grads, value=1.0 - decay)
            denom = torch._foreach_add(squares, group["eps"])
            torch._foreach_sqrt_(denom)
            if group["momentum"] > 0:
                torch._foreach_mul_(moms, group["momentum"])
                torch._foreach_addcdiv_(moms, grads, denom, value=lr)
                torch._foreach_sub_(params, moms)
            else:
                torch._foreach_addcdiv_(params, grads, denom, value=-lr)
        return loss


# ---------------------------------------------------------------------------------------------
# Parameter groups: weight decay without BN
# ---------------------------------------------------------------------------------------------

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, weight_decay: float, decay_biases: bool = True) -> list[dict]:
    """Two groups: decayed and not. Normalisation parameters are never decayed (the TF recipe
    decays every variable not named batch_normalization, biases included: `decay_biases=True`)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if is_norm or (not decay_biases and (name == "bias" or p.ndim <= 1)):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    decay_biases: bool = True,
    fused: bool = False,
    groups: list[dict] | None = None,
) -> torch.optim.Optimizer:
    """"sgd" (momentum 0.9, Nesterov), "rmsprop" (TF semantics) or "adamw". `groups` replaces the
    default parameter groups (`param_groups`) when a model needs its own decay rules."""
    groups = groups if groups is not None else param_groups(model, weight_decay, decay_biases)
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, fused=True if fused else None)
    if key in ("rmsprop", "rmsprop_tf", "rmsproptf"):
        return RMSpropTF(groups, lr=lr, decay=0.9, momentum=0.9, eps=1e-3)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True if fused else None)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, rmsprop or adamw")


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules (pure functions of the step)
# ---------------------------------------------------------------------------------------------


def mnasnet_lr(
    step: int,
    steps_per_epoch: float,
    batch_size: int,
    base_lr: float = 0.016,
    warmup_epochs: float = 5.0,
    decay_epochs: float = 2.4,
    decay_rate: float = 0.97,
    *,
    warmup_steps: int | None = None,
) -> float:
    """The TF recipe: peak `base_lr * batch/256`; linear warm-up `peak * step / int(5 * spe)`;
    afterwards `peak * 0.97 ** floor(step / (2.4 * spe))` (staircase counted from step 0).
    `warmup_steps`, when given, replaces `int(warmup_epochs * spe)`."""
    peak = base_lr * batch_size / 256.0
    if warmup_steps is None:
        warmup_steps = int(warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return peak * step / warmup_steps
    return peak * decay_rate ** math.floor(step / (decay_epochs * steps_per_epoch))


def cosine_lr(step: int, total_steps: int, peak: float, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Linear warm-up to `peak`, then half a cosine down to `floor` at `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


# ---------------------------------------------------------------------------------------------
# Exponential moving average of the weights
# ---------------------------------------------------------------------------------------------


class ModelEma:
    """tf.train.ExponentialMovingAverage(decay, num_updates=step) over parameters and BN buffers.

    decay_t = min(decay, (1 + t) / (10 + t)); ema = decay_t * ema + (1 - decay_t) * w.
    The decay is computed on the host from the step counter, so updating never syncs a GPU.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        step = self.updates if step is None else step
        d = self.current_decay(step)
        ema_f, new_f = [], []
        for k, v in model.state_dict().items():
            e = self.state[k]
            if e.dtype.is_floating_point:
                ema_f.append(e)
                new_f.append(v.detach())
            else:
                e.copy_(v)
        if ema_f:
            torch._foreach_lerp_(ema_f, new_f, 1.0 - d)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, sd: dict) -> None:
        self.decay = sd["decay"]
        self.updates = sd["updates"]
        for k, v in sd["state"].items():
            self.state[k].copy_(v)
