"""Train candidates: the short proxy run that scores a sampled network, and full training recipes.

`train_proxy` is what a search calls for every candidate; it never raises for a bad candidate
(divergence, out-of-memory, a blown time budget, a broken network): `TrainResult.status` says
why. `fit` trains one network fully with checkpoints every epoch (and on interruption), exact
resume, a progress bar and metrics as JSON lines.

Speed on CUDA (all off on CPU, where they do not pay): bf16 autocast, channels_last tensors, fused
or foreach optimisers, optional `torch.compile`, and no host syncs inside the step loop (running
sums stay on the device; the host reads them late through pinned non-blocking copies).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnas.data import BatchLoader, DatasetSplits, Split, mix_seed
from mnas.errors import UserError
from mnas.optim import ModelEma, cosine_lr, make_optimizer, mnasnet_lr
from mnas.space import Architecture

# ---------------------------------------------------------------------------------------------
# Results, options, recipes
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Outcome of one proxy run. status: "ok" | "diverged" | "oom" | "timeout" | "error: <text>".
    Accuracies are fractions in [0, 1]; metrics that were not reached are NaN."""

    val_acc: float
    val_loss: float
    train_loss: float
    epochs: float
    images_per_s: float
    seconds: float
    status: str
    steps: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class SpeedOptions:
    """CUDA speed switches; None = on for CUDA, off elsewhere. `compile` is opt-in."""

    amp: bool | None = None  # bf16 autocast
    channels_last: bool | None = None
    fused: bool | None = None  # fused optimizer kernels where torch has them
    compile: bool = False

    def resolved(self, device: torch.device) -> "SpeedOptions":
        cuda = device.type == "cuda"
        pick = lambda v: cuda if v is None else bool(v)  # noqa: E731
        return SpeedOptions(pick(self.amp), pick(self.channels_last), pick(self.fused) and cuda, self.compile)


@dataclass(frozen=True)
class Recipe:
    """A full training recipe. Learning rates are per 256 images and scale with the batch size."""

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


