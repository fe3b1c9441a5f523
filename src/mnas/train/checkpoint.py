"""Training checkpoints: written atomically, read as data (`weights_only=True`), never as code.

A checkpoint holds the architecture, the class count and resolution it was trained for, the model,
EMA and optimiser states, where in the run it stopped (epoch, batch, step, RNG), the recipe and the
run's config. `mnas.zoo` reads the architecture out of one through here as well.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.model import build_model
from mnas.paths import replace_when_done
from mnas.safe_load import load_tensors

CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = frozenset({"model", "num_classes"})
KINDS = ("arch", "supernet")  # what a checkpoint trains: one network, or a supernet of a space


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` whole beside `path`, fsync, then rename over it (`mnas.paths.replace_when_done`):
    a crash, a signal or a full disk never leaves half a checkpoint, and the previous one is kept.
    Serialised in memory first: torch.save reports a failed write as an opaque RuntimeError, a plain
    file write as the OSError (ENOSPC, EFBIG) that becomes one line naming the path."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with replace_when_done(path, "wb") as f:
        f.write(buffer.getbuffer())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict (tensors and plain data only)."""
    ckpt = load_tensors(path, f"checkpoint {path}")
    if not isinstance(ckpt, dict) or not set(ckpt) >= REQUIRED_KEYS or not any(k in ckpt for k in KINDS):
        raise UserError(f"{path} is not an mnas training checkpoint (expected keys arch or supernet, model, num_classes)")
    return ckpt


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file given it or its run folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise UserError(f"checkpoint {p} not found; pass the checkpoint.pt written by `mnas train` or its folder")
    return p


def checkpoint_arch(path: str | Path) -> Architecture:
    """Only the architecture a checkpoint was trained with."""
    p = Path(path)
    return _arch_of(read_checkpoint(p), p)


def _arch_of(ckpt: dict[str, Any], p: Path) -> Architecture:
    if "arch" not in ckpt:
        raise UserError(f"{p} is a supernet training checkpoint, not one network's; pick an architecture from it "
                        "with `mnas supernet eval` or fine-tune one with `mnas train ARCH --init-from-supernet`")
    try:
        return Architecture.from_dict(ckpt["arch"])
    except (KeyError, TypeError):
        raise UserError(f"{p} is not an mnas checkpoint (no architecture in it); expected a file written by "
                        "`mnas train`") from None


def load_checkpoint(path: str | Path, use_ema: bool | None = None) -> tuple[Architecture, nn.Module, dict[str, Any]]:
    """(arch, model in eval mode, meta) from a checkpoint file or its folder.

    The model carries the EMA weights when the recipe evaluates with them (unless use_ema=False).
    meta holds everything but the state dicts (epoch, step, recipe, config, data, resolution...).
    """
    p = checkpoint_path(path)
    ckpt = read_checkpoint(p)
    arch = _arch_of(ckpt, p)
    recipe = ckpt.get("recipe") or {}
    model = build_model(arch, num_classes=int(ckpt["num_classes"]), dropout=recipe.get("dropout", 0.2),
                        bn_momentum=recipe.get("bn_momentum", 0.1), bn_eps=recipe.get("bn_eps", 1e-3))
    ema = ckpt.get("ema")
    pick_ema = ckpt.get("eval_ema", False) if use_ema is None else use_ema
    state = ema["state"] if (pick_ema and ema) else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"{p}: the weights do not fit its architecture ({first}); the file is damaged") from None
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer", "rng")}
    meta["path"] = str(p)
    meta["used_ema"] = bool(pick_ema and ema)
    return arch, model, meta
