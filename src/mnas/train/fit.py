"""Full training of one network with a recipe: checkpoints, exact resume, progress, metrics.

`fit` checkpoints to OUT/checkpoint.pt at every epoch end, every `checkpoint_every_s` seconds (an
explicit check between steps) and on SIGINT/SIGTERM; metrics go to OUT/metrics.jsonl, the summary
to OUT/summary.json. `resume=True` continues exactly: same batches, same RNG, same weights.

Signals: in one process (`fit`, i.e. `mnas train`) SIGTERM and SIGINT are honoured within a second
wherever the run is (`SignalGuard`): the handler raises, a step in progress is undone, and the
checkpoint of the last completed step is written; the optimiser update and file writes finish
first. Several processes (torchrun) and supernets stop between steps (`stop_on_signals`).

Files: the run folder and its files are checked before the first step (`check_run_files`); every
write replaces its file whole (`mnas.paths`), and a full disk is one line (`RunWriteFailed`) that
says which checkpoint was kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnas.architecture import Architecture
from mnas.data import DatasetSplits, check_fits
from mnas.errors import Terminated, UserError, WriteFailed
from mnas.paths import writable_dir, write_text
from mnas.train.checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from mnas.train.distributed import Distributed, from_environment
from mnas.train.engine import (
    Engine,
    EpochStats,
    SpeedOptions,
    StepFn,
    build_engine,
    build_network,
    fork_rng,
    resolve_device,
    seed_initial_weights,
    train_steps_per_epoch,
)
from mnas.train.progress import TrainProgress
from mnas.train.recipes import Recipe, run_recipe
from mnas.train.settings import FitConfig

__all__ = ["FitConfig", "RunWriteFailed", "SignalGuard", "Trainee", "TraineeFactory", "TrainingInterrupted", "fit",
           "fit_trainee"]

METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"


class TrainingInterrupted(Exception):
    """Raised by `fit` after it saved a checkpoint because of SIGINT/SIGTERM or `stop_after_steps`.

    `signum`: the signal (None for `stop_after_steps`); `finished`: every epoch was trained and
    saved already (the signal came during the final test evaluation)."""

    def __init__(self, checkpoint: Path, step: int, signum: int | None = None, finished: bool = False) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.checkpoint = checkpoint
        self.step = step
        self.signum = signum
        self.finished = finished

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a process the signal ended: 143 for SIGTERM, else 130."""
        return 128 + (self.signum if self.signum == signal.SIGTERM else signal.SIGINT)


class RunWriteFailed(UserError):
    """A run file could not be written (a full disk, a vanished folder): the run stops with the
    last checkpoint on disk intact. The CLI adds the command that continues the run."""

    def __init__(self, path: Path, why: str, kept: Path | None, step: int | None) -> None:
        self.path, self.why, self.kept, self.step = path, why, kept, step
        if kept is not None:
            saved = f"the last checkpoint {kept}{f' (step {step})' if step is not None else ''} was kept"
        else:
            saved = "no checkpoint was written yet"
        super().__init__(f"could not write {path} ({why}); {saved}")

    def with_way_on(self, resume_command: str) -> UserError:
        """The CLI's one line: what was kept, and `resume_command` where a checkpoint was kept."""
        then = f"then continue with: {resume_command}" if self.kept is not None else "then run the same command again"
        return UserError(f"{self}: free some space or make the folder writable, {then}")


def _why(exc: BaseException, path: Path) -> str:
    """The reason of a failed write of `path`: an OSError's text, or the one `mnas.paths` gave
    (`WriteFailed.why`); any other error's whole text."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, WriteFailed) and exc.path == path:
        return exc.why
    return str(exc) or type(exc).__name__


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One line appended and fsynced (a crash mid-line leaves a line `trim_metrics` drops)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def trim_metrics(path: Path, completed_epochs: int) -> None:
    """Keep only lines for epochs the checkpoint has (metrics are written before the checkpoint, so
    a crash between the two leaves one more; a line cut short by a full disk is dropped too)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("epoch", 0) <= completed_epochs:
            keep.append(line)
    write_text(path, "".join(k + "\n" for k in keep))


