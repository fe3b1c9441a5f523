"""Reading torch files without running code: a file from disk is data, never a program.

`torch.load(..., weights_only=True)` unpickles only tensors and plain containers; anything else in
the file (a crafted object whose unpickling runs a command) makes it refuse. Every mnas file that
holds tensors (training checkpoints, strategy states, latency models) is read through here, so a
refusal is one clear line.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from mnas.errors import UserError


def load_tensors(source: str | Path | bytes, what: str) -> Any:
    """`torch.load` with `weights_only=True` on a path or bytes; refusals and damage are a UserError."""
    stream: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _reason(str(exc))
        if "GLOBAL" in reason or "global" in reason:  # a name to import: the way a crafted file runs code
            raise UserError(f"refusing to load {what}: it holds Python objects other than tensors and plain "
                            f"data, and loading it could run code ({reason}); use a file written by mnas") from None
        raise UserError(f"{what} is not a readable torch file ({reason}); it may be truncated or damaged") from None
    except Exception as exc:  # a truncated or damaged file can raise almost anything while unpickling
        first = " ".join(str(exc).split())[:160]
        raise UserError(f"{what} is not a readable torch file ({type(exc).__name__}: {first}); "
                        "it may be truncated or damaged") from None


def _reason(message: str) -> str:
    """The specific part of torch's long weights-only refusal (what it met), on one short line."""
    text = " ".join(message.split())
    for marker in ("WeightsUnpickler error:", "trusted source."):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.split(" Check the documentation")[0].strip()[:160]
