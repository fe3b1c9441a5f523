"""ONNX Runtime, CPU provider, ORT_ENABLE_ALL (lower levels run 2.4x slower here)."""

from __future__ import annotations

from pathlib import Path

from mnas.latency.backends.base import Runner, dist_version


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


class OrtBackend:
    name = "onnxruntime"
    suffix = ".onnx"

    def version(self, target) -> str:
        return dist_version("onnxruntime", "onnxruntime-gpu")

    def unavailable(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime not installed; `pip install onnxruntime`"
        return None

    def export(self, module, path: Path, target) -> Path:
        from mnas.export import to_onnx

        return to_onnx(module, path, target.resolution, target.batch)

    def load(self, path: Path, target) -> Runner:
        import numpy as np
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), session_options(target.threads),
                                    providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = {inp.name: np.random.rand(*inp.shape).astype(np.float32)}
        return Runner(lambda: sess.run(None, feed))


BACKEND = OrtBackend()
