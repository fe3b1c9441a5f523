"""The options `mnas train` and `mnas supernet train` share, checked before anything runs, and how
they combine with a checkpoint on `--resume` (contradictions refused, allowed changes announced).

The one home of the training defaults that several places use (the dataset, the validation share,
epochs, seed, device, the supernet's BN batches and scoring images) and of the one device check
(`check_device`) and seed check (`check_seed`): the training configs (`mnas.train.settings`), the
engine and the CLI import them.
Plain data and checks only (no torch), so the CLI validates them before loading anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mnas.architecture import SKELETONS
from mnas.errors import UserError

#: Settings that may differ on --resume, and what changing them means.
RESUME_MAY_CHANGE = {"epochs": "trains to the new epoch count", "device": "continues on the new device",
                     "data_root": "reads the same dataset from the new folder"}
DEFAULT_DATASET = "cifar10"
DEFAULT_VAL_SIZE = 0.1  # held-out share of the training images (a fraction, or a count when >= 1)
DEFAULT_EPOCHS = 10
DEFAULT_SEED = 0
DEFAULT_SKELETON = "auto"
DEFAULT_DEVICE = "auto"
DEVICES_HELP = "auto, cpu, cuda or cuda:N"
#: Supernet scoring: training batches that re-estimate BN per candidate, held-out images scored.
DEFAULT_BN_BATCHES = 8
DEFAULT_SCORE_IMAGES = 2000
#: How a supernet training step samples its paths (`mnas.supernet.sampling.step_paths`).
SUPERNET_RULES = ("sandwich", "spos")
#: Random paths per sandwich step at most: each is one more forward and backward per step
#: (BigNAS and Once-for-All use 2 to 4).
MAX_NUM_RANDOM = 16
#: Seeds are 0..2**32-1: numpy's SeedSequence refuses negative ones and `mnas.data.mix_seed` keeps
#: 32 bits, so a larger seed would silently draw the same numbers as a smaller one.
MAX_SEED = 2**32 - 1
#: Candidates `mnas supernet eval` scores in one call at most ('sample:N' included); each takes
#: about a second, so more is a job for `mnas search`.
MAX_EVAL_CANDIDATES = 10_000


def check_device(device: str) -> str:
    """The one device check: "auto", "cpu", "cuda" or "cuda:N" (else a UserError naming the choices).
    Whether the machine has that device is `mnas.train.engine.resolve_device`'s question."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isascii()
                                                       and device[5:].isdigit()):
        raise UserError(f"unknown device {device!r}; choose {DEVICES_HELP}")
    return device


def check_seed(seed: int | None, what: str = "--seed") -> None:
    """A seed mnas can use as given (None: the default), else one line with the valid range."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise UserError(f"{what} {seed} is out of range; use a whole number from 0 to {MAX_SEED}")


def check_num_random(value: int | None) -> None:
    """--num-random: 0 to MAX_NUM_RANDOM."""
    if value is not None and not 0 <= value <= MAX_NUM_RANDOM:
        raise UserError(f"--num-random {value} is out of range; use 0 to {MAX_NUM_RANDOM} random paths per step "
                        "(each one is another forward and backward pass)")


def sample_count(text: str, already: int = 0) -> int | None:
    """N of a 'sample:N' argument of `mnas supernet eval` (None: not a sample argument), checked
    against MAX_EVAL_CANDIDATES together with the `already` candidates before it."""
    if not text.startswith("sample:"):
        return None
    n = text.split(":", 1)[1]
    if not (n.isascii() and n.isdigit()) or len(n) > 9 or int(n) < 1:
        raise UserError(f"{text[:40]!r}: write sample:N with N from 1 to {MAX_EVAL_CANDIDATES:,}")
    if already + int(n) > MAX_EVAL_CANDIDATES:
        raise UserError(f"{text!r} asks for {already + int(n):,} candidates in all; score at most "
                        f"{MAX_EVAL_CANDIDATES:,} in one call (use mnas search for more)")
    return int(n)


@dataclass(frozen=True)
class RunOptions:
    """What the user typed (None: not given, so a new run takes the default and a resumed run the
    checkpoint's value)."""

    data: str | None = None
    data_root: str | None = None
    epochs: int | None = None
    recipe: str | None = None
    train_subset: int | None = None
    val_size: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    skeleton: str | None = None
    device: str | None = None

    def check(self, recipes: tuple[str, ...]) -> None:
        vs = self.val_size
        if vs is not None and (vs <= 0 or (vs >= 1 and not float(vs).is_integer())):
            raise UserError(f"--val-size {vs:g} must be a fraction in (0, 1) or a whole count of images")
        if self.skeleton is not None and self.skeleton not in SKELETONS:
            raise UserError(f"--skeleton {self.skeleton!r}: choose one of {', '.join(SKELETONS)}")
        if self.recipe is not None and self.recipe not in recipes:
            raise UserError(f"unknown recipe {self.recipe!r}; choose one of: {', '.join(recipes)}")
        if self.device is not None:
            check_device(self.device)
        check_seed(self.seed)

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def new_run(self) -> dict[str, Any]:
        """The run's settings with every default filled in (the recipe stays None = by resolution)."""
        vs = DEFAULT_VAL_SIZE if self.val_size is None else self.val_size
        return {"data": self.data or DEFAULT_DATASET, "data_root": self.data_root,
                "epochs": DEFAULT_EPOCHS if self.epochs is None else self.epochs, "recipe": self.recipe,
                "train_subset": self.train_subset, "val_size": int(vs) if vs >= 1 else vs,
                "batch_size": self.batch_size, "seed": DEFAULT_SEED if self.seed is None else self.seed,
                "skeleton": self.skeleton or DEFAULT_SKELETON, "device": self.device or DEFAULT_DEVICE}

    def resumed(self, saved: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
        """The checkpoint's settings with the allowed changes applied, and a note for each change."""
        given = self.given()
        wrong = [f"--{k.replace('_', '-')} {v} (the run has {saved.get(k)})" for k, v in given.items()
                 if k not in RESUME_MAY_CHANGE and _differs(v, saved.get(k))]
        if wrong:
            raise UserError(f"{', '.join(wrong)} contradicts the checkpoint {where}; drop it to continue the run, "
                            "or start a new run with --out")
        notes = [f"--{k.replace('_', '-')} {v} (was {saved.get(k)}): {RESUME_MAY_CHANGE[k]}"
                 for k, v in given.items() if k in RESUME_MAY_CHANGE and _differs(v, saved.get(k))]
        return {**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}}, notes


def _differs(given: object, saved: object) -> bool:
    if isinstance(given, (int, float)) and isinstance(saved, (int, float)) and not isinstance(given, bool):
        return float(given) != float(saved)
    return given != saved
