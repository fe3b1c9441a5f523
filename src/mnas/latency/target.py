"""A latency target: everything that changes a latency number, with a stable fingerprint.

The fingerprint (backend, device, threads, precision, input shape, runtime version, machine) is
the cache key together with the architecture id, so a new runtime or another machine never reuses
an old number. What a backend accepts (devices, layouts, the files it needs) is its own business:
`Backend.check`. A target reaches its backend through the registry (`backends.registry`), never
through the backend classes, which are typed against `Target` and so sit above it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mnas.architecture import check_resolution
from mnas.errors import UserError
from mnas.latency.backends.registry import backend_module, backend_names, load_backend

PRECISIONS = ("fp32",)
DEVICES = ("cpu", "cuda")
# Fields that decide which network runs and how; a lookup table is valid only for these.
#: Bounds on what a user sizes: a batch or class count past these is a typo, not a target (a
#: batch of 10^6 images would allocate without bound before the first measurement).
MAX_BATCH = 1024
MAX_CLASSES = 100_000
SHAPE_FIELDS = ("backend", "threads", "resolution", "batch", "num_classes", "precision", "device", "channels_last")


@dataclass(frozen=True)
class Target:
    """Where and how a network runs. `serial` / `benchmark_binary` are for the android backend."""

    backend: str = "litert"
    threads: int = 1
    resolution: int = 224
    batch: int = 1
    num_classes: int = 1000
    precision: str = "fp32"
    device: str = "cpu"
    channels_last: bool = False
    serial: str | None = None
    benchmark_binary: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in backend_names():
            raise UserError(f"unknown backend {self.backend!r}; choose one of {', '.join(backend_names())}")
        if self.threads < 1:
            raise UserError(f"threads must be >= 1 (got {self.threads})")
        check_resolution(self.resolution)
        if self.batch < 1 or self.num_classes < 1:
            raise UserError(f"batch and num_classes must be >= 1 (got batch {self.batch}, num_classes {self.num_classes})")
        if self.batch > MAX_BATCH or self.num_classes > MAX_CLASSES:
            raise UserError(f"batch must be <= {MAX_BATCH} and num_classes <= {MAX_CLASSES:,} (got batch {self.batch}, "
                            f"num_classes {self.num_classes})")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision {self.precision!r} is not supported; use {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; use cpu or cuda")
        why = _rules(self.backend).check(self)
        if why:
            raise UserError(why)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> Target:
        return replace(self, **changes)

    def differences(self, other: Target) -> list[str]:
        """`field: mine vs other's` for every field that decides what runs (not the machine)."""
        return [f"{k} {getattr(self, k)} vs {getattr(other, k)}" for k in SHAPE_FIELDS
                if getattr(self, k) != getattr(other, k)]

    @property
    def runtime_version(self) -> str:
        return _rules(self.backend).version(self)

    @property
    def machine(self) -> str:
        """The hardware the number belongs to (the backend says: this CPU, a GPU, a phone)."""
        return _rules(self.backend).machine(self)

    @property
    def fingerprint(self) -> str:
        """16 hex chars, stable across runs; changes with any field, the runtime or the machine."""
        d = self.to_dict()
        if d["benchmark_binary"]:
            d["benchmark_binary"] = _file_digest(d["benchmark_binary"])
        d["runtime"] = self.runtime_version
        d["machine"] = self.machine
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        extra = f" {self.device}" if self.device != "cpu" else ""
        extra += " channels_last" if self.channels_last else ""
        return f"{self.backend}{extra} {self.threads}t {self.resolution}px b{self.batch}"


@runtime_checkable
class BackendRules(Protocol):
    """What a target asks its backend (`mnas.latency.backends.base.Backend` answers): whether it
    can measure the target, the runtime's version and the machine the numbers belong to."""

    def check(self, target: Target) -> str | None: ...

    def version(self, target: Target) -> str: ...

    def machine(self, target: Target) -> str: ...


def _rules(backend: str) -> BackendRules:
    found = load_backend(backend)
    if not isinstance(found, BackendRules):
        raise TypeError(f"{backend_module(backend)}.BACKEND is not a mnas.latency.backends.base.Backend")
    return found


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"benchmark binary {path} does not exist; pass the path of benchmark_model")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
