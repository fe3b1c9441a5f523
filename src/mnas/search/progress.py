"""The live view of a search: trials done/total, best reward, Pareto size, current phase, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mnas.search.trial import Trial


class SearchProgress:
    """A rich progress bar plus one log line per finished trial; silent when `enabled` is False."""

    def __init__(self, total: int, done: int = 0, *, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TextColumn("pareto {task.fields[pareto]}"),
            TextColumn("{task.fields[phase]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("search", total=total, completed=done,
                                             best="-", pareto=0, phase="")

    def __enter__(self) -> SearchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def phase(self, trial: Trial, phase: str) -> None:
        self._progress.update(self._task, phase=f"trial {trial.trial_id}: {phase}")

    def finished(self, trial: Trial, best: float | None, pareto: int) -> None:
        self._progress.update(self._task, advance=1, best="-" if best is None else f"{best:.4f}",
                              pareto=pareto, phase="")
        if not self.enabled:
            return
        if trial.status == "done":
            line = (f"trial {trial.trial_id:>4} step {trial.step:>3} done   acc {trial.accuracy:.4f}  "
                    f"lat {trial.latency_ms:8.3f} ms  reward {trial.reward:.4f}  ({trial.seconds:.1f} s)")
        else:
            line = f"trial {trial.trial_id:>4} step {trial.step:>3} failed {trial.error}"
        self._progress.console.print(line, markup=False, highlight=False)

    def note(self, text: str) -> None:
        if self.enabled:
            self._progress.console.print(text, markup=False, highlight=False)
