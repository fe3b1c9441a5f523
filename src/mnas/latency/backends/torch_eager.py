"""Eager PyTorch: set_num_threads, optional channels_last, CUDA event timing on a GPU."""

from __future__ import annotations

from pathlib import Path

from mnas.latency.backends.base import Runner, dist_version


class TorchBackend:
    name = "torch"
    suffix = ".pt"

    def version(self, target) -> str:
        v = dist_version("torch")
        if target.device == "cuda":
            import torch

            v += f" cuda {torch.version.cuda}"
        return v

    def unavailable(self) -> str | None:
        return None

    def export(self, module, path: Path, target) -> Path:
        """The whole pickled module: loading it needs only its classes (torch.nn / mnas.model)."""
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(module.eval(), path)
        return path

    def load(self, path: Path, target) -> Runner:
        import torch

        from mnas.errors import UserError

        torch.set_num_threads(target.threads)
        model = torch.load(path, weights_only=False).eval()
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


BACKEND = TorchBackend()
