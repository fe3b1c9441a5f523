"""Training: the proxy that scores a candidate, full training with recipes, checkpoints.

Split by concern, the way timm splits its training parts:
- `recipes`: training recipes as data and the one learning-rate schedule function;
- `engine`: model + optimiser + schedule + EMA on a device (`build_engine`), epochs, evaluation;
- `proxy`: `train_proxy`, the short run a search calls for every candidate;
- `fit`: full training with checkpoints, exact resume, progress and metrics;
- `checkpoint`: reading and writing checkpoints (as data, never as code);
- `evaluate`: a saved model's top-1 on its test split.
"""

from mnas.train.checkpoint import checkpoint_arch, checkpoint_path, load_checkpoint, read_checkpoint, save_checkpoint
from mnas.train.engine import (
    Engine,
    EpochStats,
    SpeedOptions,
    build_engine,
    evaluate_model,
    resolve_device,
    stable_init_,
    train_steps_per_epoch,
)
from mnas.train.evaluate import evaluate_checkpoint
from mnas.train.fit import FitConfig, TrainingInterrupted, fit
from mnas.train.proxy import TrainResult, train_proxy
from mnas.train.recipes import RECIPES, Recipe, get_recipe, lr_schedule

__all__ = [
    "RECIPES",
    "Engine",
    "EpochStats",
    "FitConfig",
    "Recipe",
    "SpeedOptions",
    "TrainResult",
    "TrainingInterrupted",
    "build_engine",
    "checkpoint_arch",
    "checkpoint_path",
    "evaluate_checkpoint",
    "evaluate_model",
    "fit",
    "get_recipe",
    "load_checkpoint",
    "lr_schedule",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "stable_init_",
    "train_proxy",
    "train_steps_per_epoch",
]
