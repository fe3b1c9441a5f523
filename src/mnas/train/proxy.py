"""The proxy: the short training that scores one sampled network on a held-out split.

Its budget is counted in training steps of `batch_size` images, split into rungs (successive
halving): `ProxyTrainer.train_to(k)` continues from wherever the network is to rung k's step count
and scores the held-out split there. The learning rate follows one schedule over the top rung
(warm-up, then cosine to zero at the top rung), as Hyperband and ASHA train: a candidate promoted
to the next rung goes on from its checkpoint exactly as if it had never stopped, so every
candidate that reaches the top rung has had the same training as a one-rung run of that many
steps, references included. (Cosine warm restarts at every rung were tried first: a restart to
the peak rate cost a candidate 4 points at the top rung, docs/benchmarks/proxy_step.md.)

It never raises for a bad candidate (divergence, out-of-memory, a blown time budget, a network that
cannot be built): `TrainResult.status` says why, so a search goes on. Its settings are the search
config's `proxy` section (`mnas.train.settings.ProxyConfig`), one default per setting.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mnas.architecture import Architecture
from mnas.data import DatasetSplits, mix_seed
from mnas.errors import UserError
from mnas.safe_load import load_tensors
from mnas.train.engine import (
    Engine,
    SpeedOptions,
    build_engine,
    build_network,
    fork_rng,
    is_oom,
    resolve_device,
    seed_initial_weights,
    train_steps_per_epoch,
)
from mnas.train.recipes import proxy_recipe
from mnas.train.settings import ProxyConfig


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


def proxy_rungs(proxy: ProxyConfig, data: DatasetSplits) -> list[int]:
    """The step counts of the proxy's rungs: `steps`, else `epochs` of the training split (capped
    by `max_steps`) as one rung."""
    if proxy.steps is not None:
        return list(proxy.steps)
    total = max(1, math.ceil(proxy.epochs * train_steps_per_epoch(data, proxy.batch_size)))
    return [min(total, proxy.max_steps) if proxy.max_steps is not None else total]


class ProxyTrainer:
    """One candidate's proxy training, continued rung by rung; saves and loads its own state."""

    def __init__(self, arch: Architecture, data: DatasetSplits, proxy: ProxyConfig, seed: int = 0) -> None:
        self.proxy = p = proxy
        self.data = data
        self.rungs = proxy_rungs(p, data)
        self.device = resolve_device(p.device)
        self.recipe = recipe = proxy_recipe(p)
        self.steps_per_epoch = train_steps_per_epoch(data, p.batch_size)
        self.seed = seed
        with fork_rng(self.device):
            seed_initial_weights(seed)
            net = build_network(arch.for_resolution(data.resolution, p.skeleton), data.num_classes, recipe)
            self.engine: Engine = build_engine(net, data, recipe, total_steps=self.rungs[-1], device=self.device,
                                               speed=SpeedOptions(p.amp, p.channels_last, p.fused, p.compile),
                                               seed=seed)

    @property
    def step(self) -> int:
        return self.engine.step

    def save(self, path: str | Path) -> None:
        """The state a promotion continues from, replaced only when completely written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        state = {"step": self.engine.step, "model": self.engine.model.state_dict(),
                 "optimizer": self.engine.optimizer.state_dict()}
        if self.engine.ema is not None:
            state["ema"] = self.engine.ema.state_dict()
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def load(self, path: str | Path) -> None:
        state = load_tensors(Path(path), f"proxy checkpoint {path}")
        if not isinstance(state, dict) or not {"step", "model", "optimizer"} <= set(state):
            raise UserError(f"proxy checkpoint {path} is not one mnas wrote")
        self.engine.model.load_state_dict(state["model"])
        self.engine.optimizer.load_state_dict(state["optimizer"])
        if self.engine.ema is not None and "ema" in state:
            self.engine.ema.load_state_dict(state["ema"])
        self.engine.step = int(state["step"])

    def train_to(self, rung: int, deadline: float | None = None, *, score: bool = True) -> TrainResult:
        """Train on from the current step to rung `rung`'s steps, then score the held-out split
        (unless `score` is False). The random draws of the segment (dropout, ...) are seeded from
        the seed and the step it starts at, so a rung continued in another process from a saved
        state trains exactly as one continued in memory."""
        t_start = time.perf_counter()
        nan = float("nan")
        engine, p = self.engine, self.proxy
        total = self.rungs[rung]
        loss_sum = seen = train_seconds = 0.0
        status = "ok"
        with fork_rng(self.device):
            torch.manual_seed(mix_seed(self.seed, engine.step, 17))
            while engine.step < total:
                epoch, start_batch = divmod(engine.step, self.steps_per_epoch)
                stats, _, reason = engine.train_epoch(epoch, start_batch=start_batch, max_steps=total,
                                                      deadline=deadline)
                loss_sum += stats.loss_sum
                seen += stats.seen
                train_seconds += stats.seconds
                if reason in ("diverged", "timeout"):
                    status = reason
                    break
            train_loss = loss_sum / seen if seen else nan
            done_epochs = engine.step / self.steps_per_epoch
            ips = seen / train_seconds if train_seconds > 0 else 0.0
            if status != "ok" or not score:
                return TrainResult(nan, nan, train_loss, done_epochs, ips, time.perf_counter() - t_start, status,
                                   engine.step)
            val_acc, val_loss = engine.evaluate(self.data.val, use_ema=p.ema_decay is not None,
                                                batch_size=p.eval_batch_size)
        if not math.isfinite(val_loss):
            status = "diverged"
        return TrainResult(val_acc, val_loss, train_loss, done_epochs, ips, time.perf_counter() - t_start, status,
                           engine.step)


def failed_result(status: str, seconds: float, steps: int = 0) -> TrainResult:
    nan = float("nan")
    return TrainResult(nan, nan, nan, 0.0, 0.0, seconds, status, steps)


def describe_failure(exc: BaseException) -> str:
    """A status for an exception out of training: "oom" or "error: <first line>"."""
    if is_oom(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return "oom"
    if isinstance(exc, UserError):
        return f"error: {exc}"
    return "error: " + f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def state_at(base: str | Path, steps: int) -> Path:
    """Where a candidate whose states live at `base` keeps its state after `steps` steps. One file
    per rung, so writing a rung's state never replaces the one the search's last stored rung
    continues from: a search killed after the write but before it stored the rung resumes cleanly."""
    base = Path(base)
    return base.with_name(f"{base.stem}.step{steps}{base.suffix}")


def states_of(base: str | Path) -> list[Path]:
    """Every state file a candidate whose states live at `base` has written."""
    base = Path(base)
    return sorted(base.parent.glob(f"{base.stem}.step*{base.suffix}"))


def train_rung(arch: Architecture, data: DatasetSplits, proxy: ProxyConfig, *, rung: int, seed: int = 0,
               state: str | Path | None = None) -> TrainResult:
    """Rung `rung` of `arch`'s proxy: from the checkpoint rung `rung - 1` left under `state` (see
    `state_at`) or from scratch at rung 0; saves the new state there unless this is the top rung.
    Never raises for a bad candidate."""
    t_start = time.perf_counter()
    trainer: ProxyTrainer | None = None
    try:
        trainer = ProxyTrainer(arch, data, proxy, seed)
        if rung > 0:
            previous = state_at(state, trainer.rungs[rung - 1]) if state is not None else None
            if previous is None or not previous.is_file():
                return failed_result(f"error: rung {rung} needs the checkpoint of rung {rung - 1} ({previous})",
                                     time.perf_counter() - t_start)
            trainer.load(previous)
            if trainer.step != trainer.rungs[rung - 1]:
                return failed_result(f"error: checkpoint {previous} is at step {trainer.step}, not at rung "
                                     f"{rung - 1} ({trainer.rungs[rung - 1]} steps)", time.perf_counter() - t_start)
        deadline = time.monotonic() + proxy.time_budget_s if proxy.time_budget_s is not None else None
        result = trainer.train_to(rung, deadline)
        if result.ok and state is not None and rung < len(trainer.rungs) - 1:
            trainer.save(state_at(state, trainer.rungs[rung]))
        return result
    except Exception as exc:  # never raise into the search loop
        steps = trainer.step if trainer is not None else 0
        return failed_result(describe_failure(exc), time.perf_counter() - t_start, steps)


def train_proxy(arch: Architecture, data: DatasetSplits, proxy: ProxyConfig | None = None, seed: int = 0) -> TrainResult:
    """Train `arch` through every rung of `proxy` (no early stopping) and score it on `data.val`.

    The peak learning rate defaults to 0.2 x batch/256 for SGD (0.016 for RMSProp-TF, 0.002 for
    AdamW). Never raises for a bad candidate: the status says "diverged", "oom", "timeout" or
    "error: ...".
    """
    p = proxy or ProxyConfig()
    t_start = time.perf_counter()
    trainer: ProxyTrainer | None = None
    try:
        trainer = ProxyTrainer(arch, data, p, seed)
        deadline = time.monotonic() + p.time_budget_s if p.time_budget_s is not None else None
        top = len(trainer.rungs) - 1
        for rung in range(top + 1):  # rung by rung, as a candidate promoted to the top is trained
            result = trainer.train_to(rung, deadline, score=rung == top)
            if not result.ok:
                break
        result.seconds = time.perf_counter() - t_start
        return result
    except Exception as exc:  # never raise into the search loop
        steps = trainer.step if trainer is not None else 0
        return failed_result(describe_failure(exc), time.perf_counter() - t_start, steps)
