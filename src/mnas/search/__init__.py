"""The search: evaluate candidates (latency + proxy accuracy), reward them, store, learn.

`start_search` / `resume_search` run the loop (see `mnas.search.loop`); executors in
`mnas.search.local` (in-process) and `mnas.search.ray_executor` (Ray tasks) only move
`evaluate(arch, config) -> Trial` calls around.
"""

from mnas.search.evaluation import evaluate, latency_part, train_part
from mnas.search.local import Executor, Hooks, LocalExecutor
from mnas.search.loop import SearchOutcome, make_reward, prepare, resume_search, start_search

__all__ = [
    "Executor",
    "Hooks",
    "LocalExecutor",
    "SearchOutcome",
    "evaluate",
    "latency_part",
    "make_reward",
    "prepare",
    "resume_search",
    "start_search",
    "train_part",
]
