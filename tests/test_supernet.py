"""The supernet: sharing rules (every choice reachable, shapes), extraction parity with the plain
model and its ONNX export, BN re-estimation, path sampling, the training step, the file format."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mnas.architecture import Architecture
from mnas.data import DatasetSplits, load_dataset
from mnas.errors import UserError
from mnas.model import Layer, build_model
from mnas.profile import count_macs
from mnas.space import DECISIONS, OpChoice, SearchSpace
from mnas.supernet import (
    Supernet,
    SupernetStep,
    extract,
    fold_bn_,
    load_supernet,
    op_macs_per_pixel,
    reestimate_bn,
    save_supernet,
    score,
    scoring_data,
    step_paths,
)

USER_SPACE = """\
name: user_space
base_filters: [16, 24, 32]
base_layers: [1, 2, 1]
strides: [1, 2, 2]
ops: [conv, ds, mbconv1, mbconv4]   # mbconv1 has no expansion conv
kernels: [3, 5, 7]                  # chained kernel transforms 7 -> 5 -> 3
se_ratios: [0, 0.125, 0.25]
skips: [identity, pool, none]
filter_multipliers: [0.5, 1.0]
layer_deltas: [0, 1]
stem_filters: 16
stem_stride: 1
head_filters: 64
act: swish
resolution: 32
"""


@pytest.fixture(scope="module")
def user_space(tmp_path_factory: pytest.TempPathFactory) -> SearchSpace:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(USER_SPACE)
    return SearchSpace.load(path)


def _perturb_(net: Supernet, seed: int = 0) -> Supernet:
    """Make BN statistics, BN affine parameters and kernel transforms non-trivial, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in net.named_parameters():
            if ".kernel_transforms." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
            if name.startswith("head.classifier."):  # zero-initialised: would make every logit 0
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if ".residual_scales." in name:  # zero-initialised: a wrong fold would go unnoticed
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return net


