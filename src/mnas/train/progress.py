"""The live view of a training run: a rich bar on a terminal, a plain line every 30 s otherwise."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mnas.train.engine import EpochStats


class TrainProgress:
    """A rich progress bar (loss, accuracy, images/s, ETA) on stderr; on a non-terminal (a log
    file, CI) a plain line every 30 s and at each epoch end instead; or nothing."""

    def __init__(self, enabled: bool, total_steps: int, done_steps: int, label: str = "train") -> None:
        self.bar: Progress | None = None
        self.plain: Console | None = None
        self.total = total_steps
        self.last_plain = 0.0
        self.t0 = time.monotonic()
        self.start_steps = done_steps
        if not enabled:
            return
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
        self.task = self.bar.add_task(label, total=total_steps, completed=done_steps, loss="-", acc="-", ips="-", val="-")
        self.bar.start()

    def update(self, step: int, epoch: int, epochs: int, stats: EpochStats | None = None, ips: float | None = None,
               val: float | None = None) -> None:
        if self.plain is not None:
            self._plain_line(step, epoch, epochs, stats, ips, val)
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

    def _plain_line(self, step: int, epoch: int, epochs: int, stats: EpochStats | None, ips: float | None,
                    val: float | None) -> None:
        assert self.plain is not None
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
        if eta == eta:  # not NaN: at least one step timed
            parts.append(f"ETA {eta:.0f} s")
        self.plain.print("  ".join(parts), highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
