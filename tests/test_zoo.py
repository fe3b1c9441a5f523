"""Exact numbers from the reference sheet, and logits parity with timm and torchvision."""

import pytest
import timm
import torch
import torchvision

from mnas import zoo
from mnas.errors import UserError
from mnas.model import build_model
from mnas.profile import profile

EXACT = [  # (name, width, params, MACs at 224, 1000 classes)
    ("mnasnet_a1", 1.0, 3_887_038, 311_579_072),
    ("mnasnet_a1", 0.75, 2_912_278, 223_448_480),
    ("mnasnet_a1", 0.5, 2_082_006, 103_162_992),
    ("mnasnet_a1", 1.4, 6_105_992, 586_317_952),
    ("mnasnet_a1", 0.35, 1_747_018, 61_681_920),
    ("mnasnet_b1", 1.0, 4_383_312, 314_415_872),
    ("mnasnet_b1", 0.5, 2_218_512, 104_455_968),
    ("mnasnet_b1", 0.75, 3_170_208, 215_493_104),
    ("mnasnet_b1", 1.3, 6_282_256, 526_362_432),
    ("mnasnet_small", 1.0, 2_030_264, 68_339_184),
    ("mnasnet_d1", 1.0, 3_638_404, 967_705_824),
    ("mnasnet_d1_320", 1.0, 6_932_240, 1_807_732_032),
    ("mobilenet_v2", 1.0, 3_504_872, 300_774_272),
]


@pytest.mark.parametrize("name,width,params,macs", EXACT, ids=[f"{e[0]}x{e[1]}" for e in EXACT])
def test_exact_params_and_macs(name, width, params, macs):
    p = profile(zoo.get(name, width), resolution=224)
    assert (p.params, p.macs) == (params, macs)


@pytest.mark.parametrize("res,macs", [(96, 58_480_832), (128, 102_773_024), (160, 159_720_128),
                                      (192, 229_322_144), (224, 311_579_072)])
def test_a1_macs_at_other_resolutions(res, macs):
    assert profile(zoo.get("mnasnet_a1"), resolution=res).macs == macs


def test_d1_320_macs_at_320():
    assert profile(zoo.get("mnasnet_d1_320"), resolution=320).macs == 3_687_916_800


@pytest.mark.parametrize("width,stem,outs", [
    (0.35, 16, [8, 8, 16, 32, 40, 56, 112]), (0.75, 24, [16, 24, 32, 64, 88, 120, 240]),
    (1.3, 40, [24, 32, 56, 104, 144, 208, 416]), (1.4, 48, [24, 32, 56, 112, 160, 224, 448])])
def test_a1_widths_per_multiplier(width, stem, outs):
    a = zoo.get("mnasnet_a1", width)
    assert a.stem_filters == stem and [b.filters for b in a.blocks] == outs and a.head_filters == 1280


@pytest.mark.parametrize("name", zoo.list())
@pytest.mark.parametrize("width", [0.35, 1.4])
def test_every_model_at_every_width(name, width):
    p = profile(zoo.get(name, width), resolution=96)
    assert p.params > 1_000_000 and p.macs > 0


def test_table6_variants_keep_a1_layers_and_widths():
    a1 = zoo.get("mnasnet_a1")
    for e in (3, 6):
        for k in (3, 5):
            v = zoo.get(f"a1_mbconv{e}_k{k}")
            assert [(b.filters, b.layers, b.stride) for b in v.blocks] == [(b.filters, b.layers, b.stride) for b in a1.blocks]
            assert {(b.op, b.expand, b.kernel) for b in v.blocks} == {("mbconv", e, k)}


def test_unknown_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown zoo model"):
        zoo.get("mnasnet_z9")


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


PEERS = [
    ("timm", "semnasnet_100", "mnasnet_a1", 1.0),
    ("timm", "mnasnet_100", "mnasnet_b1", 1.0),
    ("timm", "mnasnet_small", "mnasnet_small", 1.0),
    ("timm", "mobilenetv2_100", "mobilenet_v2", 1.0),
    ("torchvision", "mnasnet1_0", "mnasnet_b1", 1.0),
    ("torchvision", "mnasnet0_5", "mnasnet_b1", 0.5),
]


@pytest.mark.parametrize("lib,peer_name,ours_name,width", PEERS, ids=[p[1] for p in PEERS])
def test_logits_parity_with_peers(lib, peer_name, ours_name, width):
    torch.manual_seed(0)
    peer = timm.create_model(peer_name) if lib == "timm" else getattr(torchvision.models, peer_name)()
    _randomise_bn(peer)
    ours = build_model(zoo.get(ours_name, width), bn_eps=1e-5)  # peers use PyTorch's BN eps
    theirs, mine = peer.state_dict(), ours.state_dict()
    assert [tuple(v.shape) for v in theirs.values()] == [tuple(v.shape) for v in mine.values()]
    ours.load_state_dict(dict(zip(mine.keys(), theirs.values(), strict=True)))
    peer.eval(), ours.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (peer(x) - ours(x)).abs().max().item()
    assert diff < 1e-4
