"""Shared fixtures: real CIFAR-10 from ../shared/data, a private cache dir, one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests read real data from the shared folder unless the caller points elsewhere.
os.environ.setdefault("MNAS_DATA", str(SHARED_DATA))
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["MNAS_DATA"])
    if not (root / "cifar10_subset10k_uint8.npz").is_file() and not (root / "cifar10_uint8.npz").is_file():
        pytest.fail(f"CIFAR-10 npz files not found in {root}; set MNAS_DATA to the shared data folder")
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests away from the user's ~/.cache/mnas (latency cache and friends)."""
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mnas-cache"))
