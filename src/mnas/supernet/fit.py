"""Training a supernet for real: the project's training run (`mnas.train.fit.fit_trainee`, with
the recipe `mnas.train.recipes.run_recipe` picks) driving `SupernetStep`, so it has the same data
pipeline, held-out split, optimiser, progress bar, checkpoints, Ctrl-C, `--resume` and torchrun as
`mnas train`. Every epoch end also writes
`supernet.pt` (weights + space, what scoring and search load), so a stopped run is usable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnas.data import DatasetSplits
from mnas.errors import UserError
from mnas.space import SearchSpace
from mnas.supernet import stopping
from mnas.supernet.io import load_supernet, save_supernet
from mnas.supernet.network import Supernet
from mnas.supernet.score import score_one, scoring_data
from mnas.supernet.step import SupernetStep
from mnas.supernet.training import supernet_param_groups
from mnas.train.engine import Engine, SpeedOptions
from mnas.train.fit import Trainee, TraineeFactory, fit_trainee
from mnas.train.recipes import Recipe
from mnas.train.settings import FitConfig, SupernetSettings


def _trainee(space: SearchSpace, data: DatasetSplits, config: FitConfig, settings: SupernetSettings) -> TraineeFactory:
    def make(ckpt: dict[str, Any] | None, recipe: Recipe) -> Trainee:
        if ckpt is not None and SearchSpace.from_dict(ckpt["supernet"]["space"]) != space:
            raise UserError("the checkpoint holds a supernet of another space; resume with the space it was started with")
        net = Supernet(space, data.num_classes, data.resolution, skeleton=config.skeleton, dropout=recipe.dropout,
                       bn_momentum=recipe.bn_momentum, bn_eps=recipe.bn_eps)
        step = SupernetStep(net, rule=settings.rule, num_random=settings.num_random,
                            label_smoothing=recipe.label_smoothing, seed=config.seed)
        sd_cache: dict[str, Any] = {}

        def evaluate(engine: Engine) -> tuple[float, float]:
            """Held-out top-1 of the largest path after BN re-estimation (the teacher's quality);
            NaN when a signal stops the scoring (the epoch's training is saved all the same)."""
            stopping.watch()
            try:
                if "sd" not in sd_cache:
                    sd_cache["sd"] = scoring_data(data, bn_batches=settings.eval_bn_batches, images=len(data.val),
                                                  device=engine.device, seed=config.seed)
                return score_one(net, net.largest(), sd_cache["sd"]), float("nan")
            except stopping.ScoringStopped:
                return float("nan"), float("nan")

        def after_save(engine: Engine, out: Path) -> None:
            save_supernet(net, out, {"data": data.describe(), "step": engine.step,
                                     "config": {**config.model_dump(), "recipe": recipe.name},
                                     "training": {"recipe": recipe.name, "rule": settings.rule,
                                                  "num_random": settings.num_random, "seed": config.seed}})

        return Trainee(net, {"supernet": net.config()}, step, supernet_param_groups(net, recipe.weight_decay),
                       evaluate, after_save)

    return make


def fit_supernet(space: SearchSpace, data: DatasetSplits, config: FitConfig, out: str | Path, *,
                 settings: SupernetSettings | None = None, resume: bool = False, progress: bool = True,
                 stop_after_steps: int | None = None, checkpoint_every_s: float = 120.0,
                 speed: SpeedOptions | None = None) -> dict[str, Any]:
    """Train a supernet of `space` on `data` into `out` (checkpoint.pt for resume, supernet.pt).
    `settings` (default: `config.supernet`, else the defaults) go into the config with the space."""
    settings = (settings or config.supernet or SupernetSettings()).model_copy(update={"space": space.to_dict()})
    config = config.model_copy(update={"supernet": settings})
    with stopping.interruptible() as signalled:
        summary = fit_trainee(_trainee(space, data, config, settings), data, config, out, resume=resume,
                              progress=progress, stop_after_steps=stop_after_steps,
                              checkpoint_every_s=checkpoint_every_s, speed=speed)
    # a signal that came while the last epoch was scored: every epoch is trained and saved, the
    # last score is NaN; the caller says so (and exits as interrupted)
    return {**summary, "space": space.name, "rule": settings.rule, "supernet": str(Path(out) / "supernet.pt"),
            **({"signalled": True} if signalled[0] else {})}


__all__ = ["fit_supernet", "load_supernet"]
