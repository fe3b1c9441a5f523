"""A latency target: everything that changes a latency number, with a stable fingerprint.

The fingerprint (backend, device, threads, precision, input shape, runtime version, machine) is
the cache key together with the architecture id, so a new runtime or another machine never reuses
an old number.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from mnas.errors import UserError

BACKEND_NAMES = ("litert", "onnxruntime", "torch", "android")
PRECISIONS = ("fp32",)
DEVICES = ("cpu", "cuda")


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
        if self.backend not in BACKEND_NAMES:
            raise UserError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
        if self.threads < 1:
            raise UserError(f"threads must be >= 1 (got {self.threads})")
        if self.resolution < 8 or self.batch < 1 or self.num_classes < 1:
            raise UserError("resolution must be >= 8 and batch, num_classes >= 1")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision {self.precision!r} is not supported; use {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; use cpu or cuda")
        if self.device == "cuda" and self.backend != "torch":
            raise UserError("device cuda is only measured with --backend torch")
        if self.channels_last and self.backend != "torch":
            raise UserError("channels_last applies to --backend torch only")
        if self.backend == "android" and not self.benchmark_binary:
            raise UserError("the android backend needs a TFLite benchmark_model binary built for the phone; "
                            "pass --benchmark-binary PATH (see the TFLite benchmark tool docs)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Target":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> "Target":
        return replace(self, **changes)

    @property
    def runtime_version(self) -> str:
        from mnas.latency.backends import get_backend

        return get_backend(self.backend).version(self)

    @property
    def machine(self) -> str:
        """The hardware the number belongs to: the phone for android, this CPU / GPU otherwise."""
        if self.backend == "android":
            return f"android:{self.serial or 'default'}"
        if self.device == "cuda":
            return f"cuda:{_gpu_name()}"
        return f"{platform.machine()}:{_cpu_name()}"

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


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


@lru_cache(maxsize=1)
def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"benchmark binary {path} does not exist; pass the path of benchmark_model")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
