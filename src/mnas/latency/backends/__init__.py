"""The runtimes latency is measured on, all behind one small interface (see `base.Backend`)."""

from __future__ import annotations

from mnas.errors import UserError
from mnas.latency.backends.base import Backend, Runner

_MODULES = {
    "litert": "mnas.latency.backends.litert",
    "onnxruntime": "mnas.latency.backends.ort",
    "torch": "mnas.latency.backends.torch_eager",
    "android": "mnas.latency.backends.android",
}


def get_backend(name: str) -> Backend:
    """The backend object for `name`; imports only that runtime (workers stay light)."""
    import importlib

    if name not in _MODULES:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).BACKEND


def backend_names() -> list[str]:
    return list(_MODULES)


__all__ = ["Backend", "Runner", "get_backend", "backend_names"]
