"""The architecture id (`Architecture.id`, scheme `ID_VERSION`): pinned for the zoo, kept by a new
defaulted field, shared by two encodings of one network."""

from __future__ import annotations

import hashlib
import json
from dataclasses import make_dataclass, replace

import pytest
import torch

from mnas import zoo
from mnas.architecture import ID_VERSION, Architecture, BlockSpec
from mnas.model import build_model
from mnas.space import SearchSpace

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.25, 1.4)
#: Every zoo model's id at each width (scheme 2). A change here is a change of ID_VERSION.
ZOO_IDS = {
    "mnasnet_a1": ("f0d6aaf3f720", "3121c448b4c4", "6b5a43b5dbca", "b3d9be9db710", "ef63062612ba", "ab036333300e"),
    "mnasnet_b1": ("e209d8c56b86", "d194b6944ef7", "4f68766ba28c", "a1734b109c8f", "02dd7c2f77d9", "3181133e7b95"),
    "mnasnet_small": ("603acff474d8", "b6e41f7e5037", "2b35c318a8d9", "2391488c659a", "3d6c764f185a", "367041a0bc6b"),
    "mnasnet_d1": ("fa84c939057b", "d7645f24a0d1", "dd14106a089c", "0f84bc4527ef", "83b8022b2b96", "1ce008600cb9"),
    "mnasnet_d1_320": ("5b42bcbc485a", "35f70d85a337", "44e50e9b0e4c", "7c6cdba36cfd", "20032a5fe33c", "8e1cf8685d3c"),
    "mobilenet_v2": ("0e4a03c98ac6", "48839b494684", "5f6eef0b894d", "f964d584bfb5", "04e0123f1d91", "46efcfac3baf"),
    "a1_mbconv3_k3": ("f3f8018ddb98", "e7d4c53bb54e", "394c6c3dbfdd", "0a839ce09ab8", "864bbe86a36a", "ae23c8061f9e"),
    "a1_mbconv3_k5": ("a91720269dd4", "4765e1e68e9c", "791163e5fb6d", "c7ee008bd00e", "e13e4c7b1a5b", "beb854736338"),
    "a1_mbconv6_k3": ("41059d5bdfa6", "4c9c3c510f6c", "e783b5a0daec", "e684aa391bea", "ff03e9c9f4df", "2753807a9105"),
    "a1_mbconv6_k5": ("7b73c3b9688f", "437f08a80269", "6b541b278441", "aad9ee549172", "31bd0b4d5713", "a0d72ecc64dc"),
}
#: The zoo models whose scheme-1 encoding was already canonical at every width: their ids are
#: the ids of scheme 1. The others wrote "none" on a one-layer block that changes shape (where
#: "identity" builds the same network), and scheme 2 merged the two.
KEPT_FROM_SCHEME_1 = ("mnasnet_small", "mnasnet_d1_320", "mobilenet_v2")


def scheme_1_id(arch: Architecture) -> str:
    """The id as scheme 1 computed it: the fields as written."""
    d = arch.to_dict()
    d.pop("name")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def test_scheme_version_is_explicit():
    assert ID_VERSION == 2


@pytest.mark.parametrize("name", sorted(ZOO_IDS))
def test_every_zoo_model_has_its_pinned_id(name):
    assert set(ZOO_IDS) == set(zoo.list())
    ids = tuple(zoo.resolve(name, w)[0].id for w in WIDTHS)
    assert ids == ZOO_IDS[name]
    if name in KEPT_FROM_SCHEME_1:
        assert ids == tuple(scheme_1_id(zoo.get(name, w)) for w in WIDTHS)


def test_a_canonical_architecture_keeps_its_scheme_1_id():
    space = SearchSpace.load("mnasnet_cifar")
    archs = [zoo.get(n, w) for n in zoo.list() for w in WIDTHS] + [space.sample(i) for i in range(200)]
    canonical = [a for a in archs if a.canonical() == a]
    assert len(canonical) > 50
    for arch in canonical:
        assert arch.id == scheme_1_id(arch)


