import random
from dataclasses import replace

import pytest

from mnas import zoo
from mnas.arch_strings import parse_arch, parse_arch_string, to_tf_string, to_timm_string
from mnas.architecture import Architecture, BlockSpec, round_filters
from mnas.errors import UserError
from mnas.space import SearchSpace

SPACES = [SearchSpace.default(), SearchSpace.cifar()]


def test_default_space_size_is_432_to_the_7th():
    sp = SearchSpace.default()
    assert sp.decision_sizes() == [4, 2, 2, 3, 3, 3] * 7
    assert sp.size() == 432 ** 7


def test_default_space_skeleton_follows_mobilenet_v2():
    sp = SearchSpace.default()
    assert sp.strides == (1, 2, 2, 2, 1, 2, 1)
    # filters {0.75, 1.0, 1.25} x MobileNetV2's, TF rounding
    assert [sp.block_choices(i)["filters"] for i in range(7)] == [
        (16, 16, 24), (24, 24, 32), (24, 32, 40), (48, 64, 80), (72, 96, 120), (120, 160, 200), (240, 320, 400)]
    assert [sp.block_choices(i)["layers"] for i in range(7)] == [
        (1, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (2, 3, 4), (2, 3, 4), (1, 1, 2)]


@pytest.mark.parametrize("f,m,expected", [(32, 0.35, 16), (24, 0.75, 24), (16, 1.25, 24), (36, None, 36),
                                          (36, 1.0, 40), (320, 1.3, 416), (192, 1.4, 272), (8, 0.35, 8)])
def test_round_filters_matches_tf(f, m, expected):
    assert round_filters(f, m) == expected


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_sample_is_seeded_and_inside_the_space(space):
    a = space.sample(random.Random(7))
    assert a == space.sample(random.Random(7))
    assert space.contains(a)
    assert any(space.sample(random.Random(s)) != a for s in range(8, 12))


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_tokens_round_trip(space):
    rng = random.Random(1)
    for _ in range(50):
        arch = space.sample(rng)
        tokens = space.encode(arch)
        assert len(tokens) == len(space.decision_sizes())
        assert space.decode(tokens) == arch


ROUND_TRIP_ARCHS = [zoo.get(n) for n in zoo.list()] + [SearchSpace.default().sample(random.Random(s)) for s in range(20)]


@pytest.mark.parametrize("arch", ROUND_TRIP_ARCHS, ids=lambda a: a.name or a.id)
def test_lossless_round_trips(arch):
    assert Architecture.from_json(arch.to_json()) == arch
    assert parse_arch(arch.to_json()) == arch
    assert parse_arch_string(to_timm_string(arch)) == arch
    assert parse_arch_string(to_tf_string(arch)) == arch
    assert hash(arch) == hash(Architecture.from_json(arch.to_json()))
    assert len(arch.id) == 12 and arch.id == Architecture.from_json(arch.to_json()).id


def test_id_ignores_name_and_is_stable():
    a = zoo.get("mnasnet_a1")
    assert a.with_name("other").id == a.id
    assert a.id == "b3d9be9db710"  # scheme 2 (ID_VERSION); tests/test_arch_id.py pins the whole zoo
    assert zoo.get("mnasnet_b1").id != a.id


def test_timm_and_tf_strings_of_a1():
    a1 = zoo.get("mnasnet_a1")
    assert to_timm_string(a1).split(",")[1:-1] == [
        "ds_r1_k3_s1_e1_c16_noskip", "ir_r2_k3_s2_e6_c24", "ir_r3_k5_s2_e3_c40_se0.25", "ir_r4_k3_s2_e6_c80",
        "ir_r2_k3_s1_e6_c112_se0.25", "ir_r3_k5_s2_e6_c160_se0.25", "ir_r1_k3_s1_e6_c320"]
    assert to_tf_string(a1).split(",")[2] == "r2_k3_s22_e6_i16_o24"
    # plain timm arch_def strings without mnas stem/head items parse with defaults
    bare = parse_arch_string(" ".join(to_timm_string(a1).split(",")[1:-1]))
    assert bare == a1


def test_zoo_models_need_not_be_in_the_space():
    sp = SearchSpace.default()
    assert not sp.contains(zoo.get("mnasnet_a1"))  # 112 is not a 0.75/1/1.25 multiple of 96
    with pytest.raises(UserError, match="not in space"):
        sp.encode(zoo.get("mnasnet_d1"))


def test_space_from_dict_and_yaml(tmp_path):
    d = {"name": "tiny", "base_filters": [16, 32], "base_layers": [1, 2], "strides": [1, 2],
         "ops": ["ds", "mbconv1", {"op": "mbconv", "expand": 3}], "kernels": [3, 5, 7], "se_ratios": [0],
         "skips": ["identity"], "filter_multipliers": [1.0], "layer_deltas": [0, 1],
         "stem_stride": 1, "resolution": 32}
    sp = SearchSpace.from_dict(d)
    assert sp.decision_sizes() == [3, 3, 1, 1, 1, 2] * 2
    assert sp.size() == 18 ** 2
    f = tmp_path / "tiny.yaml"
    import yaml
    f.write_text(yaml.safe_dump(d))
    assert SearchSpace.load(str(f)) == sp
    assert SearchSpace.from_dict(sp.to_dict()) == sp


@pytest.mark.parametrize("bad,match", [
    ({"base_filters": [16], "base_layers": [1, 2], "strides": [1]}, "same, non-zero length"),
    ({"bogus": 1}, "unknown key"),
    ({"ops": ["mbconv"]}, "unknown op choice"),
    ({"skips": ["teleport"]}, "skips.0: Input should be 'identity', 'pool' or 'none'"),
    ({"kernels": []}, "kernels: List should have at least 1 item"),
    ({"kernels": ["3", 5]}, "kernels.0: Input should be a valid integer"),
    ({"kernels": [3, 4]}, "kernels must be odd"),
    ({"base_layers": [1, 2, 100000, 4, 3, 3, 1]}, r"base_layers.2: Input should be less than or equal to 32"),
    ({"base_filters": [16.5, 24, 32, 64, 96, 160, 320]}, "base_filters.0: Input should be a valid integer"),
    ({"se_ratios": [-0.5]}, "se_ratios.0: Input should be greater than or equal to 0"),
    ({"resolution": 0}, "resolution: Input should be greater than or equal to 8"),
])
def test_bad_space_definitions_are_user_errors(bad, match):
    d = SearchSpace.default().to_dict()
    d.update(bad)
    with pytest.raises(UserError, match=match):
        SearchSpace.from_dict(d)


@pytest.mark.parametrize("text", ["ir_r2_k3_s3_e6_c24", "r2_k3_s21_e6_i16_o24", "xx_r1", "ir_k3_s1_e6_c24",
                                  '{"blocks": 1', "ir_r1_k3_s1_e6_cX"])
def test_malformed_strings_are_user_errors(text):
    with pytest.raises(UserError):
        parse_arch(text)


A1_ITEMS = to_timm_string(zoo.get("mnasnet_a1")).split(",")


@pytest.mark.parametrize("item,match", [
    ("ir_r4_k3_s2_e6_c80_foo_bar", "unknown or malformed token 'foo' \\(token 7\\)"),
    ("ir_r4_k3_s2_e6_c80_sx0.25", "unknown or malformed token 'sx0.25'"),
    ("ir_r4_k3_s2_e6_c80_se-0.5", "unknown or malformed token 'se-0.5'"),
    ("ir_r4_r2_k3_s2_e6_c80", "token 'r2' \\(token 3\\) repeats an earlier one"),
    ("ir_r4_k3_s2_e6_c80_noskip_pool", "more than one skip flag"),
    ("ir_r100000_k3_s2_e6_c80", "block layers must lie in 1..32"),
    ("ir_r4_k3_s2_e6_c99999", "block filters must lie in 1..4096"),
    ("ir_r4_k4_s2_e6_c80", "block kernel must be odd"),
    ("ir_r4_k3_s2_e6_c80_nre", "unknown or malformed token 'nre'"),
])
def test_strict_strings_name_the_item_and_token(item, match):
    """Every token counts: a string that means something else is never read as mnasnet_a1."""
    text = ",".join(A1_ITEMS[:4] + [item] + A1_ITEMS[5:])
    with pytest.raises(UserError, match=f"item 5 .*{match}"):
        parse_arch(text)


@pytest.mark.parametrize("change,match", [
    ({"filters": 24.5}, "block 2: block filters must be a whole number"),
    ({"kernel": "3"}, "block 2: block kernel must be a whole number"),
    ({"surprise": 1}, "block 2: expected exactly the keys"),
    ({"layers": 100000}, "block 2: block layers must lie in 1..32"),
])
def test_json_architectures_are_validated(change, match):
    d = zoo.get("mnasnet_a1").to_dict()
    d["blocks"][1].update(change)
    with pytest.raises(UserError, match=match):
        Architecture.from_dict(d)


def test_integral_float_widths_are_read_as_ints():
    d = zoo.get("mnasnet_a1").to_dict()
    d["blocks"][1]["filters"] = 24.0
    assert Architecture.from_dict(d) == zoo.get("mnasnet_a1")


def test_too_large_networks_are_refused_before_building():
    d = zoo.get("mnasnet_a1").to_dict()
    for b in d["blocks"]:
        b.update(layers=32, filters=4096)
    with pytest.raises(UserError, match="parameters; mnas builds up to 500M"):
        Architecture.from_dict(d)


def test_layer_configs_cover_every_layer():
    a1 = zoo.get("mnasnet_a1")
    layers = a1.layer_configs(224)
    assert len(layers) == sum(b.layers for b in a1.blocks) == 16
    assert layers[0].input_size == 112 and layers[-1].input_size == 7
    assert layers[1].in_filters == 16 and layers[1].stride == 2


def test_space_layer_configs_contain_every_sampled_layer():
    sp = SearchSpace.default()
    configs = sp.layer_configs()
    rng = random.Random(0)
    for _ in range(30):
        assert set(sp.sample(rng).layer_configs(sp.resolution)) <= configs
    assert 1_000 < len(configs) < 100_000


def test_cifar_skeleton_of_a_zoo_model():
    a = zoo.get("mnasnet_a1").for_resolution(32)
    assert a.stem_stride == 1 and [b.stride for b in a.blocks] == [1, 1, 2, 2, 1, 2, 1]
    assert a.output_shapes(32)[-1] == (320, 4)


def test_blockspec_validation():
    with pytest.raises(UserError):
        BlockSpec("ds", 6, 3, 0, "identity", 16, 1, 1)
    with pytest.raises(UserError):
        replace(zoo.get("mnasnet_a1"), act="gelu")


def test_a_skip_that_adds_no_shortcut_is_keyed_as_none() -> None:
    """Identity across a change of shape costs nothing: one latency-table entry, not two."""
    from mnas.architecture import LayerConfig

    args = dict(op="mbconv", expand=6, kernel=3, se_ratio=0.0, input_size=56, act="relu")
    across = LayerConfig(skip="identity", in_filters=24, out_filters=40, stride=2, **args)
    plain = LayerConfig(skip="none", in_filters=24, out_filters=40, stride=2, **args)
    assert across == plain and across.key == plain.key and across.skip == "none" and not across.adds_shortcut
    same = LayerConfig(skip="identity", in_filters=40, out_filters=40, stride=1, **args)
    pooled = LayerConfig(skip="pool", in_filters=24, out_filters=40, stride=2, **args)
    assert same.skip == "identity" and same.adds_shortcut and pooled.skip == "pool" and pooled.adds_shortcut
    space = SearchSpace.load("mnasnet")
    configs = space.layer_configs()
    assert all(c.skip == "none" or c.adds_shortcut for c in configs)
    assert len({c.key for c in configs}) == len(configs)
