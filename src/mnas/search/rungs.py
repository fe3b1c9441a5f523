"""Early stopping across fidelities: successive halving (ASHA) over the accuracy model's rungs.

The rung logic is Optuna's `SuccessiveHalvingPruner` (the asynchronous successive halving of Li et
al., 2020), used as it is: each candidate is an Optuna trial of an in-memory study that reports its
reward at rung k as an intermediate value at step `reduction_factor ** k`, and the pruner says at
once whether it is among the best `keep` of everything that finished rung k so far; if so it is
promoted to rung k + 1, else it stops there for good. Decisions are stored with the rung results
(`mnas.search.store.RungRecord`) in the order they were taken, so a resumed search replays them into a
fresh study and decides the next ones exactly as the first session would have.

`climb` runs a batch of candidates up the rungs on a pool of workers: at most `workers` rungs in
flight, promotions before fresh candidates (ASHA's rule: finish what looks good first), and every
finished rung handed to the driver's `decide` (which stores it) before anything else happens.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import optuna

from mnas.search.accuracy import RungResult, short_error
from mnas.search.store import RungRecord
from mnas.search.trial import Trial


class RungScheduler:
    """Promote or stop a candidate after each rung (Optuna's SuccessiveHalvingPruner)."""

    def __init__(self, rungs: Sequence[int], keep: float) -> None:
        self.rungs = list(rungs)
        self.eta = max(2, round(1 / keep))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=self.eta,
                                                        min_early_stopping_rate=0)
        self.study = optuna.create_study(direction="maximize", pruner=pruner,
                                         sampler=optuna.samplers.RandomSampler(seed=0))
        self._trials: dict[int, optuna.trial.Trial] = {}

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    def decide(self, trial_id: int, rung: int, reward: float) -> bool:
        """True: continue `trial_id` to rung + 1. The top rung is never promoted."""
        if rung >= self.top:
            return False
        trial = self._trials.get(trial_id)
        if trial is None:
            trial = self._trials[trial_id] = self.study.ask()
        trial.report(float(reward), step=self.eta ** rung)
        return not trial.should_prune()

    def replay(self, records: Sequence[RungRecord]) -> None:
        """Rebuild the pruner's state from stored decisions (a resumed search)."""
        for r in records:
            self.decide(r.trial_id, r.rung, r.reward)


SubmitFn = Callable[[Trial, int], "Future[RungResult]"]
DecideFn = Callable[[Trial, int, RungResult], bool]
FinishFn = Callable[[Trial, RungResult | None], None]


def climb(starts: Sequence[tuple[Trial, int]], *, submit: SubmitFn, decide: DecideFn, finish: FinishFn,
          workers: int) -> None:
    """Run each (trial, first rung) up the rungs: `submit` starts a rung on a worker, `decide`
    stores a finished rung and says whether to promote it, `finish` ends a trial with its last
    result (None: it failed before any rung). Higher rungs are started first."""
    order = itertools.count()
    queue: list[tuple[int, int, int, Trial]] = [(-rung, next(order), rung, trial) for trial, rung in starts]
    heapq.heapify(queue)
    inflight: dict[Future[RungResult], tuple[Trial, int]] = {}
    while queue or inflight:
        while queue and len(inflight) < max(1, workers):
            _, _, rung, trial = heapq.heappop(queue)
            inflight[submit(trial, rung)] = (trial, rung)
        done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
        for future in done:
            trial, rung = inflight.pop(future)
            result = _result(future)
            if not result.ok:
                finish(trial, result)
            elif decide(trial, rung, result):
                heapq.heappush(queue, (-(rung + 1), next(order), rung + 1, trial))
            else:
                finish(trial, result)


def _result(future: Future[RungResult]) -> RungResult:
    try:
        return future.result()
    except Exception as exc:  # a worker that died or a task that raised: the trial fails, the search goes on
        return RungResult(None, "accuracy: " + short_error(exc), 0.0, 0)


def done_future(value: Any) -> Future[Any]:
    """A future that already holds `value` (work run in this process)."""
    future: Future[Any] = Future()
    future.set_result(value)
    return future
