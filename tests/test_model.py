"""The builder, swept over the whole zoo registry (a new model is tested for free)."""

import random

import pytest
import torch

from mnas import zoo
from mnas.model import build_model
from mnas.profile import profile
from mnas.space import SearchSpace


@pytest.mark.parametrize("name", zoo.list())
def test_every_zoo_model_builds_and_runs(name):
    res = 64
    model = build_model(zoo.get(name), num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, res, res))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mnasnet_a1", "mobilenet_v2"])
@pytest.mark.parametrize("res", [32, 97, 224, 320])
def test_any_resolution_from_32_to_320(name, res):
    model = build_model(zoo.get(name), num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, res, res)).shape == (1, 5)


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.3, 1.4])
def test_width_multiplier_keeps_head_at_1280(width):
    model = build_model(zoo.get("mnasnet_a1"), width_mult=width)
    assert model.head[0].out_channels == 1280
    assert model.classifier.in_features == 1280


def test_tf_batchnorm_and_init_by_default():
    model = build_model(zoo.get("mnasnet_a1"))
    bn = model.stem[1]
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)
    dw = model.blocks[1][0].body.conv_dw[0]  # depthwise 3x3: fan_out = k*k
    assert dw.weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.15)
    assert model.classifier.weight.abs().max().item() <= 1 / 1000 ** 0.5


def test_se_squeezes_the_block_input_width():
    model = build_model(zoo.get("mnasnet_a1"))
    se_first = model.blocks[2][0].body.se  # stage 3 first layer: input 24 -> 6
    se_next = model.blocks[2][1].body.se   # following layers: input 40 -> 10
    assert se_first.conv_reduce.out_channels == 6 and se_next.conv_reduce.out_channels == 10


def test_activation_is_part_of_the_architecture():
    assert isinstance(build_model(zoo.get("mobilenet_v2")).stem[2], torch.nn.ReLU6)
    assert isinstance(build_model(zoo.get("mnasnet_a1")).stem[2], torch.nn.ReLU)


def test_skip_semantics():
    sp = SearchSpace.default()
    tokens = [0] * 42
    for i in range(7):  # ds, k3, no SE, skip=?, 1.25x width, +1 layer
        tokens[6 * i:6 * i + 6] = [1, 0, 0, 0, 2, 2]
    pool = build_model(sp.decode(tokens))
    assert all(layer.has_skip for block in pool.blocks for layer in block)
    assert pool.blocks[1][0].shortcut is not None  # stride 2 and 24 -> 32: pool + 1x1
    for i in range(7):
        tokens[6 * i + 3] = 1  # identity
    ident = build_model(sp.decode(tokens))
    assert not ident.blocks[1][0].has_skip and ident.blocks[1][1].has_skip
    for i in range(7):
        tokens[6 * i + 3] = 2  # none
    none = build_model(sp.decode(tokens))
    assert not any(layer.has_skip for block in none.blocks for layer in block)


@pytest.mark.slow
def test_sampled_architectures_build_and_export_free_of_mnas():
    sp = SearchSpace.cifar()
    rng = random.Random(0)
    for _ in range(5):
        model = build_model(sp.sample(rng), num_classes=10).eval()
        scripted = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
        assert "mnas" not in str(type(scripted))
        assert profile(model, 32).macs > 0
