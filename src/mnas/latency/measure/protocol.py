"""The measurement protocol.

Each process is pinned to one core per thread and times the candidates and a reference network
(default: mobilenet_v2, built for the target's resolution and class count) in alternation, one
inference each (see `session`): warm-up >= 30 rounds and >= 0.5 s, >= 60 timed rounds, preempted
calls flagged (process CPU time / wall time < 0.9) and re-timed. One process times up to
`items_per_process` candidates against the same reference, so a batch of a search costs a few
processes, not a few per candidate.

Every candidate is timed in >= `PROCESSES` (3) separate processes, round-robin over the candidates. Its result:
- `relative`: the median of the per-process ratios candidate / reference, over the `processes`
  per-process ratios lying closest together; they must agree within `max_relative_spread`. The
  ratio cancels slow periods of the machine (a neighbour on a shared host slows a whole process by
  10-40% at a clean CPU/wall ratio; a phone throttles), which an absolute time cannot.
- `median_ms = relative x` the reference's latency on this target, measured once with the full
  protocol (`reference_latency`), cached, and reported with its date and spread.
- `raw_ms`: the candidate's own absolute time (median of the `processes` fastest per-process
  medians), for comparison; it moves with the weather.
While the used processes disagree, the candidate gets another round, up to `max_processes`
(`stable=False` if they never agree). Without a reference (`reference=None`) the absolute rule
alone decides, as for the reference's own latency.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from mnas.errors import UserError

DEFAULT_REFERENCE = "mobilenet_v2"
#: The separate processes every candidate is timed in: the protocol's count (the reference's own
#: latency needs at least this many; fewer is a quick look, not the protocol).
PROCESSES = 3
#: The most processes one measurement may ask for (each is a fresh interpreter, ~1 s to start).
MAX_PROCESSES = 64


def check_processes(processes: int, what: str = "processes") -> int:
    """The one bound on a process count, wherever it is written (a flag, a config, a call)."""
    if not 1 <= processes <= MAX_PROCESSES:
        raise UserError(f"{what} must lie in 1..{MAX_PROCESSES} (got {processes}); the protocol asks for {PROCESSES}")
    return processes


@dataclass(frozen=True)
class Protocol:
    """The knobs; the defaults are the minimums of the protocol (raising them is fine)."""

    warmup_iters: int = 30
    warmup_s: float = 0.5
    iters: int = 60
    preempt_ratio: float = 0.9
    max_flagged: float = 0.10
    retries: int = 2
    min_clean: int = 10  # fewer clean (unpreempted) calls than this: use every call
    worker_timeout_s: float = 900.0
    max_spread: float = 0.05  # absolute: the fastest processes agree within this
    max_relative_spread: float = 0.02  # relative: the closest processes agree within this
    max_processes: int = 9
    items_per_process: int = 16  # candidates timed against the reference in one process
    force_threads: bool = False  # allow more threads than cores (never sensible for latency)

    def __post_init__(self) -> None:
        for name in ("warmup_iters", "iters", "max_processes", "items_per_process"):
            if getattr(self, name) < 1:
                raise UserError(f"protocol {name} must be >= 1 (got {getattr(self, name)})")


DEFAULT_PROTOCOL = Protocol()


def pin(cpus: Sequence[int]) -> None:
    """Pin this process to `cpus` (best effort where sched_setaffinity is missing)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