def _make(space: SearchSpace, resolution: int, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return _perturb_(Supernet(space, num_classes=10, resolution=resolution), seed).eval()


@pytest.fixture(scope="module")
def nets(user_space: SearchSpace) -> dict[str, Supernet]:
    return {
        "mnasnet": _make(SearchSpace.default(), 224),
        "mnasnet_cifar": _make(SearchSpace.cifar(), 32),
        "user_space": _make(user_space, 32),
    }


def _decisions(space: SearchSpace) -> list[tuple[int, int, str]]:
    sizes = space.decision_sizes()
    return [(i, sizes[i], f"block{i // 6 + 1}.{DECISIONS[i % 6]}") for i in range(len(sizes))]


def _assert_parity(net: Supernet, arch: Architecture, x: torch.Tensor) -> None:
    model = extract(net, arch).eval()
    assert model.arch == net.resolve(arch)
    with torch.no_grad():
        expected = net(x, arch)
        assert expected.std() > 1e-3  # a real comparison, not of constants
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


# ---- every choice reachable and shape-correct ---------------------------------------------------

CASES = [("mnasnet", d) for d in range(42)] + [("mnasnet_cifar", d) for d in range(42)] + [("user_space", d) for d in range(18)]


@pytest.mark.parametrize(("space_name", "decision"), CASES, ids=[f"{s}-d{d}" for s, d in CASES])
def test_every_choice_is_a_path_with_the_plain_models_shapes_and_outputs(nets, space_name, decision):
    """Each value of each decision, on a random background architecture: the supernet runs it, its
    slices fill build_model's network of that architecture exactly, which computes the same logits."""
    net = nets[space_name]
    space = net.space
    index, size, label = _decisions(space)[decision]
    rng = random.Random(decision)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(decision))
    for value in range(size):
        tokens = space.sample_tokens(rng)
        tokens[index] = value
        arch = space.decode(tokens)
        block, key = arch.blocks[index // 6], DECISIONS[index % 6]
        chosen = space.block_choices(index // 6)[key][value]
        assert (OpChoice(block.op, block.expand) if key == "op" else getattr(block, key)) == chosen, label
        _assert_parity(net, arch, x)  # extraction copies every slice into build_model's exact shapes


@pytest.mark.parametrize("space_name", ["mnasnet", "mnasnet_cifar", "user_space"])
def test_extremes_and_random_paths_match_their_extracted_networks(nets, space_name):
    net = nets[space_name]
    x = torch.randn(3, 3, 32, 32)
    for arch in [net.largest(), net.smallest(), *(net.space.sample(s) for s in range(4))]:
        _assert_parity(net, arch, x)


def test_a_224_space_with_32_px_data_gets_the_cifar_skeleton():
    net = Supernet(SearchSpace.default(), num_classes=10, resolution=32)
    arch = SearchSpace.default().sample(1)
    assert net.resolve(arch) == arch.for_resolution(32)
    assert net.runnable.stem_stride == 1 and extract(net, arch).stem[0].stride == (1, 1)
    assert net.resolve(arch.for_resolution(32)) == arch.for_resolution(32)  # a resolved arch is accepted too


def test_an_architecture_outside_the_space_is_refused(nets):
    net = nets["mnasnet_cifar"]
    arch = SearchSpace.default().sample(0).scaled(0.5)  # widths no multiplier of the space gives
    with pytest.raises(UserError, match="not a path of this supernet"):
        extract(net, arch)
    with pytest.raises(UserError, match="not a path"):
        net(torch.zeros(1, 3, 32, 32), arch)


def _weight(model: nn.Module, block: int, layer: int, part: str) -> torch.Tensor:
    """The conv weight of `part` (conv_pw, conv_dw, conv_pwl) in layer `layer` of block `block`."""
    conv = model.get_submodule(f"blocks.{block}.{layer}.body.{part}.0")
    assert isinstance(conv, nn.Conv2d)
    return conv.weight


def test_weights_are_shared_where_shapes_nest(nets):
    net = nets["mnasnet_cifar"]
    space = net.space
    tokens = space.sample_tokens(random.Random(5))
    for i in range(space.num_blocks):  # every block: mbconv6, k5, se 0.25, widest, deepest
        tokens[6 * i: 6 * i + 6] = [3, 1, 1, 1, 2, 2]
    big = space.decode(tokens)
    tokens[6 * 3] = 2  # block 4: mbconv3 instead of mbconv6
    tokens[6 * 3 + 1] = 0  # and kernel 3
    small = space.decode(tokens)
    m6, m3 = extract(net, big), extract(net, small)
    dw6, dw3 = _weight(m6, 3, 1, "conv_dw"), _weight(m3, 3, 1, "conv_dw")
    mid3 = dw3.shape[0]
    assert dw6.shape[0] == 2 * mid3 and dw3.shape[-1] == 3
    transform = net.layer(3, 1).families["mbconv"].conv_dw.kernel_transforms["k3"].detach()
    centre = dw6[:mid3, :, 1:4, 1:4].reshape(mid3, 9) @ transform
    torch.testing.assert_close(dw3.reshape(mid3, 9), centre)
    # the expansion of mbconv3 is the first rows of mbconv6's; the projection the first columns
    torch.testing.assert_close(_weight(m3, 3, 1, "conv_pw"), _weight(m6, 3, 1, "conv_pw")[:mid3])
    torch.testing.assert_close(_weight(m3, 3, 1, "conv_pwl"), _weight(m6, 3, 1, "conv_pwl")[:, :mid3])
    # fewer layers: the first n layers are the same weights
    tokens[6 * 3 + 5] = 0
    shallow = extract(net, space.decode(tokens))
    torch.testing.assert_close(_weight(shallow, 3, 0, "conv_dw"), _weight(m3, 3, 0, "conv_dw"))


def test_op_families_do_not_share_weights(nets):
    net = nets["mnasnet_cifar"]
    names = {n.split(".families.")[1].split(".")[0] for n, _ in net.named_parameters() if ".families." in n}
    assert names == {"conv", "ds", "mbconv"}
    layer = net.layer(1, 0)
    assert layer.families["ds"].conv_dw.conv.weight.data_ptr() != layer.families["mbconv"].conv_dw.conv.weight.data_ptr()


def test_extracted_network_exports_to_onnx_with_the_same_logits(nets, tmp_path):
    import onnxruntime as ort

    from mnas.export import to_onnx

    net = nets["user_space"]
    x = torch.randn(1, 3, 32, 32)
    for k, arch in enumerate([net.largest(), net.space.sample(7)]):
        with torch.no_grad():
            expected = net(x, arch).numpy()
        path = to_onnx(extract(net, arch), tmp_path / f"m{k}.onnx", resolution=32)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# ---- BN re-estimation ------------------------------------------------------------------------------


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_bn_reestimation_is_the_exact_average_and_deterministic(nets):
    net = nets["user_space"]
    arch = net.space.sample(3)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 3, 32, 32, generator=g) * 2 + 1 for _ in range(3)]
    model = extract(net, arch)
    before = _bn_state(model)
    reestimate_bn(model, batches)
    after = _bn_state(model)
    assert not model.training
    assert all(not torch.allclose(before[k], after[k]) for k in before)
    # the stem's BN sees the stem conv's output: its mean is the average of the per-batch means
    with torch.no_grad():
        means = torch.stack([model.stem[0](b).mean((0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(model.stem[1].running_mean, means, rtol=1e-4, atol=1e-5)
    assert model.stem[1].momentum == net.bn_momentum  # momentum restored
    again = reestimate_bn(extract(net, arch), batches)
    for k, v in _bn_state(again).items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=0)
    # the supernet's sliced BN re-estimates the same statistics on the same path
    sliced = _make(net.space, 32)
    reestimate_bn(sliced, batches, arch)
    for k, v in _bn_state(extract(sliced, arch)).items():
        torch.testing.assert_close(v, after[k], rtol=1e-4, atol=1e-5)


def test_folding_bn_keeps_the_logits(nets):
    net = nets["mnasnet_cifar"]
    model = extract(net, net.space.sample(2)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        fold_bn_(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        torch.testing.assert_close(model(x), expected, rtol=1e-3, atol=1e-4)


# ---- sampling and the training step ----------------------------------------------------------------


def test_residual_layers_start_as_their_shortcut_and_none_paths_are_unscaled(user_space):
    """The residual scale starts at zero (a residual layer outputs its shortcut, as stable_init_ does
    for a stand-alone network) and is used only by paths that add a shortcut; a "none" path of the
    same layer keeps the BN's own scale."""
    torch.manual_seed(0)
    net = Supernet(user_space, num_classes=10, resolution=32).eval()
    x = torch.randn(2, 3, 32, 32)
    arch = net.resolve(user_space.decode([0] * len(user_space.decision_sizes())))
    blocks = list(arch.blocks)
    for skip in ("identity", "none"):
        path = replace(arch, blocks=tuple(replace(b, skip=skip) for b in blocks))
        model = extract(net, path)
        for layer in model.modules():
            if isinstance(layer, Layer) and layer.has_skip and layer.shortcut is None:
                with torch.no_grad():
                    inp = torch.randn(2, layer.body[0][0].in_channels, 8, 8)
                    assert torch.equal(layer(inp), inp)  # body scaled to zero: identity
        residual = [m for m in model.modules() if isinstance(m, Layer) and m.has_skip]
        assert bool(residual) == (skip == "identity")
        torch.testing.assert_close(model(x), net(x, path), rtol=1e-5, atol=1e-5)
    none_path = replace(arch, blocks=tuple(replace(b, skip="none") for b in blocks))
    for m in extract(net, none_path).modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))  # not multiplied by the zero scale


def test_paths_depend_on_seed_and_step_only(nets):
    net = nets["mnasnet_cifar"]
    assert step_paths(net, "spos", 1, 10) == step_paths(net, "spos", 1, 10)
    assert step_paths(net, "sandwich", 1, 10, 3) == step_paths(net, "sandwich", 1, 10, 3)
    random.seed(123)  # the global RNG plays no part
    torch.manual_seed(123)
    first = [step_paths(net, "spos", 1, s)[0] for s in range(8)]
    random.seed(0)
    assert first == [step_paths(net, "spos", 1, s)[0] for s in range(8)]
    assert len(set(first)) == 8
    assert first != [step_paths(net, "spos", 2, s)[0] for s in range(8)]
    with pytest.raises(ValueError, match="rule"):
        step_paths(net, "greedy", 0, 0)


def test_sandwich_paths_are_largest_smallest_then_random(nets):
    net = nets["mnasnet_cifar"]
    paths = step_paths(net, "sandwich", 0, 4, num_random=2)
    assert len(paths) == 4 and paths[0] == net.largest() and paths[1] == net.smallest()
    c = [net.space.block_choices(i) for i in range(net.space.num_blocks)]
    for i, b in enumerate(net.largest().blocks):
        assert (b.kernel, b.se_ratio, b.skip) == (5, 0.25, "pool")
        assert b.filters == max(c[i]["filters"]) and b.layers == max(c[i]["layers"])
        heaviest = max(c[i]["op"], key=lambda o: op_macs_per_pixel(o, b.filters, 5))
        assert (b.op, b.expand) == (heaviest.op, heaviest.expand) == ("conv", 1)  # 5x5 at >= 20 channels
    for i, b in enumerate(net.smallest().blocks):
        assert (b.op, b.kernel, b.se_ratio, b.skip) == ("ds", 3, 0, "none")
        assert b.filters == min(c[i]["filters"]) and b.layers == min(c[i]["layers"])
    macs = [count_macs(build_model(net.resolve(a), 10), 32) for a in (net.largest(), net.smallest())]
    others = [count_macs(build_model(net.resolve(net.space.sample(s)), 10), 32) for s in range(6)]
    assert macs[0] > max(others) and macs[1] < min(others)


@pytest.mark.parametrize("rule", ["spos", "sandwich"])
def test_step_accumulates_every_paths_gradient_and_touches_every_parameter(user_space, rule):
    torch.manual_seed(0)
    net = Supernet(user_space, num_classes=10, resolution=32, zero_init_classifier=False).train()
    step = SupernetStep(net, rule=rule, num_random=1, label_smoothing=0.1, seed=4)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    torch.manual_seed(1)  # the head's dropout draws from the global RNG
    loss, logits = step(net, x, y, 3)
    assert loss.ndim == 0 and not loss.requires_grad and logits.shape == (6, 10) and not logits.requires_grad
    assert all(p.grad is not None for p in net.parameters())  # DDP without find_unused_parameters
    grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    # the same step again from the same weights: the same paths, the same gradients
    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    step(net, x, y, 3)
    for g, p in zip(grads, net.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, g)
    # the sum over paths: compare with the paths' losses by hand
    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    paths = step.paths(3)
    teacher = net(x, paths[0])
    total = nn.functional.cross_entropy(teacher, y, label_smoothing=0.1)
    soft = torch.softmax(teacher.detach(), 1)
    for path in paths[1:]:
        total = total - (soft * torch.log_softmax(net(x, path), 1)).sum(1).mean()
    total.backward()
    for g, p in zip(grads, net.parameters(), strict=True):
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(g), g, rtol=1e-4, atol=1e-6)


# ---- the file --------------------------------------------------------------------------------------


def test_save_and_load_round_trip_and_refusals(nets, user_space, tmp_path):
    net = nets["user_space"]
    path = save_supernet(net, tmp_path / "run", meta={"note": "x"})
    assert path == tmp_path / "run" / "supernet.pt"
    loaded, meta = load_supernet(tmp_path / "run", space=user_space, resolution=32, num_classes=10)
    assert meta["note"] == "x" and not loaded.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    arch = user_space.sample(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, arch), net(x, arch))
    with pytest.raises(UserError, match="trained for space 'user_space', not 'mnasnet_cifar'"):
        load_supernet(path, space=SearchSpace.cifar())
    with pytest.raises(UserError, match="64 px"):
        load_supernet(path, resolution=64)
    with pytest.raises(UserError, match="not found"):
        load_supernet(tmp_path / "nowhere")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="broken.pt"):
        load_supernet(broken)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(UserError, match="not an mnas supernet file"):
        load_supernet(other)


