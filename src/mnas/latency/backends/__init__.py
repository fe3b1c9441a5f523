"""The runtimes latency is measured on: one module each, one line each in this registry.

A module defines `BACKEND`, an instance of a `base.Backend` subclass. Modules are imported on
first use only, so a worker process loads just the runtime it measures.
"""

from __future__ import annotations

import importlib

from mnas.errors import UserError
from mnas.latency.backends.base import Backend, ModelFile, Runner

_MODULES = {
    "litert": "mnas.latency.backends.litert",
    "onnxruntime": "mnas.latency.backends.ort",
    "torch": "mnas.latency.backends.torch_eager",
    "android": "mnas.latency.backends.android",
}


def register_backend(name: str, module: str) -> None:
    """Add (or replace) a backend at run time: `module` defines `BACKEND` (tests, plug-ins).
    Measuring workers are told the module with every job, so they find it too."""
    _MODULES[name] = module


def unregister_backend(name: str) -> None:
    """Remove a backend added with `register_backend`."""
    _MODULES.pop(name, None)


def get_backend(name: str) -> Backend:
    """The backend object for `name`; imports only that runtime."""
    if name not in _MODULES:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(_MODULES)}")
    backend = importlib.import_module(_MODULES[name]).BACKEND
    if not isinstance(backend, Backend):
        raise TypeError(f"{_MODULES[name]}.BACKEND is not a mnas.latency.backends.base.Backend")
    return backend


def backend_names() -> list[str]:
    return list(_MODULES)


__all__ = ["Backend", "ModelFile", "Runner", "get_backend", "backend_names", "register_backend", "unregister_backend"]