def check_run_files(out: Path) -> None:
    """Before any step: the run folder can be written, and each file the run writes there
    (checkpoint.pt, metrics.jsonl, summary.json) is not a folder or a link and can be written, so
    a read-only folder or file is one line now, not after the first epoch."""
    writable_dir(out, "run folder")
    for name in (CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME):
        p = out / name
        if p.is_symlink():
            raise UserError(f"{p} is a symbolic link (to {os.readlink(p)}); mnas does not write through links: "
                            "remove the link or choose another --out")
        if p.is_dir():
            raise UserError(f"{p} is a folder where the run writes its {name}; remove it or choose another --out")
        if p.exists() and not os.access(p, os.W_OK):
            raise UserError(f"{p} is read-only; make it writable (chmod u+w) or choose another --out")


class SignalGuard:
    """SIGINT / SIGTERM during a run.

    The handler records the signal (a flag the step loop reads between steps). With `abort` it
    also raises (`Terminated` for SIGTERM, KeyboardInterrupt for SIGINT) while the run is inside
    `abortable()`: loading a batch, a forward and backward pass, an evaluation, building the run,
    so the signal is honoured within a second wherever the time goes. Outside (the optimiser update,
    a checkpoint or metrics write, bookkeeping) it waits for the next `abortable()` or check, so the
    state and the files always agree. It raises once: the save that follows is not cut short."""

    def __init__(self, abort: bool) -> None:
        self.abort = abort
        self.signum: int | None = None
        self._abortable = 0
        self._raised = False

    def __call__(self) -> bool:
        """A signal arrived."""
        return self.signum is not None

    def handler(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        if self._abortable:
            self._raise()

    def _raise(self) -> None:
        if self.abort and self.signum is not None and not self._raised:
            self._raised = True
            raise Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """Inside, a signal raises at once (and one that came before raises on entry)."""
        self._abortable += 1
        try:
            self._raise()  # after the count: a signal just before entering is not missed
            yield
        finally:
            self._abortable -= 1

    def stop_raising(self) -> None:
        """From now on a signal only sets the flag (the run is already stopping)."""
        self._raised = True


@contextlib.contextmanager
def stop_on_signals(abort: bool = False) -> Iterator[SignalGuard]:
    """SIGINT / SIGTERM go to a `SignalGuard` inside (main thread only); the previous handlers are
    restored afterwards."""
    guard = SignalGuard(abort)
    installed: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                installed.append((sig, signal.signal(sig, guard.handler)))
    try:
        yield guard
    finally:
        for sig, old in installed:
            signal.signal(sig, old)


@dataclass
class Trainee:
    """What `fit_trainee` trains: a module, how a step runs on it, its optimiser groups, how it is
    scored after each epoch, and the plain data that names it in the checkpoint (an architecture,
    or a supernet's space)."""

    model: nn.Module
    record: dict[str, Any]
    step_fn: StepFn | None = None
    param_groups: list[dict[str, Any]] | None = None
    evaluate: Callable[[Engine], tuple[float, float]] | None = None  # (val top-1, val loss)
    after_save: Callable[[Engine, Path], None] | None = None  # at each epoch end, e.g. export the supernet file


#: Builds the trainee with the run's recipe; on resume it gets the checkpoint (to rebuild what the
#: record names).
TraineeFactory = Callable[[dict[str, Any] | None, Recipe], Trainee]


class _Run:
    """One training run's engine and files: what a checkpoint holds and how it is restored."""

    def __init__(self, trainee: TraineeFactory, data: DatasetSplits, config: FitConfig, out: Path,
                 recipe: Recipe, device: torch.device, speed: SpeedOptions,
                 dist: Distributed | None, ckpt: dict[str, Any] | None) -> None:
        self.data, self.config, self.recipe, self.out, self.dist = data, config, recipe, out, dist
        self.ckpt_path = out / CHECKPOINT_NAME
        self.metrics_path = out / METRICS_NAME
        self.saved_step: int | None = int(ckpt["step"]) if ckpt is not None else None  # the checkpoint on disk
        self.device = device
        self.steps_per_epoch = train_steps_per_epoch(data, recipe.batch_size)
        seed_initial_weights(config.seed)  # the same initial weights on every rank
        self.trainee = trainee(ckpt, recipe)
        self.engine = build_engine(
            self.trainee.model, data, recipe, total_steps=config.epochs * self.steps_per_epoch, device=device,
            speed=speed, seed=config.seed, step_fn=self.trainee.step_fn, param_groups=self.trainee.param_groups,
            shard=(dist.rank, dist.world) if dist else (0, 1),
        )
        self.lr_fn = self.engine.lr_fn
        if dist is not None:
            self.engine.wrap(dist.wrap(self.engine.model))
        self.config_record = {**config.model_dump(), "batch_size": recipe.batch_size}

    @property
    def main(self) -> bool:
        return self.dist is None or self.dist.main

    def evaluate(self) -> tuple[float, float]:
        if self.trainee.evaluate is not None:
            return self.trainee.evaluate(self.engine)
        return self.engine.evaluate(self.data.val, use_ema=self.engine.ema is not None)

    def save(self, epoch: int, batch: int, running: EpochStats) -> None:
        if not self.main:
            return
        e = self.engine
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        try:
            save_checkpoint({
                **self.trainee.record, "num_classes": self.data.num_classes, "resolution": self.data.resolution,
                "model": e.model.state_dict(), "ema": e.ema.state_dict() if e.ema else None,
                "optimizer": e.optimizer.state_dict(), "epoch": epoch, "batch_in_epoch": batch,
                "step": e.step, "recipe": asdict(self.recipe), "config": self.config_record, "rng": rng,
                "running": asdict(running),
                "data": {**self.data.describe(), "mean": self.data.mean, "std": self.data.std},
                "eval_ema": e.ema is not None, "mnas_checkpoint": 1,
            }, self.ckpt_path)
        except UserError as exc:  # mnas.paths: a full disk, a vanished folder; the previous file is kept
            raise self.write_failed(self.ckpt_path, exc) from None
        self.saved_step = e.step
        if self.trainee.after_save is not None and batch == 0:  # epoch ends only
            self.trainee.after_save(e, self.out)

    def log(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl (rank 0)."""
        if not self.main:
            return
        try:
            append_jsonl(self.metrics_path, record)
        except OSError as exc:
            raise self.write_failed(self.metrics_path, exc) from None

    def write_failed(self, path: Path, exc: BaseException) -> RunWriteFailed:
        kept = self.ckpt_path if self.saved_step is not None and self.ckpt_path.is_file() else None
        return RunWriteFailed(path, _why(exc, path), kept, self.saved_step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json, replaced whole (rank 0)."""
        if not self.main:
            return
        path = self.out / SUMMARY_NAME
        try:
            write_text(path, json.dumps(summary, indent=2) + "\n")
        except UserError as exc:
            raise self.write_failed(path, exc) from None

    def restore(self, ckpt: dict[str, Any]) -> tuple[int, int, EpochStats]:
        """Load a checkpoint's state; returns (epoch, batch in epoch, running stats) to continue from."""
        e = self.engine
        e.model.load_state_dict(ckpt["model"])
        e.optimizer.load_state_dict(ckpt["optimizer"])
        if e.ema is not None and ckpt.get("ema"):
            e.ema.load_state_dict(ckpt["ema"])
        e.step = int(ckpt["step"])
        epoch, batch = int(ckpt["epoch"]), int(ckpt.get("batch_in_epoch", 0))
        if batch:
            torch.set_rng_state(ckpt["rng"]["cpu"])
            if self.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        if self.main:
            trim_metrics(self.metrics_path, epoch)
        return epoch, batch, EpochStats(**ckpt.get("running", {}))


def _check_resumable(ckpt: dict[str, Any], data: DatasetSplits, path: Path) -> None:
    check_fits(data, int(ckpt["num_classes"]), int(ckpt.get("resolution", data.resolution)), f"the run's model ({path})")


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
    init_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train `arch` with its recipe (`config.recipe`, else the one for the data's resolution) into
    `out` (see the module docstring).

    `stop_after_steps` interrupts deliberately after that many steps (for tests), like a signal.
    `init_state` starts from these weights instead of the recipe's initialisation (e.g. inherited
    from a supernet). Returns a summary dict (val top-1, images/s, seconds, paths; test top-1 with
    evaluate_test, the only place training touches the test set). Resuming a finished run trains
    nothing and returns its stored summary.
    """
    run_arch = arch.for_resolution(data.resolution, config.skeleton)

    def trainee(ckpt: dict[str, Any] | None, recipe: Recipe) -> Trainee:
        nonlocal run_arch
        if ckpt is not None:
            run_arch = Architecture.from_dict(ckpt["arch"])
        net = build_network(run_arch, data.num_classes, recipe)
        if init_state is not None:
            net.load_state_dict(init_state)
        return Trainee(net, {"arch": run_arch.to_dict()})

    summary = fit_trainee(trainee, data, config, out, resume=resume, progress=progress, stop_after_steps=stop_after_steps,
                          checkpoint_every_s=checkpoint_every_s, speed=speed, evaluate_test=evaluate_test,
                          abort_steps=True)
    return {**summary, "arch": run_arch.name or run_arch.id, "arch_id": run_arch.id}


def fit_trainee(
    trainee: TraineeFactory,
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
    abort_steps: bool = False,
) -> dict[str, Any]:
    """The training run behind `fit` for any `Trainee` (a network, or a supernet), one process or
    several under torchrun. `trainee(checkpoint or None, recipe)` is called after seeding, so
    initial weights follow the seed. The recipe is `run_recipe(config, data.resolution)`; its name
    is what the checkpoint's config records. `abort_steps`: in one process, a signal cuts a step
    midway (`SignalGuard`); else it is read between steps."""
    out = Path(out)
    recipe = run_recipe(config, data.resolution)
    config = config.model_copy(update={"recipe": recipe.name})
    if recipe.batch_size < 1 or config.epochs < 1:
        raise UserError(f"batch size and epochs must be >= 1 (got {recipe.batch_size} and {config.epochs})")
    dev = resolve_device(config.device)
    ckpt: dict[str, Any] | None = None
    if resume:
        path = out / CHECKPOINT_NAME
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist; start a run with --out {out}")
        ckpt = read_checkpoint(path)
        _check_resumable(ckpt, data, path)
        finished = _finished_summary(out, ckpt, config)
        if finished is not None:
            return finished
    dist = from_environment(dev)
    if dist is not None:
        dev = dist.device
    try:
        if dist is None or dist.main:
            check_run_files(out)
        aborting = abort_steps and dist is None
        with fork_rng(dev), (stop_on_signals(abort=True) if aborting else contextlib.nullcontext()) as guard:
            abortable = guard.abortable if guard is not None else contextlib.nullcontext
            with abortable():  # nothing written yet
                run = _Run(trainee, data, config, out, recipe, dev, speed or SpeedOptions(compile=config.compile), dist,
                           ckpt)
            epoch, batch_in_epoch, carry = 0, 0, EpochStats()
            if ckpt is not None:
                epoch, batch_in_epoch, carry = run.restore(ckpt)
            elif run.main and run.metrics_path.exists():
                run.metrics_path.unlink()
            t_run = time.perf_counter()
            summary = _train_epochs(run, epoch, batch_in_epoch, carry, guard, progress=progress and run.main,
                                    stop_after_steps=stop_after_steps, checkpoint_every_s=checkpoint_every_s)
            summary = {
                **summary, "epochs": config.epochs,
                "seconds": time.perf_counter() - t_run, "checkpoint": str(run.ckpt_path), "metrics": str(run.metrics_path),
                "recipe": recipe.name, "train_images": len(data.train), "val_images": len(data.val),
                "test_images": len(data.test), **({"processes": dist.world} if dist else {}),
            }
            run.write_summary(summary)  # before the test evaluation: a signal during it loses nothing trained
            if evaluate_test:
                try:
                    with abortable():
                        summary["test_acc"], summary["test_loss"] = run.engine.evaluate(
                            data.test, use_ema=run.engine.ema is not None)
                except KeyboardInterrupt:
                    if guard is None:
                        raise
                    raise TrainingInterrupted(run.ckpt_path, run.engine.step, guard.signum, finished=True) from None
                run.write_summary(summary)
            return summary
    finally:
        if dist is not None:
            dist.close()


def _finished_summary(out: Path, ckpt: dict[str, Any], config: FitConfig) -> dict[str, Any] | None:
    """The stored summary of a run that already trained all its epochs (nothing is rewritten)."""
    if int(ckpt["epoch"]) < config.epochs or int(ckpt.get("batch_in_epoch", 0)):
        return None
    path = out / "summary.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        raise UserError(f"{out} finished its {ckpt['epoch']} epochs but its summary.json is missing or damaged; "
                        f"evaluate it with `mnas eval {out}`, or train longer with --epochs N") from None


def _train_epochs(run: _Run, epoch: int, batch_in_epoch: int, carry: EpochStats, guard: SignalGuard | None, *,
                  progress: bool, stop_after_steps: int | None, checkpoint_every_s: float) -> dict[str, Any]:
    """The epoch loop: train, evaluate on the held-out split, log, checkpoint; stop on a signal.

    `guard`: an aborting `SignalGuard` the caller installed (one process), else signals are read
    between steps. Either way a signal ends in a checkpoint of the last completed step and
    `TrainingInterrupted`."""
    engine, epochs = run.engine, run.config.epochs
    bar = TrainProgress(progress, epochs * run.steps_per_epoch, engine.step)
    last_save = time.monotonic()
    summary: dict[str, Any] = {}

    def save(ep: int, batch: int, running: EpochStats) -> None:
        nonlocal last_save
        run.save(ep, batch, running)
        last_save = time.monotonic()

    def interrupted(ep: int, batch: int, running: EpochStats) -> TrainingInterrupted:
        """Save where the run stands (a step boundary) and say so; a further signal cannot cut the save."""
        signals.stop_raising()
        run.save(ep, batch, running)
        return TrainingInterrupted(run.ckpt_path, engine.step, signals.signum)

    def on_readout(ep: int, batch: int, st: EpochStats) -> None:
        bar.update(engine.step, ep, epochs, st, st.seen / st.seconds if st.seconds else None)

    aborting = guard is not None
    try:
        with contextlib.nullcontext(guard) if guard is not None else stop_on_signals() as signals:
            assert signals is not None

            def should_stop() -> bool:
                stop = (stop_after_steps is not None and engine.step >= stop_after_steps) or signals()
                if run.dist is None:
                    return stop
                # ranks must stop at the same step: agree every 10 steps (a signal may reach only some)
                return engine.step % 10 == 0 and run.dist.any(stop)

            def save_due() -> bool:
                return run.main and time.monotonic() - last_save > checkpoint_every_s

            bar.update(engine.step, epoch, epochs)  # a first line as soon as training starts
            while epoch < epochs:
                stats, done, reason = engine.train_epoch(
                    epoch, start_batch=batch_in_epoch, carry=carry, on_readout=on_readout, should_stop=should_stop,
                    save_due=save_due, save=save, guard=signals if aborting else None,
                )
                if reason == "diverged":
                    good = run.ckpt_path if run.ckpt_path.exists() else "none"
                    raise UserError(f"training diverged at step {engine.step} (loss {stats.loss:.3g}); lower the learning "
                                    f"rate or use --recipe cifar; last good checkpoint: {good}")
                if reason == "interrupted":
                    raise interrupted(epoch, done, stats)
                try:
                    with signals.abortable():
                        val_acc, val_loss = run.evaluate() if run.main else (float("nan"), float("nan"))
                except KeyboardInterrupt:  # the epoch is trained: saved at its last batch, scored on resume
                    if not aborting:
                        raise
                    raise interrupted(epoch, done, stats) from None
                record = {
                    "epoch": epoch + 1, "step": engine.step, "lr": run.lr_fn(max(0, engine.step - 1)),
                    "train_loss": stats.loss, "train_acc": stats.acc, "val_acc": val_acc, "val_loss": val_loss,
                    "images_per_s": stats.seen / stats.seconds if stats.seconds else 0.0,
                    "epoch_seconds": stats.seconds, "time": time.time(),
                }
                run.log(record)  # the line, then the checkpoint that covers it (resume trims a line too many)
                epoch += 1
                batch_in_epoch, carry = 0, EpochStats()
                save(epoch, 0, carry)
                bar.update(engine.step, epoch - 1, epochs, stats, record["images_per_s"], val_acc)
                summary = record
    finally:
        bar.close()
    return summary