def test_an_edited_space_in_the_file_is_refused(nets, tmp_path):
    net = nets["user_space"]
    path = save_supernet(net, tmp_path / "s.pt")
    raw = torch.load(path, weights_only=True)
    raw["config"]["space"]["filter_multipliers"] = [0.5, 2.0]  # another space under the same name
    torch.save(raw, path)
    with pytest.raises(UserError, match="do not fit space"):
        load_supernet(path)


# ---- scoring ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(data_root: Path) -> DatasetSplits:
    return load_dataset("cifar10_subset", data_root=data_root, val_size=200, train_subset=600, seed=0)


def test_score_is_deterministic_reuses_data_and_checks_every_arch_first(nets, small_data):
    net = nets["user_space"]
    archs = [net.space.sample(s) for s in range(3)]
    sd = scoring_data(small_data, bn_batches=2, bn_batch_size=32, images=150, batch_size=64)
    assert sd.images == 150 and len(sd.bn_batches) == 2
    seen: list[tuple[int, float]] = []
    first = score(net, archs, sd, on_result=lambda i, a, acc, s: seen.append((i, acc)))
    assert [i for i, _ in seen] == [0, 1, 2] and all(0 <= a <= 1 for a in first)
    assert first == score(net, archs, small_data, bn_batches=2, bn_batch_size=32, images=150, batch_size=64)
    assert score(net, archs[:1], sd, fold_bn=False)[0] == pytest.approx(first[0], abs=1 / 150 + 1e-9)
    ort_scores = score(net, archs, sd, backend="onnxruntime")
    assert all(abs(a - b) <= 1 / 150 + 1e-9 for a, b in zip(ort_scores, first, strict=True))  # rounding may flip one
    with pytest.raises(UserError, match="not a path"):
        score(net, [archs[0], SearchSpace.cifar().sample(0)], sd)
    with pytest.raises(UserError, match="scoring backend"):
        score(net, archs, sd, backend="tensorrt")
    with pytest.raises(UserError, match="BN batches"):
        scoring_data(small_data, bn_batches=100, bn_batch_size=64)
