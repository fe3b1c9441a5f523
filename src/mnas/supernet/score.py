"""Scoring candidates with inherited weights: BN re-estimation, then held-out accuracy.

Shared BN statistics belong to no single path (they average every path trained), so each candidate
first gets its own: running statistics are reset and re-estimated as the exact average over K
training batches (momentum=None), as Once-for-All and BigNAS do. Then the network is scored on the
held-out `data.val` split (never the test set). The data are loaded once per scorer and reused for
every candidate; after re-estimation BN is folded into the convolutions (inference arithmetic,
identical up to float rounding).

Two backends for the scoring pass (BN re-estimation always runs in torch): "torch" (eager,
`inference_mode`, channels_last on CPU) and "onnxruntime" (the folded network exported in memory
with a dynamic batch and run by ONNX Runtime on the CPU: the export costs about a second, the pass
is several times faster than eager torch on a small CPU; see docs/benchmarks/supernet.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mnas.architecture import Architecture
from mnas.data import BatchLoader, DatasetSplits
from mnas.errors import UserError
from mnas.export import quiet_converters
from mnas.model import ConvBnAct
from mnas.run_options import DEFAULT_BN_BATCHES, DEFAULT_SCORE_IMAGES
from mnas.supernet import stopping
from mnas.supernet.extract import extract
from mnas.supernet.network import Supernet
from mnas.tempdirs import private_tempdir


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor], *args: object) -> nn.Module:
    """Reset every BatchNorm's running statistics and set them to the exact average of the batch
    statistics over `batches` (BN in training mode, everything else in eval mode, no gradients).

    Extra positional `args` are passed to `model` after each batch (e.g. the path of a supernet).
    Returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    model.eval()
    seen = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for x in batches:
            stopping.check()
            model(x, *args)
            seen += 1
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
            bn.eval()
    if seen == 0:
        raise UserError("BN re-estimation got no batches; use at least one (bn_batches >= 1)")
    return model