RECIPES: dict[str, Recipe] = {
    # The paper's / tensorflow/tpu mnasnet_main.py recipe (reference sheet section 3). Warm-up is
    # the recipe's 5 epochs for runs of 50+ epochs and a tenth of the run for shorter ones, so a
    # short run still reaches its peak rate.
    "mnasnet": Recipe(
        name="mnasnet", optimizer="rmsprop", base_lr=0.016, batch_size=128, schedule="mnasnet",
        warmup_epochs=5.0, weight_decay=1e-5, decay_biases=True, label_smoothing=0.1,
        ema_decay=0.9999, dropout=0.2, bn_momentum=0.01,
        description="TF MnasNet: RMSProp-TF (0.9/0.9/1e-3), lr 0.016*batch/256, 5 warm-up epochs, "
        "x0.97 every 2.4 epochs, wd 1e-5 except BN, label smoothing 0.1, EMA 0.9999, dropout 0.2, BN momentum 0.99 (TF)",
    ),
    # CIFAR in few epochs: batch 64 (twice the steps of 128 per epoch; CPU throughput is the same),
    # SGD Nesterov with a short warm-up into a cosine decay to zero, the
    # usual pad-4 crop + flip, weight decay 5e-4 on conv/linear weights only, PyTorch's faster
    # BN momentum (0.1) so running statistics settle within a few hundred steps, no EMA.
    "cifar": Recipe(
        name="cifar", optimizer="sgd", base_lr=0.2, batch_size=64, schedule="cosine",
        warmup_epochs=1.0, weight_decay=5e-4, decay_biases=False, label_smoothing=0.1,
        ema_decay=None, dropout=0.2, bn_momentum=0.1, stable_init=True,
        description="SGD Nesterov 0.9, batch 64, lr 0.05 (0.2 per 256), warm-up min(1 epoch, 10%), cosine to 0, "
        "wd 5e-4 on weights (not BN, not biases), label smoothing 0.1, dropout 0.2, BN momentum 0.1, zero-init classifier and last BN of residual layers",
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
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


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _HostReadout:
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


class _Stop(Exception):
    """Internal: ends the step loop with a status."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


# ---------------------------------------------------------------------------------------------
# The engine shared by proxy and full training
# ---------------------------------------------------------------------------------------------


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
    ) -> None:
        self.device = device
        self.speed = speed.resolved(device)
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.lr_fn = lr_fn
        mem = torch.channels_last if self.speed.channels_last else torch.preserve_format
        self.model = model.to(device=device, memory_format=mem)
        self.forward_model: nn.Module = torch.compile(self.model) if self.speed.compile else self.model
        self.optimizer = make_optimizer(
            optimizer, self.model, lr_fn(0), weight_decay, decay_biases=decay_biases, fused=bool(self.speed.fused)
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.ema = ModelEma(self.model, ema_decay) if ema_decay else None
        self.step = 0
        # A loss this large (20x chance level) or non-finite ends the run as "diverged".
        self.diverge_loss = diverge_loss or 20.0 * math.log(max(2, data.num_classes))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.speed.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loader(self, split: Split, train: bool, epoch: int = 0, batch_size: int | None = None) -> BatchLoader:
        return BatchLoader(
            self.data, split, batch_size or self.batch_size, train=train, device=self.device, seed=self.seed,
            epoch=epoch, channels_last=bool(self.speed.channels_last),
        )

    def steps_per_epoch(self) -> int:
        return self.loader(self.data.train, train=True).num_batches

    def train_epoch(
        self,
        epoch: int,
        *,
        start_batch: int = 0,
        carry: EpochStats | None = None,
        max_steps: int | None = None,
        deadline: float | None = None,
        on_readout: Callable[[int, int, EpochStats], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        readout_every: int = 10,
    ) -> tuple[EpochStats, int, str | None]:
        """Run one epoch (or its rest from `start_batch`). Returns (stats, batches done, stop reason).

        The stop reason is None after a full epoch, else "max_steps", "timeout", "diverged" or
        "interrupted" (from `should_stop`, checked between steps so state stays consistent).
        """
        self.model.train()
        loader = self.loader(self.data.train, train=True, epoch=epoch)
        loader.start_batch = start_batch
        if start_batch == 0:  # dropout etc. draw from the global RNG, reseeded per epoch for resume
            torch.manual_seed(mix_seed(self.seed, epoch, 7))
        stats = torch.zeros(3, device=self.device)  # loss_sum, correct, seen
        base = carry or EpochStats()
        readout = _HostReadout(self.device, 3)
        t0 = time.perf_counter()
        batch = start_batch
        reason: str | None = None
        window_start = 0
        for x, y in loader:
            if max_steps is not None and self.step >= max_steps:
                reason = "max_steps"
                break
            if deadline is not None and time.monotonic() > deadline:
                reason = "timeout"
                break
            if should_stop is not None and should_stop():
                reason = "interrupted"
                break
            lr = self.lr_fn(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self.autocast():
                logits = self.forward_model(x)
                loss = self.criterion(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            with torch.no_grad():  # running sums stay on the device: no host sync per step
                n = y.shape[0]
                stats[0].add_(loss.detach().float() * n)
                stats[1].add_((logits.argmax(1) == y).sum())
                stats[2].add_(n)
            batch += 1
            if (batch - window_start) >= readout_every or batch == loader.num_batches:
                window_start = batch
                readout.push(stats)
                vals = readout.latest()
                if vals is not None:
                    cur = EpochStats(base.loss_sum + vals[0], base.correct + vals[1], base.seen + vals[2],
                                     base.seconds + time.perf_counter() - t0)
                    if not math.isfinite(cur.loss_sum) or (vals[2] and vals[0] / vals[2] > self.diverge_loss):
                        reason = "diverged"
                        break
                    if on_readout is not None:
                        on_readout(epoch, batch, cur)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        final = stats.tolist()
        out = EpochStats(
            base.loss_sum + final[0], base.correct + final[1], base.seen + final[2], base.seconds + time.perf_counter() - t0
        )
        if reason is None and (not math.isfinite(out.loss_sum) or (final[2] and final[0] / final[2] > self.diverge_loss)):
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
    batch_size = batch_size or (500 if device.type == "cuda" else 128)
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


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager:
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


# ---------------------------------------------------------------------------------------------
# Proxy training
# ---------------------------------------------------------------------------------------------

DEFAULT_LR_PER_256 = {"sgd": 0.2, "rmsprop": 0.016, "adamw": 0.002}


def train_proxy(
    arch: Architecture,
    data: DatasetSplits,
    epochs: float = 1,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float | None = None,
    schedule: str = "cosine",
    label_smoothing: float = 0.1,
    weight_decay: float = 4e-5,
    device: str = "auto",
    seed: int = 0,
    time_budget_s: float | None = None,
    max_steps: int | None = None,
    *,
    skeleton: str = "auto",
    dropout: float = 0.2,
    bn_momentum: float = 0.1,
    ema_decay: float | None = None,
    speed: SpeedOptions | None = None,
    eval_batch_size: int | None = None,
    stable_init: bool = True,
    warmup: float = 0.05,
) -> TrainResult:
    """Train `arch` briefly on `data.train` and score it on the held-out `data.val`.

    lr: peak learning rate (default 0.2 x batch/256 for SGD, 0.016 x batch/256 for RMSProp-TF).
    schedule: "cosine" (linear warm-up over the `warmup` fraction of steps) or "mnasnet" (the paper's). Never raises for a bad
    candidate: the status says "diverged", "oom", "timeout" or "error: ...".
    """
    t_start = time.perf_counter()
    nan = float("nan")
    try:
        dev = resolve_device(device)
    except UserError as exc:
        return TrainResult(nan, nan, nan, 0.0, 0.0, 0.0, f"error: {exc}")
    engine: Engine | None = None
    try:
        with _fork_rng(dev):
            torch.manual_seed(mix_seed(seed, 11))
            from mnas.model import build_model

            net = build_model(arch.for_resolution(data.resolution, skeleton), num_classes=data.num_classes,
                              dropout=dropout, bn_momentum=bn_momentum)
            if stable_init:
                stable_init_(net)
            opt_key = optimizer.lower()
            peak = lr if lr is not None else DEFAULT_LR_PER_256.get(opt_key, 0.1) * batch_size / 256.0
            steps_per_epoch = BatchLoader(data, data.train, batch_size, train=True).num_batches
            total = max(1, int(math.ceil(epochs * steps_per_epoch)))
            if max_steps is not None:
                total = min(total, int(max_steps))
            if schedule == "cosine":
                warm = int(warmup * total)
                lr_fn = lambda s: cosine_lr(s, total, peak, warm)  # noqa: E731
            elif schedule == "mnasnet":
                lr_fn = lambda s: mnasnet_lr(s, steps_per_epoch, batch_size, base_lr=peak * 256.0 / batch_size,  # noqa: E731
                                             warmup_epochs=min(5.0, epochs / 10.0))
            elif schedule == "constant":
                lr_fn = lambda s: peak  # noqa: E731
            else:
                return TrainResult(nan, nan, nan, 0.0, 0.0, 0.0, f"error: unknown schedule {schedule!r}")
            engine = Engine(
                net, data, optimizer=opt_key, lr_fn=lr_fn, batch_size=batch_size, weight_decay=weight_decay,
                decay_biases=True, label_smoothing=label_smoothing, ema_decay=ema_decay, device=dev,
                speed=speed or SpeedOptions(), seed=seed,
            )
            deadline = time.monotonic() + time_budget_s if time_budget_s is not None else None
            loss_sum = seen = train_seconds = 0.0
            status = "ok"
            epoch = 0
            while engine.step < total:
                stats, _, reason = engine.train_epoch(epoch, max_steps=total, deadline=deadline)
                loss_sum += stats.loss_sum
                seen += stats.seen
                train_seconds += stats.seconds
                epoch += 1
                if reason in ("diverged", "timeout"):
                    status = reason
                    break
            train_loss = loss_sum / seen if seen else nan
            done_epochs = engine.step / steps_per_epoch
            ips = seen / train_seconds if train_seconds > 0 else 0.0
            if status != "ok":
                return TrainResult(nan, nan, train_loss, done_epochs, ips, time.perf_counter() - t_start, status, engine.step)
            val_acc, val_loss = engine.evaluate(data.val, use_ema=ema_decay is not None, batch_size=eval_batch_size)
            if not math.isfinite(val_loss):
                status = "diverged"
            return TrainResult(val_acc, val_loss, train_loss, done_epochs, ips, time.perf_counter() - t_start, status, engine.step)
    except Exception as exc:  # never raise into the search loop
        steps = engine.step if engine is not None else 0
        engine = None
        if _is_oom(exc):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return TrainResult(nan, nan, nan, 0.0, 0.0, time.perf_counter() - t_start, "oom", steps)
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return TrainResult(nan, nan, nan, 0.0, 0.0, time.perf_counter() - t_start, f"error: {text}", steps)


# ---------------------------------------------------------------------------------------------
# Full training with checkpoints
# ---------------------------------------------------------------------------------------------


class TrainingInterrupted(Exception):
    """Raised by `fit` after it saved a checkpoint because of SIGINT/SIGTERM or `stop_after_steps`."""

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.checkpoint = checkpoint
        self.step = step


@dataclass
class FitConfig:
    """Everything needed to rebuild a run; stored in the checkpoint under "config"."""

    arch_name: str
    data: str = "cifar10"
    data_root: str | None = None
    epochs: int = 10
    recipe: str = "cifar"
    batch_size: int | None = None
    train_subset: int | None = None
    val_size: float | int = 0.1
    seed: int = 0
    skeleton: str = "auto"
    width_mult: float = 1.0
    device: str = "auto"
    compile: bool = False
    extra: dict = field(default_factory=dict)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _trim_metrics(path: Path, completed_epochs: int) -> None:
    """Keep only lines for epochs the checkpoint has (a crash may have written one more)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch", 0) <= completed_epochs:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """SIGINT / SIGTERM set a flag the step loop checks, so the checkpoint is consistent."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    installed = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                installed.append((sig, signal.signal(sig, handler)))
            except (ValueError, OSError):
                pass
    try:
        yield lambda: flag["stop"]
    finally:
        for sig, old in installed:
            signal.signal(sig, old)


def _lr_function(recipe: Recipe, epochs: int, steps_per_epoch: int, batch_size: int) -> Callable[[int], float]:
    total = epochs * steps_per_epoch
    if recipe.schedule == "mnasnet":
        warm = recipe.warmup_epochs if epochs >= 50 else epochs / 10.0
        return lambda s: mnasnet_lr(s, steps_per_epoch, batch_size, recipe.base_lr, warmup_epochs=warm)
    peak = recipe.base_lr * batch_size / 256.0
    warm_steps = int(min(recipe.warmup_epochs * steps_per_epoch, 0.1 * total))
    return lambda s: cosine_lr(s, total, peak, warm_steps)


class _Progress:
    """A rich progress bar (loss, accuracy, images/s, ETA) on stderr; on a non-terminal (a log
    file, CI) a plain line every 30 s and at each epoch end instead; or nothing."""

    def __init__(self, enabled: bool, total_steps: int, done_steps: int) -> None:
        self.bar = None
        self.plain = None
        self.total = total_steps
        self.last_plain = 0.0
        self.t0 = time.monotonic()
        self.start_steps = done_steps
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            self.plain = console
            return
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[ips]} img/s  val {task.fields[val]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, loss="-", acc="-", ips="-", val="-")
        self.bar.start()

    def update(self, step: int, epoch: int, epochs: int, stats: EpochStats | None = None, ips: float | None = None,
               val: float | None = None) -> None:
        if self.plain is not None:
            now = time.monotonic()
            if val is None and now - self.last_plain < 30.0:
                return
            self.last_plain = now
            rate = (step - self.start_steps) / (now - self.t0) if now > self.t0 else 0.0
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            parts = [f"epoch {epoch + 1}/{epochs}", f"step {step}/{self.total}"]
            if stats is not None:
                parts += [f"loss {stats.loss:.3f}", f"acc {stats.acc:.3f}"]
            if ips is not None:
                parts.append(f"{ips:.0f} img/s")
            if val is not None:
                parts.append(f"val {val:.4f}")
            parts.append(f"ETA {eta:.0f} s")
            self.plain.print("  ".join(parts), highlight=False)
            return
        if self.bar is None:
            return
        fields: dict[str, Any] = {"description": f"epoch {epoch + 1}/{epochs}", "completed": step}
        if stats is not None:
            fields.update(loss=f"{stats.loss:.3f}", acc=f"{stats.acc:.3f}")
        if ips is not None:
            fields["ips"] = f"{ips:.0f}"
        if val is not None:
            fields["val"] = f"{val:.3f}"
        self.bar.update(self.task, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def fit(
    arch: Architecture,
    data: DatasetSplits,
    config: FitConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
    checkpoint_every_s: float = 120.0,
    speed: SpeedOptions | None = None,
    evaluate_test: bool = False,
) -> dict[str, Any]:
    """Train `arch` with `config.recipe`; checkpoint to OUT/checkpoint.pt every epoch (and every
    `checkpoint_every_s` seconds, and on SIGINT/SIGTERM); metrics to OUT/metrics.jsonl.

    resume=True continues from OUT/checkpoint.pt exactly (same batches, same RNG, same weights).
    `stop_after_steps` interrupts deliberately after that many steps (for tests), like a signal.
    Returns a summary dict (val top-1, images/s, seconds, paths; test top-1 with evaluate_test,
    the only place training touches the test set).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    metrics_path = out / "metrics.jsonl"
    recipe = get_recipe(config.recipe)
    batch_size = config.batch_size or recipe.batch_size
    if batch_size < 1 or config.epochs < 1:
        raise UserError("--batch-size and --epochs must be positive")
    dev = resolve_device(config.device)
    run_arch = arch.for_resolution(data.resolution, config.skeleton)
    ckpt: dict | None = None
    if resume:
        if not ckpt_path.is_file():
            raise UserError(f"nothing to resume: {ckpt_path} does not exist; start a run with --out {out}")
        ckpt = _load_raw(ckpt_path)
        run_arch = Architecture.from_dict(ckpt["arch"])

    from mnas.model import build_model

    with _fork_rng(dev):
        torch.manual_seed(mix_seed(config.seed, 11))
        net = build_model(run_arch, num_classes=data.num_classes, dropout=recipe.dropout,
                          bn_momentum=recipe.bn_momentum, bn_eps=recipe.bn_eps)
        if recipe.stable_init:
            stable_init_(net)
        steps_per_epoch = BatchLoader(data, data.train, batch_size, train=True).num_batches
        lr_fn = _lr_function(recipe, config.epochs, steps_per_epoch, batch_size)
        engine = Engine(
            net, data, optimizer=recipe.optimizer, lr_fn=lr_fn, batch_size=batch_size,
            weight_decay=recipe.weight_decay, decay_biases=recipe.decay_biases,
            label_smoothing=recipe.label_smoothing, ema_decay=recipe.ema_decay, device=dev,
            speed=speed or SpeedOptions(compile=config.compile), seed=config.seed,
        )
        epoch, batch_in_epoch = 0, 0
        carry = EpochStats()
        if ckpt is not None:
            engine.model.load_state_dict(ckpt["model"])
            engine.optimizer.load_state_dict(ckpt["optimizer"])
            if engine.ema is not None and ckpt.get("ema"):
                engine.ema.load_state_dict(ckpt["ema"])
            engine.step = int(ckpt["step"])
            epoch, batch_in_epoch = int(ckpt["epoch"]), int(ckpt.get("batch_in_epoch", 0))
            carry = EpochStats(**ckpt.get("running", {}))
            if batch_in_epoch:
                torch.set_rng_state(ckpt["rng"]["cpu"])
                if dev.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                    torch.cuda.set_rng_state(ckpt["rng"]["cuda"], dev)
            _trim_metrics(metrics_path, epoch)
        elif metrics_path.exists():
            metrics_path.unlink()

        cfg_dict = asdict(config)
        cfg_dict["batch_size"] = batch_size

        def save(epoch_: int, batch_: int, running: EpochStats) -> None:
            rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
            _atomic_save({
                "arch": run_arch.to_dict(), "num_classes": data.num_classes, "resolution": data.resolution,
                "model": engine.model.state_dict(), "ema": engine.ema.state_dict() if engine.ema else None,
                "optimizer": engine.optimizer.state_dict(), "epoch": epoch_, "batch_in_epoch": batch_,
                "step": engine.step, "recipe": asdict(recipe), "config": cfg_dict, "rng": rng,
                "running": asdict(running), "data": {**data.describe(), "mean": data.mean, "std": data.std},
                "eval_ema": engine.ema is not None, "mnas_checkpoint": 1,
            }, ckpt_path)

        total_steps = config.epochs * steps_per_epoch
        bar = _Progress(progress, total_steps, engine.step)
        t_run = time.perf_counter()
        last_save = time.monotonic()
        summary: dict[str, Any] = {}
        try:
            with _stop_on_signals() as signalled:
                stop_flag = {"now": False}

                def should_stop() -> bool:
                    if stop_after_steps is not None and engine.step >= stop_after_steps:
                        return True
                    return signalled()

                while epoch < config.epochs:

                    def on_readout(ep: int, b: int, st: EpochStats) -> None:
                        nonlocal last_save
                        ips = st.seen / st.seconds if st.seconds else None
                        bar.update(engine.step, ep, config.epochs, st, ips)
                        if time.monotonic() - last_save > checkpoint_every_s:
                            stop_flag["now"] = True  # save at the next step boundary

                    stats, done, reason = engine.train_epoch(
                        epoch, start_batch=batch_in_epoch, carry=carry, on_readout=on_readout,
                        should_stop=lambda: should_stop() or stop_flag["now"],
                    )
                    if reason == "diverged":
                        raise UserError(
                            f"training diverged at step {engine.step} (loss {stats.loss:.3g}); lower the learning "
                            f"rate or use --recipe cifar; last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none'}"
                        )
                    if reason == "interrupted":
                        save(epoch, done, stats)
                        last_save = time.monotonic()
                        if stop_flag["now"] and not should_stop():  # a periodic save: keep going
                            stop_flag["now"] = False
                            batch_in_epoch, carry = done, stats
                            continue
                        raise TrainingInterrupted(ckpt_path, engine.step)
                    val_acc, val_loss = engine.evaluate(data.val, use_ema=engine.ema is not None)
                    record = {
                        "epoch": epoch + 1, "step": engine.step, "lr": lr_fn(max(0, engine.step - 1)),
                        "train_loss": stats.loss, "train_acc": stats.acc, "val_acc": val_acc, "val_loss": val_loss,
                        "images_per_s": stats.seen / stats.seconds if stats.seconds else 0.0,
                        "epoch_seconds": stats.seconds, "time": time.time(),
                    }
                    epoch += 1
                    batch_in_epoch, carry = 0, EpochStats()
                    save(epoch, 0, carry)
                    last_save = time.monotonic()
                    _append_jsonl(metrics_path, record)
                    bar.update(engine.step, epoch - 1, config.epochs, stats, record["images_per_s"], val_acc)
                    summary = record
        finally:
            bar.close()
        if evaluate_test:
            summary["test_acc"], summary["test_loss"] = engine.evaluate(data.test, use_ema=engine.ema is not None)
        summary = {
            **summary, "epochs": config.epochs,
            "seconds": time.perf_counter() - t_run, "checkpoint": str(ckpt_path), "metrics": str(metrics_path),
            "arch": run_arch.name or run_arch.id, "arch_id": run_arch.id, "recipe": recipe.name,
            "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _load_raw(path: Path) -> dict:
    from mnas.safe_load import load_tensors

    ckpt = load_tensors(path, f"checkpoint {path}")
    if not isinstance(ckpt, dict) or not {"arch", "model", "num_classes"} <= set(ckpt):
        raise UserError(f"{path} is not an mnas training checkpoint (expected keys arch, model, num_classes)")
    return ckpt


def checkpoint_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise UserError(f"checkpoint {p} not found; pass the checkpoint.pt written by `mnas train` or its folder")
    return p


def load_checkpoint(path: str | Path, use_ema: bool | None = None) -> tuple[Architecture, nn.Module, dict]:
    """(arch, model in eval mode, meta) from a checkpoint file or its folder.

    The model carries the EMA weights when the recipe evaluates with them (unless use_ema=False).
    meta holds everything but the state dicts (epoch, step, recipe, config, data, resolution...).
    """
    p = checkpoint_path(path)
    ckpt = _load_raw(p)
    arch = Architecture.from_dict(ckpt["arch"])
    from mnas.model import build_model

    recipe = ckpt.get("recipe") or {}
    model = build_model(arch, num_classes=int(ckpt["num_classes"]), dropout=recipe.get("dropout", 0.2),
                        bn_momentum=recipe.get("bn_momentum", 0.1), bn_eps=recipe.get("bn_eps", 1e-3))
    ema = ckpt.get("ema")
    pick_ema = ckpt.get("eval_ema", False) if use_ema is None else use_ema
    state = ema["state"] if (pick_ema and ema) else ckpt["model"]
    model.load_state_dict(state)
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer", "rng")}
    meta["path"] = str(p)
    meta["used_ema"] = bool(pick_ema and ema)
    return arch, model, meta


def evaluate_checkpoint(
    path: str | Path, data_root: str | Path | None = None, split: str = "test", device: str = "auto",
    batch_size: int | None = None, data_name: str | None = None,
) -> dict[str, Any]:
    """Top-1 of a saved model on the test (or val) split of the dataset it was trained on."""
    from mnas.data import load_dataset

    arch, model, meta = load_checkpoint(path)
    cfg = meta.get("config") or {}
    data = load_dataset(
        data_name or cfg.get("data", "cifar10"), data_root=data_root or cfg.get("data_root"),
        val_size=cfg.get("val_size", 0.1), train_subset=None, seed=cfg.get("seed", 0),
        resolution=meta.get("resolution"),
    )
    if data.num_classes != meta["num_classes"]:
        raise UserError(f"dataset {data.name} has {data.num_classes} classes but the model has {meta['num_classes']}")
    if split not in ("test", "val"):
        raise UserError(f"split {split!r} must be test or val")
    dev = resolve_device(device)
    model.to(dev)
    acc, loss = evaluate_model(model, data, getattr(data, split), dev, batch_size=batch_size)
    return {
        "checkpoint": meta["path"], "arch": arch.name or arch.id, "arch_id": arch.id, "dataset": data.name,
        "split": split, "images": len(getattr(data, split)), "top1": acc, "loss": loss,
        "epoch": meta.get("epoch"), "step": meta.get("step"), "ema": meta["used_ema"],
    }


def replace_config(config: FitConfig, **changes: Any) -> FitConfig:
    return replace(config, **changes)
