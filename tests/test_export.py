"""Exported files compute what the PyTorch module computes (ONNX Runtime, LiteRT, TorchScript)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnas.model import build_model
from mnas.space import SearchSpace


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    model = build_model(SearchSpace.cifar().sample(3), num_classes=10, dropout=0.0).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x).numpy()
    return model, x, y


@pytest.mark.slow
def test_to_onnx_runs_in_onnxruntime(tmp_path, model_and_input) -> None:
    import onnxruntime as ort

    from mnas.export import to_onnx

    model, x, y = model_and_input
    path = to_onnx(model, tmp_path / "sub" / "m.onnx", resolution=32)
    assert path.is_file()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(out, y, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_to_tflite_runs_in_litert(tmp_path, model_and_input) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from mnas.export import to_tflite

    model, x, y = model_and_input
    path = to_tflite(model, tmp_path / "m.tflite", resolution=32)
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x.numpy())
    interp.invoke()
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, y, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_to_torchscript_loads_without_classes(tmp_path, model_and_input) -> None:
    from mnas.export import to_torchscript

    model, x, y = model_and_input
    path = to_torchscript(model, tmp_path / "m.pt", resolution=32)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), y, rtol=1e-4, atol=1e-5)


def test_bad_resolution_is_a_user_error(tmp_path, model_and_input) -> None:
    from mnas.errors import UserError
    from mnas.export import to_onnx

    with pytest.raises(UserError):
        to_onnx(model_and_input[0], tmp_path / "m.onnx", resolution=0)
