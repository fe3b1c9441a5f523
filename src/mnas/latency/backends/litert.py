"""LiteRT (TFLite) with XNNPACK: the paper's runtime family; the same .tflite runs on a phone."""

from __future__ import annotations

from pathlib import Path

from mnas.latency.backends.base import Runner, dist_version


class LiteRTBackend:
    name = "litert"
    suffix = ".tflite"

    def version(self, target) -> str:
        return dist_version("ai-edge-litert")

    def unavailable(self) -> str | None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
            import litert_torch  # noqa: F401
        except ImportError:
            return "ai-edge-litert / litert-torch not installed; `pip install 'mnas[litert]'`"
        return None

    def export(self, module, path: Path, target) -> Path:
        from mnas.export import to_tflite

        return to_tflite(module, path, target.resolution, target.batch)

    def load(self, path: Path, target) -> Runner:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=target.threads)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        interp.set_tensor(detail["index"], np.random.rand(*detail["shape"]).astype(detail["dtype"]))
        return Runner(interp.invoke)


BACKEND = LiteRTBackend()