@torch.no_grad()
def fold_bn_(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BN into the conv before it (conv gets a bias, BN becomes Identity)."""
    for module in model.modules():
        if isinstance(module, ConvBnAct) and isinstance(module[1], nn.BatchNorm2d):
            conv, bn = module[0], module[1]
            assert isinstance(conv, nn.Conv2d)
            module[0] = fuse_conv_bn_eval(conv.eval(), bn.eval())
            module[1] = nn.Identity()
    return model


@dataclass
class ScoringData:
    """What every candidate is scored with, loaded once: BN batches (training images, no
    augmentation) and held-out validation batches."""

    bn_batches: list[torch.Tensor]
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    device: torch.device
    channels_last: bool
    _arrays: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def images(self) -> int:
        return sum(int(y.shape[0]) for _, y in self.val_batches)

    def arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The validation batches as contiguous NCHW float32 / int64 arrays (for ONNX Runtime), cached."""
        if not self._arrays:
            self._arrays = [(np.ascontiguousarray(x.detach().cpu().numpy()), y.cpu().numpy()) for x, y in self.val_batches]
        return self._arrays


def scoring_data(data: DatasetSplits, *, bn_batches: int = DEFAULT_BN_BATCHES, bn_batch_size: int = 128,
                 images: int = DEFAULT_SCORE_IMAGES, batch_size: int = 500, seed: int = 0, device: torch.device | str = "cpu",
                 channels_last: bool | None = None) -> ScoringData:
    """Load the BN batches (a seeded shuffle of `data.train`) and the first `images` of `data.val`."""
    if bn_batches < 1 or bn_batch_size < 2:
        raise UserError(f"BN re-estimation needs bn_batches >= 1 and bn_batch_size >= 2 (got {bn_batches}, {bn_batch_size})")
    if images < 1 or batch_size < 1:
        raise UserError(f"images and batch_size must be >= 1 (got {images}, {batch_size})")
    dev = torch.device(device)
    cl = dev.type == "cpu" if channels_last is None else channels_last
    bn_loader = BatchLoader(data, data.train, bn_batch_size, train=True, device=dev, seed=seed, pad=0, flip=False,
                            channels_last=cl)
    if bn_loader.num_batches < bn_batches:
        raise UserError(f"{bn_batches} BN batches of {bn_batch_size} need {bn_batches * bn_batch_size} training images; "
                        f"the training split has {len(data.train)}")
    bn = []
    for x, _ in bn_loader:
        stopping.check()
        bn.append(x)
        if len(bn) == bn_batches:
            break
    val: list[tuple[torch.Tensor, torch.Tensor]] = []
    left = min(images, len(data.val))
    for x, y in BatchLoader(data, data.val, batch_size, train=False, device=dev, channels_last=cl):
        if left <= 0:
            break
        stopping.check()
        val.append((x[:left], y[:left]))
        left -= int(y.shape[0])
    return ScoringData(bn, val, dev, cl)


@torch.inference_mode()
def accuracy(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of an eval-mode model over prepared batches (one host sync at the end)."""
    correct = torch.zeros((), dtype=torch.int64, device=batches[0][0].device)
    seen = 0
    for x, y in batches:
        stopping.check()
        correct += (model(x).argmax(1) == y).sum()
        seen += int(y.shape[0])
    return int(correct) / seen


SCORING_BACKENDS = ("torch", "onnxruntime")


def onnx_session(model: nn.Module, resolution: int, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of `model` (exported in memory, dynamic batch)."""
    import onnxruntime as ort  # heavy; only the onnxruntime backend needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    with private_tempdir("score") as tmp:
        path = Path(tmp) / "candidate.onnx"
        with quiet_converters(), torch.no_grad():
            torch.onnx.export(model.cpu().eval(), (torch.zeros(1, 3, resolution, resolution),), str(path),
                              opset_version=17, dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, do_constant_folding=True)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_accuracy(session: Any, arrays: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    correct = seen = 0
    for x, y in arrays:
        stopping.check()
        (logits,) = session.run(None, {"input": x})
        correct += int((logits.argmax(1) == y).sum())
        seen += int(y.shape[0])
    return correct / seen


def score_one(supernet: Supernet, arch: Architecture, sd: ScoringData, *, fold_bn: bool = True,
              backend: str = "torch") -> float:
    """Held-out top-1 of one candidate with inherited weights and re-estimated BN statistics."""
    if backend not in SCORING_BACKENDS:
        raise UserError(f"unknown scoring backend {backend!r}; choose one of {', '.join(SCORING_BACKENDS)}")
    model = extract(supernet, arch)
    if sd.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if stopping.active():  # a signal stops the scoring within a layer
        for module in model.modules():
            if next(module.children(), None) is None:
                module.register_forward_pre_hook(lambda *_: stopping.check())
    reestimate_bn(model, sd.bn_batches)
    if fold_bn:
        fold_bn_(model)
    if backend == "onnxruntime":
        return onnx_accuracy(onnx_session(model, supernet.resolution), sd.arrays())
    return accuracy(model, sd.val_batches)


def score(supernet: Supernet, archs: Sequence[Architecture], data: DatasetSplits | ScoringData, *,
          bn_batches: int = DEFAULT_BN_BATCHES, bn_batch_size: int = 128, images: int = DEFAULT_SCORE_IMAGES,
          batch_size: int = 500, seed: int = 0,
          fold_bn: bool = True, backend: str = "torch",
          on_result: Callable[[int, Architecture, float, float], None] | None = None) -> list[float]:
    """Held-out top-1 (fractions) of many candidates, loading the data once.

    `data`: a dataset (BN batches and validation images are then prepared here, on the supernet's
    device) or a prepared `ScoringData` to share between calls. `on_result(i, arch, acc, seconds)`
    is called after each candidate. Every architecture is checked against the space first.
    backend: "torch" or "onnxruntime" (CPU only) for the scoring pass."""
    if backend not in SCORING_BACKENDS:
        raise UserError(f"unknown scoring backend {backend!r}; choose one of {', '.join(SCORING_BACKENDS)}")
    for arch in archs:
        supernet.resolve(arch)
    device = next(supernet.parameters()).device
    if backend == "onnxruntime" and device.type != "cpu":
        raise UserError("the onnxruntime scoring backend runs on the CPU; move the supernet to the CPU or use backend torch")
    sd = data if isinstance(data, ScoringData) else scoring_data(
        data, bn_batches=bn_batches, bn_batch_size=bn_batch_size, images=images, batch_size=batch_size, seed=seed,
        device=device)
    out = []
    for i, arch in enumerate(archs):
        stopping.check()
        t0 = time.perf_counter()
        acc = score_one(supernet, arch, sd, fold_bn=fold_bn, backend=backend)
        out.append(acc)
        if on_result is not None:
            on_result(i, arch, acc, time.perf_counter() - t0)
    return out
