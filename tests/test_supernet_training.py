"""Supernet training for real (slow tier): sampled paths learn, and DistributedDataParallel on two
CPU processes (gloo) trains the same paths on every rank with no find_unused_parameters."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mnas.data import load_dataset
from mnas.space import SearchSpace
from mnas.supernet import Supernet, SupernetStep, load_supernet, score, scoring_data, train_supernet

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny", "base_filters": [16, 24, 32], "base_layers": [1, 2, 1], "strides": [1, 2, 2],
    "ops": ["ds", "mbconv3"], "kernels": [3, 5], "se_ratios": [0, 0.25], "skips": ["identity", "none"],
    "filter_multipliers": [0.5, 1.0], "layer_deltas": [0, 1], "stem_filters": 16, "stem_stride": 1,
    "head_filters": 128, "resolution": 32,
}


def test_a_short_spos_run_makes_sampled_paths_better_than_chance(data_root: Path, tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY)
    data = load_dataset("cifar10_subset", data_root=data_root, val_size=500, train_subset=2000, seed=0)
    torch.manual_seed(0)
    net = Supernet(space, num_classes=10, resolution=32)
    archs = [space.sample(100 + i) for i in range(4)]
    sd = scoring_data(data, bn_batches=4, bn_batch_size=64, images=500, batch_size=250)
    before = score(net, archs, sd)
    summary = train_supernet(net, data, epochs=3, batch_size=64, lr=0.2, rule="spos", seed=0, out=tmp_path)
    after = score(net, archs, sd)
    mean_before, mean_after = sum(before) / 4, sum(after) / 4
    assert mean_after > 0.14 and mean_after > mean_before + 0.04, (before, after)
    losses = [r["train_loss"] for r in summary["records"]]
    assert losses[-1] < losses[0]
    loaded, meta = load_supernet(tmp_path, space=space)  # the run's file scores the same
    assert meta["training"]["rule"] == "spos" and meta["data"]["train"] == 2000
    assert score(loaded, archs, sd) == after


def _ddp_worker(rank: int, world: int, port: int, rule: str, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = Supernet(SearchSpace.from_dict(TINY), num_classes=10, resolution=32, zero_init_classifier=False)
        model = DistributedDataParallel(net)  # no find_unused_parameters: every parameter gets a gradient
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        step = SupernetStep(net, rule=rule, num_random=1, seed=3)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
        for s in range(3):
            x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
            optimizer.zero_grad(set_to_none=True)
            step(model, x, y, s)
            optimizer.step()
        # parameters only: DDP syncs BN buffers from rank 0 at the start of a forward, so after the
        # last one each rank holds its own batches' statistics (re-estimated before scoring anyway)
        torch.save({k: v.detach().clone() for k, v in net.named_parameters()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rule", ["spos", "sandwich"])
def test_ddp_ranks_stay_identical_without_find_unused_parameters(tmp_path: Path, rule: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, rule, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)
    initial = Supernet(SearchSpace.from_dict(TINY), num_classes=10, resolution=32, zero_init_classifier=False).state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a if k.endswith("weight"))  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
