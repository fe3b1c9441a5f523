"""The supernet file: weights plus everything that says what they are (space, resolution, classes).

One torch file holding plain data only: {"mnas_supernet": 1, "config": Supernet.config(),
"state_dict": ..., "meta": {...}} written atomically, read with `mnas.safe_load.load_tensors`
(a file from disk never runs code). Loading checks the stored space (and, when given, resolution
and class count) against what the caller expects, so a supernet of another space is refused with
one line instead of scoring nonsense.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mnas.errors import UserError
from mnas.paths import write_via
from mnas.safe_load import load_tensors
from mnas.space import SearchSpace
from mnas.supernet.network import Supernet

SUPERNET_FILE = "supernet.pt"
FORMAT_VERSION = 1


def supernet_path(path: str | Path) -> Path:
    """A supernet file, or the folder that holds `supernet.pt` (a folder or a name without suffix)."""
    p = Path(path).expanduser()
    return p / SUPERNET_FILE if (p.is_dir() or not p.suffix) else p


def save_supernet(supernet: Supernet, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the supernet (atomically: a crash leaves the previous file intact)."""
    p = supernet_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in supernet.state_dict().items()}
    saved = {"mnas_supernet": FORMAT_VERSION, "config": supernet.config(), "state_dict": state, "meta": dict(meta or {})}
    return write_via(p, lambda tmp: torch.save(saved, tmp))


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for key in sorted(set(a) | set(b)):
        if key != "name" and a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} vs {b.get(key)!r}"
    return ""


def load_supernet(path: str | Path, *, space: SearchSpace | None = None, resolution: int | None = None,
                  num_classes: int | None = None, device: torch.device | str = "cpu") -> tuple[Supernet, dict[str, Any]]:
    """(supernet in eval mode, meta) from a file or its folder; every mismatch is one UserError line."""
    p = supernet_path(path)
    if not p.is_file():
        raise UserError(f"supernet {p} not found; pass the {SUPERNET_FILE} written by supernet training or its folder")
    raw = load_tensors(p, f"supernet {p}")
    if not isinstance(raw, dict) or raw.get("mnas_supernet") != FORMAT_VERSION or not {"config", "state_dict"} <= set(raw):
        raise UserError(f"{p} is not an mnas supernet file (expected keys mnas_supernet={FORMAT_VERSION}, config, state_dict)")
    cfg = raw["config"]
    try:
        stored_space = SearchSpace.from_dict(cfg["space"])
        if space is not None:
            diff = _first_difference(space.to_dict(), stored_space.to_dict())
            if diff:
                raise UserError(f"supernet {p} was trained for space {stored_space.name!r}, not {space.name!r} "
                                f"(they differ in {diff}); train a supernet for this space")
        if resolution is not None and int(cfg["resolution"]) != resolution:
            raise UserError(f"supernet {p} was trained at {cfg['resolution']} px, not {resolution} px")
        if num_classes is not None and int(cfg["num_classes"]) != num_classes:
            raise UserError(f"supernet {p} has {cfg['num_classes']} classes, the data has {num_classes}")
        with torch.random.fork_rng(devices=[]):  # init draws numbers the stored weights replace
            net = Supernet.from_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{p} has a damaged supernet description ({type(exc).__name__}: {exc})") from None
    try:
        net.load_state_dict(raw["state_dict"])
    except (RuntimeError, TypeError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise UserError(f"{p}: the stored weights do not fit space {stored_space.name!r} (damaged file?): {first}") from None
    meta = raw.get("meta") or {}
    meta = {**meta, "path": str(p)}
    return net.to(device).eval(), meta
