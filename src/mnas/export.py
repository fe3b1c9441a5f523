"""Export a model to the files deployment runtimes load: ONNX, LiteRT (.tflite) and TorchScript.

Latency is measured on exactly these files, so the number we report is the number the deployed
file gives; training's `mnas export` writes the same files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from mnas.errors import UserError
from mnas.paths import write_bytes, write_via


def _example(resolution: int, batch: int = 1) -> torch.Tensor:
    if resolution < 1 or batch < 1:
        raise UserError(f"resolution and batch must be positive (got {resolution}, {batch}); pass e.g. --resolution 224")
    return torch.randn(batch, 3, resolution, resolution)


@contextlib.contextmanager
def quiet_converters() -> Iterator[None]:
    """Converters print pages of warnings and progress (some from C++, straight to the file
    descriptors); keep the user's terminal readable. Errors still propagate as exceptions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = logging.root.manager.disable
        logging.disable(logging.WARNING)
        saved = []
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            os.close(devnull)
        except OSError:  # no real file descriptors (embedded); fall back to Python-level only
            pass
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            logging.disable(old)


def _prepare(path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


# Each writer serialises in memory (or into a temp file beside the output) and renames the result
# over the output only when complete (`mnas.paths`): a failed or interrupted export, or a full
# disk, never leaves a broken file where a good one was, and a planted symbolic link is refused,
# never written through. Checking an output before the work (exists, --force, a run's own files)
# is the caller's: `mnas.paths.output_file`.
def to_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, batch: int = 1, opset: int = 17) -> Path:
    """TorchScript-based ONNX export (dynamo=False): fast (~3 s) and gives stable node names."""
    out = _prepare(path)
    x = _example(resolution, batch)
    model = model.eval()
    buffer = io.BytesIO()
    with quiet_converters(), torch.no_grad():
        torch.onnx.export(
            model, (x,), buffer, opset_version=opset, dynamo=False,  # type: ignore[arg-type]  # a file object works
            input_names=["input"], output_names=["output"], do_constant_folding=True,
        )
    return write_bytes(out, buffer.getvalue())


def to_tflite(model: nn.Module, path: str | os.PathLike, resolution: int, batch: int = 1) -> Path:
    """Convert with litert-torch; the file runs unchanged in LiteRT on a phone (XNNPACK)."""
    try:
        import litert_torch
    except ImportError as exc:  # optional extra
        raise UserError("litert-torch is not installed; install it with `pip install 'mnas[litert]'`") from exc
    out = _prepare(path)
    x = _example(resolution, batch)
    with quiet_converters(), torch.no_grad():
        converted = litert_torch.convert(model.eval(), (x,))
        return write_via(out, lambda tmp: converted.export(str(tmp)))


def to_torchscript(model: nn.Module, path: str | os.PathLike, resolution: int) -> Path:
    """Traced TorchScript: loadable from C++ / mobile without the Python class definitions."""
    out = _prepare(path)
    x = _example(resolution)
    buffer = io.BytesIO()
    with quiet_converters(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), x)
        torch.jit.save(traced, buffer)
    return write_bytes(out, buffer.getvalue())
