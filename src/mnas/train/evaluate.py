"""Scoring a saved model on the test (or held-out val) split of the data it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnas.data import check_fits, load_dataset
from mnas.errors import UserError
from mnas.run_options import DEFAULT_DATASET, DEFAULT_DEVICE, DEFAULT_SEED, DEFAULT_VAL_SIZE
from mnas.train.checkpoint import load_checkpoint
from mnas.train.engine import check_batch_size, evaluate_model, resolve_device


def evaluate_checkpoint(
    path: str | Path, data_root: str | Path | None = None, split: str = "test", device: str = DEFAULT_DEVICE,
    batch_size: int | None = None, data_name: str | None = None,
) -> dict[str, Any]:
    """Top-1 of a saved model on the test (or val) split of the dataset it was trained on."""
    if split not in ("test", "val"):
        raise UserError(f"split {split!r} must be test or val")
    check_batch_size(batch_size)
    arch, model, meta = load_checkpoint(path)
    cfg = meta.get("config") or {}
    data = load_dataset(
        data_name or cfg.get("data", DEFAULT_DATASET), data_root=data_root or cfg.get("data_root"),
        val_size=cfg.get("val_size", DEFAULT_VAL_SIZE), train_subset=None, seed=cfg.get("seed", DEFAULT_SEED),
        resolution=meta.get("resolution"),
    )
    check_fits(data, int(meta["num_classes"]), int(meta.get("resolution", data.resolution)), f"the model {meta['path']}")
    dev = resolve_device(device)
    model.to(dev)
    acc, loss = evaluate_model(model, data, getattr(data, split), dev, batch_size=batch_size)
    return {
        "checkpoint": meta["path"], "arch": arch.name or arch.id, "arch_id": arch.id, "dataset": data.name,
        "split": split, "images": len(getattr(data, split)), "top1": acc, "loss": loss,
        "epoch": meta.get("epoch"), "step": meta.get("step"), "ema": meta["used_ema"],
    }
