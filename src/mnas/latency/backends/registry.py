"""Which runtimes latency can be measured on: backend name -> the module that defines it.

The one list of backends, with nothing above it: a module defines `BACKEND`, an instance of a
`mnas.latency.backends.base.Backend` subclass, and is imported on first use only, so a worker
process loads just the runtime it measures. `mnas.latency.backends.get_backend` returns the
checked object; a `Target` asks its backend here for what it needs (`load_backend`).
"""

from __future__ import annotations

import importlib

from mnas.errors import UserError

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


def backend_names() -> list[str]:
    return list(_MODULES)


def backend_module(name: str) -> str:
    """The module that defines backend `name`."""
    if name not in _MODULES:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(_MODULES)}")
    return _MODULES[name]


def load_backend(name: str) -> object:
    """The `BACKEND` object of `name`'s module, imported on first use (`get_backend` also checks
    that it is a `Backend`)."""
    return importlib.import_module(backend_module(name)).BACKEND
