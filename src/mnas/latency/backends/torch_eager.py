"""Eager PyTorch: set_num_threads, optional channels_last, CUDA event timing on a GPU.
torch is this backend's runtime, so this module imports it; the registry imports a backend module
only when that backend is asked for.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.latency.backends.base import Backend, Runner, dist_version, timed_parts
from mnas.latency.tables.units import Unit, build_unit, unit_from_dict, unit_input_shape, unit_to_dict
from mnas.latency.target import Target
from mnas.model import build_model
from mnas.safe_load import load_tensors


class TorchBackend(Backend):
    name = "torch"
    suffix = ".pt"
    default_pack_size = 64
    tables = True

    def version(self, target: Target) -> str:
        v = dist_version("torch")
        if target.device == "cuda":
            v += f" cuda {torch.version.cuda}"
        return v

    def check(self, target: Target) -> str | None:
        return None  # cpu or cuda, either layout

    def machine(self, target: Target) -> str:
        if target.device == "cuda":
            return f"cuda:{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
        return super().machine(target)

    def export(self, module: nn.Module, path: Path, target: Target) -> Path:
        """Never a pickled module (loading one could run any code): an mnas network as its
        architecture and weights; any other module as a traced TorchScript program inside the
        record (TorchScript holds no Python objects). `torch.export` is no alternative: its loader
        falls back to full unpickling."""
        path.parent.mkdir(parents=True, exist_ok=True)
        module = module.eval()
        arch = getattr(module, "arch", None)
        if isinstance(arch, Architecture):
            record = {"format": "mnas-arch", "arch": arch.to_json(),
                      "num_classes": int(module.classifier.out_features),  # type: ignore[union-attr, arg-type]  # an mnas network
                      "state": module.state_dict()}
        else:
            x = torch.randn(target.batch, 3, target.resolution, target.resolution)
            buffer = io.BytesIO()
            with torch.no_grad():
                torch.jit.save(torch.jit.trace(module, x), buffer)
            record = {"format": "torchscript", "program": buffer.getvalue()}
        torch.save(record, path)
        return path

    def load(self, path: Path, target: Target) -> Runner:
        torch.set_num_threads(target.threads)
        model = load_module(path)
        x = torch.randn(target.batch, 3, target.resolution, target.resolution)
        if target.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if target.device == "cuda":
            if not torch.cuda.is_available():
                raise UserError("device cuda asked for but no GPU is visible; use --device cpu")
            model, x = model.cuda(), x.cuda()

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def timed() -> float:
                with torch.inference_mode():
                    start.record()
                    model(x)
                    end.record()
                end.synchronize()
                return start.elapsed_time(end)

            return Runner(timed, device_timer=timed)

        def run() -> None:
            with torch.inference_mode():
                model(x)

        return Runner(run)

    def export_pack(self, units: Sequence[Unit], path: Path, target: Target) -> Path:
        """The units as data; the worker rebuilds them (no pickled modules)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"units": [unit_to_dict(u) for u in units]}, path)
        return path

    def load_pack(self, path: Path, target: Target, count: int) -> Runner:
        torch.set_num_threads(target.threads)
        saved = load_tensors(path, f"latency pack {path}")
        runners = []
        for d in saved["units"][:count]:
            unit = unit_from_dict(d)
            runners.append(_module_runner(build_unit(unit).eval(), torch.randn(*unit_input_shape(unit))))
        return timed_parts(runners)


def _module_runner(module: Any, x: Any) -> Runner:
    def run() -> None:
        with torch.inference_mode():
            module(x)

    return Runner(run)


def load_module(path: Path) -> Any:
    """The module `TorchBackend.export` wrote, read with `weights_only=True`."""
    record = load_tensors(path, f"torch model file {path}")
    kind = record.get("format") if isinstance(record, dict) else None
    if kind == "mnas-arch":
        model = build_model(Architecture.from_json(record["arch"]), num_classes=record["num_classes"], dropout=0.0)
        model.load_state_dict(record["state"])
        return model.eval()
    if kind == "torchscript":
        return torch.jit.load(io.BytesIO(record["program"]), map_location="cpu").eval()
    raise UserError(f"{path} is not a model file written by the torch latency backend")


BACKEND = TorchBackend()
