"""Every backend that runs here measures a real model through the protocol: LiteRT (the default),
ONNX Runtime and eager PyTorch (channels_last too). CUDA timing needs a GPU. Absolute timing here
(reference=None) keeps these fast; the reference interleaving is the same code for every local
backend (tests/test_latency_protocol.py, tests/test_latency_seam.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnas.errors import UserError
from mnas.latency.backends.base import ModelFile, get_backend
from mnas.latency.backends.registry import backend_names
from mnas.latency.measure.cache import LatencyCache
from mnas.latency.measure.measuring import measure
from mnas.latency.measure.protocol import Protocol
from mnas.latency.target import Target
from mnas.space import SearchSpace


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


def _check(r, target: Target, processes: int) -> None:
    # more processes only while the fastest `processes` disagree (the protocol's consensus rule)
    assert r.target == target and processes <= r.processes <= Protocol().max_processes
    assert r.used_processes == processes and len(r.per_process_ms) == r.processes
    assert 0 < r.p10_ms <= r.median_ms <= r.p90_ms < 1000
    assert r.runs >= 60 * r.processes and 0 <= r.preempted_fraction <= 1 and r.cv >= 0


@pytest.mark.slow
def test_litert_default_backend_on_an_architecture(tmp_path) -> None:
    """The default target is LiteRT; an Architecture is built, converted and timed."""
    arch = SearchSpace.cifar().sample(1)
    target = Target(resolution=32, num_classes=10)
    assert target.backend == "litert"
    r = measure(arch, target, processes=1, cache=LatencyCache(tmp_path / "c.sqlite"), reference=None)
    _check(r, target, 1)
    assert "ai-edge-litert" in target.runtime_version


@pytest.mark.slow
def test_onnxruntime_backend() -> None:
    target = Target(backend="onnxruntime", resolution=32, num_classes=10)
    _check(measure(_tiny(), target, processes=2, cache=None, reference=None), target, 2)


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_backend(channels_last: bool) -> None:
    target = Target(backend="torch", resolution=32, num_classes=10, channels_last=channels_last)
    _check(measure(_tiny(), target, processes=1, cache=None, reference=None), target, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for CUDA event timing")
def test_torch_cuda_backend() -> None:
    target = Target(backend="torch", device="cuda", resolution=32, num_classes=10)
    _check(measure(_tiny(), target, processes=1, cache=None, reference=None), target, 1)


def test_every_backend_reports_a_version() -> None:
    for name in backend_names():
        v = get_backend(name).describe()
        assert v and "missing" not in v


def test_worker_failure_is_one_clear_line(tmp_path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    target = Target(backend="onnxruntime", resolution=32)
    with pytest.raises(UserError) as exc:
        get_backend("onnxruntime").measure_files([ModelFile(bad)], None, target, Protocol(), [])
    assert "onnxruntime worker failed on broken.onnx" in str(exc.value) and "\n" not in str(exc.value)