def _with_field(cls: type, name: str, default: object) -> type:
    """`cls` with one more defaulted field, as a later version of mnas might add it."""
    return make_dataclass(cls.__name__, [(name, type(default), default)], bases=(cls,), frozen=True)


def test_a_new_defaulted_field_keeps_every_id():
    Block = _with_field(BlockSpec, "dilation", 1)
    Arch = _with_field(Architecture, "in_chans", 3)
    for name in zoo.list():
        arch = zoo.get(name)
        blocks = tuple(Block(**{k: getattr(b, k) for k in b.__dataclass_fields__}) for b in arch.blocks)
        later = Arch(blocks=blocks, stem_filters=arch.stem_filters, stem_stride=arch.stem_stride,
                     head_filters=arch.head_filters, act=arch.act)
        assert later.id == arch.id
        # away from its default, the field is part of the network and of its id
        assert replace(later, in_chans=1).id != arch.id
        assert replace(later, blocks=(replace(blocks[0], dilation=2), *blocks[1:])).id != arch.id


def _same_module(a: Architecture, b: Architecture, resolution: int = 32) -> bool:
    """The same state_dict keys and shapes, and the same logits with the same weights."""
    ma, mb = (build_model(x.for_resolution(resolution), num_classes=10).eval() for x in (a, b))
    sa, sb = ma.state_dict(), mb.state_dict()
    if [(k, tuple(v.shape)) for k, v in sa.items()] != [(k, tuple(v.shape)) for k, v in sb.items()]:
        return False
    mb.load_state_dict(sa)
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bool(torch.equal(ma(x), mb(x)))


def _block(skip: str, filters: int, layers: int, stride: int) -> BlockSpec:
    return BlockSpec(op="mbconv", expand=3, kernel=3, se_ratio=0.25, skip=skip, filters=filters, layers=layers,
                     stride=stride)


def _arch(*blocks: BlockSpec) -> Architecture:
    return Architecture(blocks=blocks, stem_filters=16, stem_stride=1, head_filters=64)


@pytest.mark.parametrize("layers", [1, 3])
def test_pool_skip_on_a_block_that_keeps_its_shape_is_the_identity_skip(layers):
    pool = _arch(_block("identity", 24, 2, 2), _block("pool", 24, layers, 1))
    identity = _arch(_block("identity", 24, 2, 2), _block("identity", 24, layers, 1))
    assert pool != identity and _same_module(pool, identity)
    assert pool.id == identity.id and pool.canonical() == identity.canonical()


@pytest.mark.parametrize("filters, stride", [(32, 1), (24, 2), (16, 2)])
def test_identity_and_none_on_one_layer_that_changes_shape_are_one_network(filters, stride):
    none = _arch(_block("none", filters, 1, stride))
    identity = _arch(_block("identity", filters, 1, stride))
    assert _same_module(none, identity) and none.id == identity.id


@pytest.mark.parametrize("first, second", [
    (_block("pool", 24, 2, 2), _block("identity", 24, 2, 2)),  # pool projects on the strided layer
    (_block("pool", 32, 1, 1), _block("identity", 32, 1, 1)),  # ... and where widths change
    (_block("none", 24, 2, 2), _block("identity", 24, 2, 2)),  # identity adds a residual on layer 2
    (_block("none", 16, 1, 1), _block("identity", 16, 1, 1)),  # a block that keeps its shape
    (_block("pool", 24, 1, 2), _block("none", 24, 1, 2)),
])
def test_encodings_of_different_networks_keep_different_ids(first, second):
    a, b = _arch(first), _arch(second)
    assert not _same_module(a, b) and a.id != b.id


def test_the_id_ignores_the_name_and_canonical_drops_it():
    a = zoo.get("mnasnet_a1")
    assert a.with_name("x").id == a.id and a.canonical().name == ""
