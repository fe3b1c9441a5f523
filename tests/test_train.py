"""Training: the paper's schedule and optimiser against their formulas, EMA, proxy statuses,
checkpoints and exact resume. Real CIFAR-10 (small stratified subsets), tiny networks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mnas import zoo
from mnas.architecture import LOW_RESOLUTION_MAX, Architecture, BlockSpec
from mnas.data import load_dataset
from mnas.errors import UserError
from mnas.optim import ModelEma, RMSpropTF, cosine_lr, mnasnet_lr, param_groups
from mnas.run_options import RunOptions, check_device
from mnas.train.checkpoint import load_checkpoint
from mnas.train.engine import parse_device
from mnas.train.fit import TrainingInterrupted, fit
from mnas.train.proxy import train_proxy
from mnas.train.recipes import get_recipe, proxy_recipe, recipe_for, run_recipe
from mnas.train.settings import FitConfig, ProxyConfig, SupernetSettings

# A tiny network in the CIFAR skeleton (stride-1 stem): trains at a few hundred images/s on 1 core.
TINY = Architecture(
    blocks=(
        BlockSpec("ds", 1, 3, 0, "identity", 16, 1, 1),
        BlockSpec("mbconv", 3, 3, 0.25, "identity", 24, 2, 2),
        BlockSpec("mbconv", 3, 5, 0, "identity", 40, 1, 2),
    ),
    stem_filters=16, stem_stride=1, head_filters=128, name="tiny",
)


@pytest.fixture(scope="module")
def data(data_root):
    return load_dataset("cifar10_subset", data_root=data_root, val_size=300, train_subset=1000, seed=0)


# ---------------------------------------------------------------------------------------------
# Schedules and optimiser against their formulas
# ---------------------------------------------------------------------------------------------


def test_mnasnet_lr_curve_matches_the_tf_formula():
    spe, bs = 100, 1024  # peak 0.016 * 1024 / 256 = 0.064; warm-up 500 steps; decay every 240
    peak = 0.064
    assert mnasnet_lr(0, spe, bs) == 0.0
    assert mnasnet_lr(250, spe, bs) == pytest.approx(peak * 250 / 500)
    assert mnasnet_lr(499, spe, bs) == pytest.approx(peak * 499 / 500)
    # right after warm-up the staircase (counted from step 0) has already dropped twice
    assert mnasnet_lr(500, spe, bs) == pytest.approx(peak * 0.97**2)
    assert mnasnet_lr(719, spe, bs) == pytest.approx(peak * 0.97**2)
    assert mnasnet_lr(720, spe, bs) == pytest.approx(peak * 0.97**3)
    for step in range(500, 40000, 997):
        assert mnasnet_lr(step, spe, bs) == pytest.approx(peak * 0.97 ** math.floor(step / 240))
    assert mnasnet_lr(10, 1281167 / 4096, 4096) == pytest.approx(0.256 * 10 / int(5 * 1281167 / 4096))


def test_cosine_lr_endpoints():
    assert cosine_lr(0, 100, 0.1, warmup_steps=10) == pytest.approx(0.01)
    assert cosine_lr(9, 100, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(55, 100, 0.1, warmup_steps=10) == pytest.approx(0.05)
    assert cosine_lr(100, 100, 0.1, warmup_steps=10) == pytest.approx(0.0, abs=1e-12)


def test_rmsprop_tf_matches_a_hand_computed_step():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([w], lr=0.1, decay=0.9, momentum=0.9, eps=1e-3)
    g1 = torch.tensor([0.5, 0.25])
    w.grad = g1.clone()
    opt.step()
    ms1 = 0.9 * 1.0 + 0.1 * g1**2  # accumulator starts at 1
    mom1 = 0.1 * g1 / torch.sqrt(ms1 + 1e-3)  # eps inside the root, lr folded into momentum
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0]) - mom1, atol=1e-7)
    g2 = torch.tensor([-1.0, 0.5])
    w.grad = g2.clone()
    opt.step()
    ms2 = 0.9 * ms1 + 0.1 * g2**2
    mom2 = 0.9 * mom1 + 0.1 * g2 / torch.sqrt(ms2 + 1e-3)
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0]) - mom1 - mom2, atol=1e-7)
    # concretely: first step of a unit gradient moves by lr / sqrt(1.001) (not lr / (sqrt(0.1) + eps))
    v = nn.Parameter(torch.tensor([0.0]))
    v.grad = torch.tensor([1.0])
    RMSpropTF([v], lr=1.0).step()
    assert float(v.detach()) == pytest.approx(-1.0 / math.sqrt(1.001), rel=1e-6)


def test_rmsprop_tf_agrees_with_timm_port():
    timm_optim = pytest.importorskip("timm.optim")
    torch.manual_seed(0)
    a = nn.Linear(6, 3)
    b = nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    oa = RMSpropTF(a.parameters(), lr=0.05, weight_decay=1e-3)
    ob = timm_optim.RMSpropTF(b.parameters(), lr=0.05, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-3,
                              decoupled_decay=False, lr_in_momentum=True)
    for _ in range(5):
        x = torch.randn(8, 6)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_weight_decay_skips_batchnorm_and_optionally_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model, 1e-5, decay_biases=True)
    decayed = {id(p) for p in groups[0]["params"]}
    bn = model[1]
    assert id(bn.weight) not in decayed and id(bn.bias) not in decayed
    assert {id(model[0].weight), id(model[0].bias), id(model[3].weight), id(model[3].bias)} == decayed
    groups = param_groups(model, 5e-4, decay_biases=False)
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert groups[1]["weight_decay"] == 0.0


def test_ema_follows_tf_num_updates_form():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=1)  # decay min(0.9999, 2/11)
    assert float(ema.state["weight"][0, 0]) == pytest.approx(1 - 2 / 11)
    ema.update(model, step=10**6)  # decay 0.9999 once (1+t)/(10+t) exceeds it
    assert float(ema.state["weight"][0, 0]) == pytest.approx(1 - (2 / 11) * 0.9999)
    assert ema.current_decay(0) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# Skeletons
# ---------------------------------------------------------------------------------------------


def test_cifar_skeleton_removes_one_downsampling():
    a1 = zoo.get("mnasnet_a1")
    low = a1.for_resolution(224, "cifar")
    assert low.stem_stride == 1
    assert sum(b.stride == 2 for b in low.blocks) == sum(b.stride == 2 for b in a1.blocks) - 1
    assert a1.for_resolution(32) == low and a1.for_resolution(64) == low
    assert low.for_resolution(32) == low  # already low resolution: unchanged
    assert a1.for_resolution(65) == a1 and a1.for_resolution(224) == a1
    assert a1.for_resolution(32, "imagenet") == a1
    with pytest.raises(UserError, match="unknown skeleton"):
        a1.for_resolution(224, "nonsense")


# ---------------------------------------------------------------------------------------------
# Proxy training
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# One recipe path, one owner per setting
# ---------------------------------------------------------------------------------------------


def test_the_resolution_picks_the_recipe_in_one_place():
    assert recipe_for(LOW_RESOLUTION_MAX).name == "cifar" and recipe_for(LOW_RESOLUTION_MAX + 1).name == "mnasnet"
    config = FitConfig(arch_name="x")
    assert config.recipe is None  # by resolution, as the CLI has always chosen
    assert run_recipe(config, 32).name == "cifar" and run_recipe(config, 224).name == "mnasnet"
    assert run_recipe(config, 32) is get_recipe("cifar")
    assert run_recipe(FitConfig(arch_name="x", recipe="mnasnet", batch_size=32), 32).batch_size == 32
    with pytest.raises(UserError, match="unknown recipe 'fastest'"):
        run_recipe(FitConfig(arch_name="x", recipe="fastest"), 32)


def test_recipes_warm_up_for_at_most_a_tenth_of_the_run():
    cifar = get_recipe("cifar")  # one warm-up epoch
    assert cifar.warmup_steps(10 * 50, 50) == 50 and cifar.warmup_steps(5 * 50, 50) == 25
    assert cifar.peak_lr() == pytest.approx(0.2 * 64 / 256)
    lr = cifar.lr_fn(500, 50)
    assert lr(0) == pytest.approx(cifar.peak_lr() / 50) and lr(49) == lr(50) == pytest.approx(cifar.peak_lr())
    assert lr(500) == pytest.approx(0.0)


def test_the_proxy_config_turns_into_a_recipe_with_its_own_defaults():
    r = proxy_recipe(ProxyConfig())
    assert (r.optimizer, r.schedule, r.batch_size, r.decay_biases) == ("sgd", "cosine", 128, True)
    assert r.peak_lr() == 0.2 * 128 / 256 and r.warmup_steps(200, 70) == 10  # 5% of the steps
    r = proxy_recipe(ProxyConfig(optimizer="rmsprop", schedule="mnasnet", batch_size=64))
    assert r.peak_lr() == 0.016 * 64 / 256 and r.warmup_steps(200, 70) == 20  # 10%
    r = proxy_recipe(ProxyConfig(lr=0.013, warmup=0.25, batch_size=100))
    assert r.peak_lr() == 0.013 and r.warmup_steps(100, 7) == 25  # the peak as given, whatever the batch
    assert proxy_recipe(ProxyConfig(schedule="constant")).warmup_steps(100, 7) == 0


def test_one_device_check_behind_every_config():
    for ok in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert check_device(ok) == ok
    for bad in ("tpu", "cuda:", "cuda:x", "cpu:0", "", "CUDA"):
        with pytest.raises(UserError, match="unknown device"):
            check_device(bad)
        with pytest.raises(UserError, match="unknown device"):
            parse_device(bad)
        with pytest.raises(UserError, match="unknown device"):
            RunOptions(device=bad).check(("cifar",))
        with pytest.raises(ValidationError, match="unknown device"):
            ProxyConfig(device=bad)
        with pytest.raises(ValidationError, match="unknown device"):
            FitConfig(arch_name="x", device=bad)
    assert parse_device("auto") is None and parse_device("cpu") == torch.device("cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")


def test_the_training_config_is_strict_and_shares_the_cli_defaults():
    with pytest.raises(ValidationError, match="epoch"):
        FitConfig(arch_name="x", epoch=3)
    defaults = FitConfig(arch_name="x").model_dump()
    new_run = RunOptions().new_run()
    assert {k: defaults[k] for k in new_run} == new_run


def test_supernet_settings_are_a_strict_part_of_the_config_and_old_checkpoints_still_read():
    config = FitConfig(arch_name="supernet:s", supernet=SupernetSettings(rule="spos", num_random=0))
    again = FitConfig.from_saved({**config.model_dump(), "batch_size": 64})  # what a checkpoint records
    assert again.supernet == config.supernet and again.batch_size == 64
    with pytest.raises(ValidationError, match="num_randm"):
        SupernetSettings(num_randm=3)
    with pytest.raises(UserError, match="unknown sampling rule 'fair'"):
        FitConfig(arch_name="x", supernet={"rule": "fair"})
    with pytest.raises(UserError, match="num_random must be 0 to"):
        SupernetSettings(num_random=99)
    # written before FitConfig.supernet: the settings sat in "extra" ({} for mnas train)
    old = {"arch_name": "supernet:s", "epochs": 3, "extra": {"rule": "spos", "num_random": 1, "eval_bn_batches": 2,
                                                             "space": {"name": "s"}}}
    legacy = FitConfig.from_saved(old)
    assert legacy.supernet == SupernetSettings(rule="spos", num_random=1, eval_bn_batches=2, space={"name": "s"})
    assert FitConfig.model_validate(old) == legacy
    assert FitConfig.from_saved({"arch_name": "x", "extra": {}}).supernet is None


@pytest.mark.slow
def test_proxy_learns_above_chance(data):
    r = train_proxy(TINY, data, ProxyConfig(epochs=2, batch_size=50, device="cpu"), seed=0)
    assert r.status == "ok", r
    assert r.steps == 40 and r.epochs == pytest.approx(2.0)
    assert r.images_per_s > 0 and r.seconds > 0
    assert r.val_acc > 0.15 and r.val_loss < 2.25, r  # chance: 0.1 and ln(10) = 2.30


@pytest.mark.slow
def test_proxy_is_deterministic_under_a_seed(data):
    runs = [train_proxy(TINY, data, ProxyConfig(epochs=1, batch_size=50, max_steps=4, device="cpu"), seed=s) for s in (0, 0, 1)]
    assert all(r.status == "ok" for r in runs)
    assert (runs[0].val_loss, runs[0].train_loss) == (runs[1].val_loss, runs[1].train_loss)
    assert runs[2].train_loss != runs[0].train_loss


@pytest.mark.slow
def test_proxy_with_paper_optimizer_and_schedule(data):
    r = train_proxy(TINY, data, ProxyConfig(epochs=1, batch_size=100, optimizer="rmsprop", schedule="mnasnet", ema_decay=0.9999,
                    device="cpu", max_steps=4))
    assert r.status == "ok" and math.isfinite(r.val_loss)


@pytest.mark.slow
def test_divergence_ends_with_status_not_exception(data):
    r = train_proxy(TINY, data, ProxyConfig(epochs=2, batch_size=50, lr=1e6, device="cpu"))
    assert r.status == "diverged"
    assert math.isnan(r.val_acc) and r.steps <= 20


@pytest.mark.slow
def test_time_budget_and_errors_are_statuses(data):
    r = train_proxy(TINY, data, ProxyConfig(epochs=5, batch_size=50, time_budget_s=1e-9, device="cpu"))
    assert r.status == "timeout" and r.steps == 0
    with pytest.raises(ValidationError, match="optimizer"):
        ProxyConfig(optimizer="nope")
    with pytest.raises(ValidationError, match="device"):
        ProxyConfig(device="tpu")
    r = train_proxy(TINY, data, ProxyConfig(epochs=1, device="cuda:7" if not torch.cuda.is_available() else "cuda:999"))
    assert r.status.startswith("error: ")


@pytest.mark.slow
def test_max_steps_caps_the_run(data):
    r = train_proxy(TINY, data, ProxyConfig(epochs=10, batch_size=50, max_steps=3, device="cpu"))
    assert r.status == "ok" and r.steps == 3 and r.epochs == pytest.approx(3 / 20)


# ---------------------------------------------------------------------------------------------
# Full training: checkpoints and exact resume
# ---------------------------------------------------------------------------------------------


def _cfg(**kw) -> FitConfig:
    base = dict(arch_name="tiny", data="cifar10_subset", data_root=None, epochs=2, recipe="mnasnet",
                batch_size=100, train_subset=300, val_size=100, seed=0, device="cpu")
    base.update(kw)
    return FitConfig(**base)


@pytest.fixture(scope="module")
def small(data_root):
    return load_dataset("cifar10_subset", data_root=data_root, val_size=100, train_subset=300, seed=0)


@pytest.mark.slow
def test_fit_writes_checkpoint_and_metrics_and_resumes_exactly(small, tmp_path):
    straight = fit(TINY, small, _cfg(), tmp_path / "a", progress=False, evaluate_test=True)
    ck_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    for key in ("arch", "num_classes", "resolution", "model", "ema", "optimizer", "epoch", "step", "recipe", "config"):
        assert key in ck_a
    assert ck_a["epoch"] == 2 and ck_a["step"] == 6 and ck_a["resolution"] == 32
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]

    # interrupted in the middle of epoch 2 (step 4 of 6), then resumed
    with pytest.raises(TrainingInterrupted):
        fit(TINY, small, _cfg(), tmp_path / "b", progress=False, stop_after_steps=4)
    mid = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (mid["epoch"], mid["batch_in_epoch"], mid["step"]) == (1, 1, 4)
    resumed = fit(TINY, small, _cfg(), tmp_path / "b", resume=True, progress=False, evaluate_test=True)
    ck_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck_b["step"] == 6
    for k, v in ck_a["model"].items():
        assert torch.equal(v, ck_b["model"][k]), k
    for k, v in ck_a["ema"]["state"].items():
        assert torch.equal(v, ck_b["ema"]["state"][k]), k
    lines_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines_b] == [1, 2]
    for la, lb in zip(lines, lines_b, strict=True):
        assert la["train_loss"] == pytest.approx(lb["train_loss"]) and la["val_acc"] == lb["val_acc"]
    assert resumed["test_acc"] == straight["test_acc"]


@pytest.mark.slow
def test_resume_at_epoch_boundary_and_load_checkpoint(small, tmp_path):
    with pytest.raises(TrainingInterrupted):
        fit(TINY, small, _cfg(recipe="cifar", epochs=2), tmp_path, progress=False, stop_after_steps=3)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["batch_in_epoch"]) == (1, 0)
    summary = fit(TINY, small, _cfg(recipe="cifar", epochs=2), tmp_path, resume=True, progress=False)
    assert summary["epoch"] == 2 and 0.0 <= summary["val_acc"] <= 1.0 and "test_acc" not in summary
    arch, model, meta = load_checkpoint(tmp_path)  # the folder works as well as the file
    assert arch == TINY and not model.training and meta["epoch"] == 2 and meta["recipe"]["name"] == "cifar"
    assert load_checkpoint(tmp_path / "checkpoint.pt")[0] == TINY


@pytest.mark.slow
def test_resume_and_checkpoint_errors(small, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        fit(TINY, small, _cfg(), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(UserError, match="not a readable"):
        load_checkpoint(bad)
    with pytest.raises(UserError, match="unknown recipe"):
        fit(TINY, small, _cfg(recipe="fastest"), tmp_path / "x", progress=False)


@pytest.mark.slow
def test_a_candidate_climbing_the_rungs_trains_exactly_as_one_run(tmp_path, data_root):
    """Rung by rung through saved states (as promoted candidates continue in worker processes)
    gives the same network as training straight to the top rung: same accuracy, same loss."""
    from mnas.data import load_dataset
    from mnas.space import SearchSpace
    from mnas.train.proxy import train_proxy, train_rung
    from mnas.train.settings import ProxyConfig

    data = load_dataset("cifar10_subset", data_root=data_root, train_subset=300, val_size=100, seed=0)
    arch = SearchSpace.load("mnasnet_cifar").sample(3).scaled(0.35)
    proxy = ProxyConfig(steps=[3, 7, 12], batch_size=32, threads=1, device="cpu")  # 300 / 32: rungs cut epochs
    state = tmp_path / "state.pt"
    climbed = [train_rung(arch, data, proxy, rung=k, seed=4, state=state) for k in range(3)]
    straight = train_proxy(arch, data, proxy, seed=4)
    assert [r.steps for r in climbed] == [3, 7, 12] and all(r.ok for r in climbed)
    assert straight.steps == 12 and straight.val_acc == climbed[-1].val_acc
    assert straight.val_loss == pytest.approx(climbed[-1].val_loss, rel=1e-6)
    # a rung run again (its record lost when the search was killed after the state was written)
    # continues from the rung below, whose state the newer one did not replace
    again = train_rung(arch, data, proxy, rung=1, seed=4, state=state)
    assert again.ok and again.val_acc == climbed[1].val_acc
