"""The proxy: the short training that scores one sampled network on a held-out split.

It never raises for a bad candidate (divergence, out-of-memory, a blown time budget, a network that
cannot be built): `TrainResult.status` says why, so a search goes on. Its settings are the search
config's `proxy` section (`mnas.config.ProxyConfig`), one default per setting.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from mnas.config import ProxyConfig
from mnas.data import DatasetSplits
from mnas.errors import UserError
from mnas.space import Architecture
from mnas.train.engine import Engine, SpeedOptions, build_engine, fork_rng, is_oom, resolve_device, train_steps_per_epoch
from mnas.train.recipes import DEFAULT_LR_PER_256, lr_schedule, proxy_warmup_steps


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


def train_proxy(arch: Architecture, data: DatasetSplits, proxy: ProxyConfig | None = None, seed: int = 0) -> TrainResult:
    """Train `arch` briefly on `data.train` as `proxy` says and score it on the held-out `data.val`.

    The peak learning rate defaults to 0.2 x batch/256 for SGD (0.016 for RMSProp-TF, 0.002 for
    AdamW). Never raises for a bad candidate: the status says "diverged", "oom", "timeout" or
    "error: ...".
    """
    p = proxy or ProxyConfig()
    t_start = time.perf_counter()
    nan = float("nan")

    def failed(status: str, steps: int = 0, train_loss: float = nan) -> TrainResult:
        return TrainResult(nan, nan, train_loss, 0.0, 0.0, time.perf_counter() - t_start, status, steps)

    try:
        dev = resolve_device(p.device)
    except UserError as exc:
        return failed(f"error: {exc}")
    engine: Engine | None = None
    try:
        with fork_rng(dev):
            peak = p.lr if p.lr is not None else DEFAULT_LR_PER_256[p.optimizer] * p.batch_size / 256.0
            steps_per_epoch = train_steps_per_epoch(data, p.batch_size)
            total = max(1, math.ceil(p.epochs * steps_per_epoch))
            if p.max_steps is not None:
                total = min(total, p.max_steps)
            lr_fn = lr_schedule(p.schedule, peak=peak, total_steps=total, steps_per_epoch=steps_per_epoch,
                                batch_size=p.batch_size, warmup_steps=proxy_warmup_steps(p.schedule, p.warmup, total))
            engine = build_engine(
                arch.for_resolution(data.resolution, p.skeleton), data, lr_fn=lr_fn, optimizer=p.optimizer,
                batch_size=p.batch_size,
                weight_decay=p.weight_decay, decay_biases=True, label_smoothing=p.label_smoothing,
                ema_decay=p.ema_decay, dropout=p.dropout, bn_momentum=p.bn_momentum, bn_eps=p.bn_eps,
                stable_init=p.stable_init, device=dev,
                speed=SpeedOptions(p.amp, p.channels_last, p.fused, p.compile), seed=seed,
            )
            deadline = time.monotonic() + p.time_budget_s if p.time_budget_s is not None else None
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
            val_acc, val_loss = engine.evaluate(data.val, use_ema=p.ema_decay is not None, batch_size=p.eval_batch_size)
            if not math.isfinite(val_loss):
                status = "diverged"
            seconds = time.perf_counter() - t_start
            return TrainResult(val_acc, val_loss, train_loss, done_epochs, ips, seconds, status, engine.step)
    except Exception as exc:  # never raise into the search loop
        steps = engine.step if engine is not None else 0
        engine = None
        if is_oom(exc):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return failed("oom", steps)
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return failed(f"error: {text}", steps)
