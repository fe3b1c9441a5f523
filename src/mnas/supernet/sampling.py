"""Which paths a training step trains: a pure function of (seed, step), no hidden global state.

A resumed run and every DistributedDataParallel rank compute the same paths for the same step,
because each step's random generator is seeded with `mnas.data.mix_seed(seed, step, k)`.
"""

from __future__ import annotations

import random

from mnas.architecture import Architecture
from mnas.data import mix_seed
from mnas.run_options import SUPERNET_RULES
from mnas.space import SearchSpace
from mnas.supernet.network import Supernet

RULES = SUPERNET_RULES
_PATH_TAG = 0x5A7  # keeps these draws apart from other users of mix_seed(seed, step, ...)


def random_path(space: SearchSpace, seed: int, step: int, k: int = 0) -> Architecture:
    """The k-th uniform random path of a step (uniform over each decision, like `space.sample`)."""
    return space.sample(random.Random(mix_seed(seed, _PATH_TAG, step, k)))


def step_paths(supernet: Supernet, rule: str, seed: int, step: int, num_random: int = 2) -> list[Architecture]:
    """The paths of one step, in the order they are trained.

    "spos": one uniform random path (single-path one-shot, Guo et al. 2020).
    "sandwich": the largest path, the smallest path, then `num_random` uniform random paths
    (BigNAS / Once-for-All); the first is the teacher of the others."""
    if rule == "spos":
        return [random_path(supernet.space, seed, step)]
    if rule == "sandwich":
        return [supernet.largest(), supernet.smallest()] + [
            random_path(supernet.space, seed, step, k) for k in range(num_random)]
    raise ValueError(f"unknown sampling rule {rule!r}; choose one of {', '.join(RULES)}")
