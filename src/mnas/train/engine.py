"""The training engine shared by the proxy, full training and the supernet: one `build_engine`.

An `Engine` holds a model, its optimiser, learning-rate function and weight EMA on one device and
runs epochs and evaluations. What a training step computes is pluggable (`StepFn`): the default
is forward, cross-entropy, backward; the supernet passes one that runs several sampled paths.

Speed: channels_last tensors on every device (on a 2-core CPU they train the depthwise-heavy
MnasNet networks 1.05-1.7x faster: BatchNorm's batch statistics reduce over contiguous channels);
on CUDA also bf16 autocast, fused optimisers, optional `torch.compile`, and no host syncs inside
the step loop (running sums stay on the device; the host reads them late through pinned
non-blocking copies).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mnas.architecture import Architecture
from mnas.data import BatchLoader, DatasetSplits, Split, mix_seed
from mnas.errors import UserError
from mnas.model import build_model
from mnas.optim import ModelEma, make_optimizer
from mnas.run_options import check_device
from mnas.train.recipes import Recipe


@dataclass(frozen=True)
class SpeedOptions:
    """Speed switches; None = the device's default (channels_last: on everywhere; amp and fused: on
    for CUDA only). `compile` is opt-in."""

    amp: bool | None = None  # bf16 autocast
    channels_last: bool | None = None
    fused: bool | None = None  # fused optimizer kernels where torch has them
    compile: bool = False

    def resolved(self, device: torch.device) -> SpeedOptions:
        cuda = device.type == "cuda"

        def pick(v: bool | None) -> bool:
            return cuda if v is None else bool(v)

        channels_last = True if self.channels_last is None else bool(self.channels_last)
        return SpeedOptions(pick(self.amp), channels_last, pick(self.fused) and cuda, self.compile)


def parse_device(device: str | torch.device) -> torch.device | None:
    """The device a setting names (None for "auto"), checked by `mnas.run_options.check_device`."""
    text = check_device(str(device))
    return None if text == "auto" else torch.device(text)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device to train on; CUDA asked for where none is visible is a UserError."""
    dev = parse_device(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {str(device)!r} asked for but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def stable_init_(model: nn.Module) -> nn.Module:
    """Init for short runs on few classes: zero the classifier, and zero the last BN scale of every
    identity-residual layer (each starts as the identity, as in Goyal et al. 2017). TF's
    U(+-1/sqrt(classes)) head init is tuned for 1000 classes; with 10 the loss starts at ~4-5 and a
    one-epoch run spends its first steps recovering."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    for layer in model.modules():
        body = getattr(layer, "body", None)
        if getattr(layer, "has_skip", False) and getattr(layer, "shortcut", 1) is None and isinstance(body, nn.Sequential):
            last = body[-1]
            bn = last[1] if isinstance(last, nn.Sequential) and len(last) > 1 else None
            if isinstance(bn, nn.BatchNorm2d):
                nn.init.zeros_(bn.weight)
    return model


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def fork_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Seed freely inside; the caller's global RNG state is restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


class HostReadout:
    """Non-blocking device->host copies of a small stats vector, read when ready (no sync).

    On CPU it is a plain copy. On CUDA two pinned buffers alternate; `latest()` returns the newest
    buffer whose copy has finished, i.e. values one readout interval late.
    """

    def __init__(self, device: torch.device, n: int) -> None:
        self.cuda = device.type == "cuda"
        self.bufs = [torch.zeros(n, pin_memory=self.cuda) for _ in range(2)]
        self.events: list[Any] = [None, None]
        self.i = 0
        self.ready: list[float] | None = None

    def push(self, t: torch.Tensor) -> None:
        if not self.cuda:
            self.ready = t.detach().float().tolist()
            return
        j = self.i % 2
        if self.events[j] is not None and not self.events[j].query():
            return  # previous copy into this buffer still in flight; skip this readout
        self.bufs[j].copy_(t.detach().float(), non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self.events[j] = ev
        self.i += 1

    def latest(self) -> list[float] | None:
        if self.cuda:
            for j in ((self.i - 1) % 2, self.i % 2):
                ev = self.events[j]
                if ev is not None and ev.query():
                    self.ready = self.bufs[j].tolist()
                    break
        return self.ready


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")


class StepFn(Protocol):
    """One training step's forward and backward on a batch (the engine zeroes grads before and
    steps the optimiser after). Returns the detached loss and the logits for running accuracy."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class CrossEntropyStep:
    """The plain step: forward, (label-smoothed) cross-entropy, backward."""

    def __init__(self, label_smoothing: float, autocast: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.autocast = autocast

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = model(x)
            loss = self.criterion(logits.float(), y)
        loss.backward()
        return loss.detach(), logits.detach()


#: Called at a step boundary with (epoch, batches done in the epoch, exact running stats).
SaveFn = Callable[[int, int, EpochStats], None]
ReadoutFn = Callable[[int, int, EpochStats], None]


class StepGuard(Protocol):
    """A signal watcher (`mnas.train.fit.SignalGuard`) whose handler raises (KeyboardInterrupt, or
    `mnas.errors.Terminated`) inside `abortable()` only: there a long batch load or forward and
    backward pass is cut within a second. Elsewhere (the optimiser update, saving, bookkeeping) a
    signal is held until the next `abortable()` or the between-steps check, so weights, optimiser,
    EMA, step count and files always agree."""

    def abortable(self) -> contextlib.AbstractContextManager[None]: ...


def _no_op(grad: torch.Tensor) -> None:
    """A gradient hook that only runs Python: a signal handler waiting to run gets its turn (and
    its exception goes up through `backward`). `backward` is one call into C++, which Python's
    signal handlers cannot interrupt; on a CPU it can take seconds."""
    return None


@contextlib.contextmanager
def _backward_checkpoints(model: nn.Module, limit: int = 32) -> Iterator[None]:
    """Inside, the outputs of about `limit` modules spread over the network (the shallowest levels
    that fit) carry `_no_op`, so a signal is honoured between their gradients on the way back."""
    points: list[nn.Module] = []
    level = list(model.children())
    while level and len(points) + len(level) <= limit:
        points += level
        level = [c for m in level for c in m.children()]

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(_no_op)

    handles = [m.register_forward_hook(hook) for m in points]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Boundary:
    """What a step changes inside `StepGuard.abortable()`: BatchNorm running statistics (updated on the
    way forward) and the global RNG (dropout). Copied at every step boundary, so a step cut short
    by a signal is undone and the checkpoint saved after it resumes exactly."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.buffers = [b for b in model.buffers()]
        self.saved = [b.detach().clone() for b in self.buffers]
        self.device = device if device.type == "cuda" else None
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(self.device) if self.device is not None else None

    def take(self) -> None:
        with torch.no_grad():
            if self.buffers:
                torch._foreach_copy_(self.saved, self.buffers)
        self.rng = torch.get_rng_state()
        if self.device is not None:
            self.cuda_rng = torch.cuda.get_rng_state(self.device)

    def restore(self) -> None:
        with torch.no_grad():
            if self.buffers:
                torch._foreach_copy_(self.buffers, self.saved)
        torch.set_rng_state(self.rng)
        if self.device is not None and self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


class Engine:
    """Model, optimiser, schedule and EMA on one device; runs epochs and evaluations."""

    def __init__(
        self,
        model: nn.Module,
        data: DatasetSplits,
        *,
        optimizer: str,
        lr_fn: Callable[[int], float],
        batch_size: int,
        weight_decay: float,
        decay_biases: bool,
        label_smoothing: float,
        ema_decay: float | None,
        device: torch.device,
        speed: SpeedOptions,
        seed: int,
        diverge_loss: float | None = None,
        step_fn: StepFn | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.device = device
        self.speed = speed.resolved(device)
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.lr_fn = lr_fn
        mem = torch.channels_last if self.speed.channels_last else torch.preserve_format
        self.model = model.to(device=device).to(memory_format=mem)
        self.forward_model: nn.Module = torch.compile(self.model) if self.speed.compile else self.model  # type: ignore[assignment]
        self.optimizer = make_optimizer(
            optimizer, self.model, lr_fn(0), weight_decay, decay_biases=decay_biases, fused=bool(self.speed.fused),
            groups=param_groups,
        )
        self.shard = shard
        self.step_fn: StepFn = step_fn or CrossEntropyStep(label_smoothing, self.autocast)
        self.ema = ModelEma(self.model, ema_decay) if ema_decay else None
        self.step = 0
        # A loss this large (20x chance level) or non-finite ends the run as "diverged".
        self.diverge_loss = diverge_loss or 20.0 * math.log(max(2, data.num_classes))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.speed.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loader(self, split: Split, train: bool, epoch: int = 0, batch_size: int | None = None) -> BatchLoader:
        return BatchLoader(
            self.data, split, batch_size or self.batch_size, train=train, device=self.device, seed=self.seed,
            epoch=epoch, channels_last=bool(self.speed.channels_last), shard=self.shard if train else (0, 1),
        )

    def wrap(self, module: nn.Module) -> None:
        """Run the steps through `module` (a DistributedDataParallel wrapper of `self.model`)."""
        self.forward_model = module

    def steps_per_epoch(self) -> int:
        return self.loader(self.data.train, train=True).num_batches

    def _diverged(self, loss_sum: float, seen: float) -> bool:
        return not math.isfinite(loss_sum) or bool(seen and loss_sum / seen > self.diverge_loss)

    def train_epoch(
        self,
        epoch: int,
        *,
        start_batch: int = 0,
        carry: EpochStats | None = None,
        max_steps: int | None = None,
        deadline: float | None = None,
        on_readout: ReadoutFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        save_due: Callable[[], bool] | None = None,
        save: SaveFn | None = None,
        readout_every: int = 10,
        guard: StepGuard | None = None,
    ) -> tuple[EpochStats, int, str | None]:
        """Run one epoch (or its rest from `start_batch`). Returns (stats, batches done, stop reason).

        The stop reason is None after a full epoch, else "max_steps", "timeout", "diverged" or
        "interrupted" (from `should_stop`, checked between steps so state stays consistent).
        When `save_due()` says so between two steps, `save` gets the exact running statistics and
        the epoch goes on (a periodic checkpoint).

        With a `guard` (one process: `mnas train`), a signal may also cut a step midway (its handler
        raises inside `guard.abortable()`): the step is undone (`_Boundary`) and the epoch ends
        "interrupted" after the last completed step, with the statistics up to it.
        """
        self.model.train()
        loader = self.loader(self.data.train, train=True, epoch=epoch)
        loader.start_batch = start_batch
        if start_batch == 0:  # dropout etc. draw from the global RNG, reseeded per epoch for resume
            torch.manual_seed(mix_seed(self.seed, epoch, 7))
        stats = torch.zeros(3, device=self.device)  # loss_sum, correct, seen
        base = carry or EpochStats()
        readout = HostReadout(self.device, 3)
        t0 = time.perf_counter()

        def running(values: list[float]) -> EpochStats:
            return EpochStats(base.loss_sum + values[0], base.correct + values[1], base.seen + values[2],
                              base.seconds + time.perf_counter() - t0)

        abortable = guard.abortable if guard is not None else contextlib.nullcontext
        boundary = _Boundary(self.model, self.device) if guard is not None else None
        batch = start_batch
        reason: str | None = None
        window_start = 0
        batches = iter(loader)
        # On a CPU backward runs in this thread, where gradient hooks let a signal handler in; on CUDA
        # it runs in autograd's device threads (no handler runs there) and takes little wall time.
        cpu_backward = guard is not None and self.device.type == "cpu" and not self.speed.compile
        checkpoints = _backward_checkpoints(self.model) if cpu_backward else contextlib.nullcontext()
        try:
            with checkpoints:
                while True:
                    with abortable():  # loading the batch, and below its forward and backward pass
                        batch_xy = next(batches, None)
                    if batch_xy is None:
                        break
                    x, y = batch_xy
                    if max_steps is not None and self.step >= max_steps:
                        reason = "max_steps"
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        reason = "timeout"
                        break
                    if should_stop is not None and should_stop():
                        reason = "interrupted"
                        break
                    if save is not None and save_due is not None and batch > start_batch and save_due():
                        save(epoch, batch, running(stats.tolist()))
                    with abortable():  # a signal here undoes the step (`_Boundary`); the update below is whole
                        lr = self.lr_fn(self.step)
                        for group in self.optimizer.param_groups:
                            group["lr"] = lr
                        self.optimizer.zero_grad(set_to_none=True)
                        loss, logits = self.step_fn(self.forward_model, x, y, self.step)
                    self.optimizer.step()
                    self.step += 1
                    if self.ema is not None:
                        self.ema.update(self.model, self.step)
                    with torch.no_grad():  # running sums stay on the device: no host sync per step
                        n = y.shape[0]
                        stats[0].add_(loss.float() * n)
                        stats[1].add_((logits.argmax(1) == y).sum())
                        stats[2].add_(n)
                    batch += 1
                    if boundary is not None:
                        boundary.take()
                    if (batch - window_start) >= readout_every or batch == loader.num_batches:
                        window_start = batch
                        readout.push(stats)
                        vals = readout.latest()
                        if vals is not None:
                            if self._diverged(vals[0], vals[2]):
                                reason = "diverged"
                                break
                            if on_readout is not None:
                                on_readout(epoch, batch, running(vals))
        except KeyboardInterrupt:  # Terminated too: only from inside `abortable()`, mid-step
            if boundary is None:
                raise
            boundary.restore()
            self.optimizer.zero_grad(set_to_none=True)
            reason = "interrupted"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        final = stats.tolist()
        out = running(final)
        if reason is None and self._diverged(final[0], final[2]):
            reason = "diverged"
        if reason is None and batch < loader.num_batches:
            reason = "max_steps"
        return out, batch, reason

    def eval_model(self, use_ema: bool) -> nn.Module:
        if use_ema and self.ema is not None:
            model = copy.deepcopy(self.model)
            self.ema.copy_to(model)
            return model
        return self.model

    @torch.no_grad()
    def evaluate(self, split: Split, use_ema: bool = False, batch_size: int | None = None) -> tuple[float, float]:
        """(top-1 accuracy, mean cross-entropy) over a whole split; one host sync at the end."""
        return evaluate_model(
            self.eval_model(use_ema), self.data, split, self.device, batch_size=batch_size,
            amp=bool(self.speed.amp), channels_last=bool(self.speed.channels_last),
        )


def check_batch_size(batch_size: int | None, what: str = "--batch-size") -> None:
    """None takes the default; anything else must be a whole number >= 1 (0 is not "the default")."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise UserError(f"{what} {batch_size} must be a whole number of images, 1 or more (leave it out for the default)")


def train_steps_per_epoch(data: DatasetSplits, batch_size: int) -> int:
    """Batches per training epoch (the loader drops the last partial batch); a training split
    smaller than one batch is an error, not a run of zero steps."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    if len(data.train) < batch_size:
        raise UserError(f"the training split has {len(data.train)} images, fewer than one batch of {batch_size}; "
                        "use a smaller batch size or more training images")
    return BatchLoader(data, data.train, batch_size, train=True).num_batches


def seed_initial_weights(seed: int) -> None:
    """Seed the global RNG for a run's initial weights (the same on every rank): call inside
    `fork_rng`, right before the network is built."""
    torch.manual_seed(mix_seed(seed, 11))


def build_network(arch: Architecture, num_classes: int, recipe: Recipe) -> nn.Module:
    """`arch` (as it runs: apply `Architecture.for_resolution` first) built with the recipe's
    dropout and BatchNorm settings and, where the recipe says so, `stable_init_`."""
    net = build_model(arch, num_classes=num_classes, dropout=recipe.dropout, bn_momentum=recipe.bn_momentum,
                      bn_eps=recipe.bn_eps)
    return stable_init_(net) if recipe.stable_init else net


def build_engine(
    model: nn.Module,
    data: DatasetSplits,
    recipe: Recipe,
    *,
    total_steps: int,
    device: torch.device,
    speed: SpeedOptions,
    seed: int,
    step_fn: StepFn | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Engine:
    """The one builder from a recipe to an engine (proxy, full training and supernet training):
    `model` trained on `data` with the recipe's optimiser, batch size, weight decay, label
    smoothing and EMA, and its learning-rate schedule over a run of `total_steps`."""
    lr_fn = recipe.lr_fn(total_steps, train_steps_per_epoch(data, recipe.batch_size))
    return Engine(
        model, data, optimizer=recipe.optimizer, lr_fn=lr_fn, batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay, decay_biases=recipe.decay_biases, label_smoothing=recipe.label_smoothing,
        ema_decay=recipe.ema_decay, device=device, speed=speed, seed=seed, step_fn=step_fn,
        param_groups=param_groups, shard=shard,
    )


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: DatasetSplits,
    split: Split,
    device: torch.device | str = "cpu",
    *,
    batch_size: int | None = None,
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy (no smoothing) of `model` on `split`.

    Default batch: 500 on CUDA, 128 on CPU (bigger CPU batches spend their time page-faulting
    fresh activation buffers)."""
    device = torch.device(device)
    check_batch_size(batch_size)
    batch_size = batch_size if batch_size is not None else (500 if device.type == "cuda" else 128)
    was_training = model.training
    model.eval()
    loader = BatchLoader(data, split, batch_size, train=False, device=device, channels_last=channels_last)
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else contextlib.nullcontext()
    for x, y in loader:
        with ctx:
            logits = model(x).float()
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        sums[0].add_(loss.double())
        sums[1].add_((logits.argmax(1) == y).sum())
        sums[2].add_(y.shape[0])
    model.train(was_training)
    loss_sum, correct, seen = sums.tolist()
    return correct / seen, loss_sum / seen
