"""The search: evaluate candidates (latency + proxy accuracy), reward them, store, learn.

`start_search` / `resume_search` run the loop (see `mnas.search.loop`); executors in
`mnas.search.local` (in-process) and `mnas.search.ray_executor` (Ray tasks) only move
`evaluate(arch, config) -> Trial` calls around.
"""

from mnas.search.evaluation import accuracy_parts, evaluate, evaluate_batch, latency_parts
from mnas.search.local import Executor, Hooks, LocalExecutor
from mnas.search.loop import SearchOutcome, make_reward, prepare, resume_search, start_search

__all__ = [
    "Executor",
    "Hooks",
    "LocalExecutor",
    "SearchOutcome",
    "accuracy_parts",
    "evaluate",
    "evaluate_batch",
    "latency_parts",
    "make_reward",
    "prepare",
    "resume_search",
    "start_search",
]
