"""Bad input to the training commands (`mnas train`, `mnas eval`, `mnas supernet train`): one line,
exit code 2, no traceback, before any training step, and nothing that existed is changed. Data that
disagrees with itself or with the model, values out of range, a supernet resume of a plain run,
architecture JSON nested without bound, run files that cannot be written, a full disk.
Real CLI in a subprocess (`python -m mnas`), real CIFAR-10 pixels, real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import mnas, one_line, snapshot
from mnas import zoo
from mnas.model import build_model

TINY = "stem_k3_s1_c8_nre,ds_r1_k3_s1_e1_c8,ir_r1_k3_s2_e3_c16,head_c32"


@pytest.fixture(scope="module")
def pixels(data_root: Path) -> np.ndarray:
    with np.load(data_root / "cifar10_subset10k_uint8.npz") as f:
        return np.asarray(f["x_train"][:200])


def _npz(folder: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "cifar10_uint8.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return folder


def _checkpoint(run: Path, num_classes: int = 10) -> Path:
    """A run folder with a real checkpoint of what `mnas train` writes (no optimiser state)."""
    arch = zoo.get("mnasnet_small").for_resolution(32)
    run.mkdir(parents=True)
    torch.save({"arch": arch.to_dict(), "num_classes": num_classes, "resolution": 32,
                "model": build_model(arch, num_classes=num_classes).state_dict(), "epoch": 1, "step": 10,
                "config": {"arch_name": "mnasnet_small", "data": "cifar10", "epochs": 1, "seed": 0,
                           "val_size": 10, "batch_size": 10}}, run / "checkpoint.pt")
    return run


# ---- data that disagrees, found before training ---------------------------------------------------
@pytest.mark.parametrize("case,needle", [
    ("one_class", "every training label is 1 (60 images), one class; classification needs at least 2"),
    ("gap", "the training labels go up to 2 but no training image has class 1"),
    ("unseen_test_class", "the test labels have class(es) 5, which no training image has"),
    ("96px", "the images are 96x96 but cifar10 is 32x32"),
    ("2px", "the images are 2x2, smaller than the 8x8 any network here takes"),
    ("test_size", "the training images are 32x32 but the test images 24x24"),
])
def test_train_refuses_data_that_disagrees(case, needle, tmp_path, pixels):
    x, x_test = pixels[:60], pixels[60:70]
    y, y_test = np.arange(60) % 3, np.arange(10) % 3
    if case == "one_class":
        y, y_test = np.ones(60, np.int64), np.ones(10, np.int64)
    elif case == "gap":
        y = np.arange(60) % 2 * 2
        y_test = np.zeros(10, np.int64)
    elif case == "unseen_test_class":
        y_test = np.full(10, 5)
    elif case == "96px":
        x, x_test = np.tile(x, (1, 3, 3, 1)), np.tile(x_test, (1, 3, 3, 1))
    elif case == "2px":
        x, x_test = x[:, :2, :2], x_test[:, :2, :2]
    elif case == "test_size":
        x_test = x_test[:, :24, :24]
    root = _npz(tmp_path / "data", np.ascontiguousarray(x), y, np.ascontiguousarray(x_test), y_test)
    line = one_line(mnas("train", TINY, "--data-root", root, "--out", tmp_path / "run", "--val-size", "6",
                         "--batch-size", "8", "--device", "cpu"))
    assert needle in line and "cifar10_uint8.npz" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_eval_refuses_data_with_other_classes_than_the_model(tmp_path, pixels):
    """The model has 10 outputs; data with 3 classes is refused, not scored."""
    run = _checkpoint(tmp_path / "run")
    root = _npz(tmp_path / "data", pixels[:60], np.arange(60) % 3, pixels[60:70], np.arange(10) % 3)
    line = one_line(mnas("eval", run, "--data-root", root, "--device", "cpu"))
    assert "has 10 classes but the data cifar10" in line and "has 3" in line


# ---- values out of range ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5"])
def test_eval_batch_size_must_be_positive(value, tmp_path):
    """0 once took the default silently, -5 was an internal error."""
    run = _checkpoint(tmp_path / "run")
    line = one_line(mnas("eval", run, "--batch-size", value, "--device", "cpu"))
    assert "'--batch-size'" in line and ("x>=1" in line or "greater than or equal to 1" in line)


def test_a_zero_evaluation_batch_is_refused_in_the_library_too(tmp_path):
    from mnas.errors import UserError
    from mnas.train.evaluate import evaluate_checkpoint

    with pytest.raises(UserError, match="--batch-size 0 must be a whole number of images, 1 or more"):
        evaluate_checkpoint(_checkpoint(tmp_path / "run"), batch_size=0)


@pytest.mark.parametrize("command", [["train", TINY], ["supernet", "train"]])
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seeds_outside_their_range_are_refused(command, seed, tmp_path):
    line = one_line(mnas(*command, "--seed", seed, "--out", tmp_path / "run"))
    assert f"--seed {seed} is out of range; use a whole number from 0 to 4294967295" in line
    assert not (tmp_path / "run").exists()


def test_supernet_resume_of_a_plain_training_run(tmp_path):
    run = _checkpoint(tmp_path / "run")
    before = snapshot(run)
    line = one_line(mnas("supernet", "train", "--resume", run))
    assert "is a `mnas train` run (one network), not a supernet run" in line and f"mnas train --resume {run}" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("where", ["file", "argument"])
def test_architecture_json_nested_without_bound(where, tmp_path):
    """100,000 levels in a file, 20,000 as an argument (an argument holds at most 128 KiB)."""
    text = '{"a":' * (100_000 if where == "file" else 20_000)
    arch = tmp_path / "deep.json"
    arch.write_text(text)
    line = one_line(mnas("train", arch if where == "file" else text, "--out", tmp_path / "run"))
    assert "architecture JSON nests lists and mappings more than 32 levels deep" in line
    assert not (tmp_path / "run").exists()


# ---- run files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("planted,needle", [  # a new run needs a new or empty folder: found before any file check
    ("metrics_folder", "is not empty (it holds metrics.jsonl)"),
    ("summary_link", "is not empty (it holds summary.json)"),
    ("checkpoint_link", "is not empty (it holds checkpoint.pt)"),
])
def test_run_files_that_cannot_be_written_are_found_before_training(planted, needle, tmp_path, data_root):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    if planted == "metrics_folder":
        (out / "metrics.jsonl").mkdir()
    elif planted == "summary_link":
        (out / "summary.json").symlink_to(victim)
    else:  # a dangling link (one to a file is refused as "already holds a run"): nothing may appear at its target
        (out / "checkpoint.pt").symlink_to(tmp_path / "elsewhere.pt")
    before = snapshot(tmp_path)
    line = one_line(mnas("train", TINY, "--data", "cifar10_subset", "--data-root", data_root, "--out", out,
                         "--train-subset", "100", "--val-size", "50", "--batch-size", "50", "--device", "cpu"))
    assert needle in line
    assert snapshot(tmp_path) == before and victim.read_text() == "precious"
    assert not (tmp_path / "elsewhere.pt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_one_line(tmp_path, data_root):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        line = one_line(mnas("train", TINY, "--data", "cifar10_subset", "--data-root", data_root, "--out", out,
                             "--train-subset", "100", "--val-size", "50", "--batch-size", "50", "--device", "cpu"))
    finally:
        out.chmod(0o755)
    assert "cannot be written" in line and not any(out.iterdir())


@pytest.mark.slow
def test_a_full_disk_during_training_keeps_the_last_checkpoint(tmp_path, data_root):
    """Epoch 1 trains normally; epoch 2 runs where files may grow to half a checkpoint only: its
    checkpoint cannot be written, the line names it and the resume command, the epoch-1
    checkpoint is intact, and the resumed run (space freed) finishes with both epochs logged."""
    out = tmp_path / "run"
    args = ["--data", "cifar10_subset", "--data-root", str(data_root), "--train-subset", "100", "--val-size", "50",
            "--batch-size", "50", "--device", "cpu", "--json"]
    first = mnas("train", TINY, "--out", out, "--epochs", "1", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = (out / "checkpoint.pt").read_bytes()
    full = mnas("train", "--resume", out, "--epochs", "2", "--json", limit_file_bytes=len(ckpt) // 2)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    notes, line = full.stderr.strip().splitlines()  # the resume note, then the one error line
    assert notes.startswith("resume: --epochs 2 (was 1)") and line.startswith("error: ")
    assert f"could not write {out / 'checkpoint.pt'} (File too large)" in line
    assert f"the last checkpoint {out / 'checkpoint.pt'} (step 2) was kept" in line
    assert f"continue with: mnas train --resume {out}" in line
    assert (out / "checkpoint.pt").read_bytes() == ckpt and not [p for p in out.iterdir() if ".tmp" in p.name]
    torch.load(out / "checkpoint.pt", weights_only=True)
    done = mnas("train", "--resume", out, "--epochs", "2", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_a_supernet_checkpoint_whose_config_does_not_validate_is_one_line(tmp_path):
    run = tmp_path / "sn"
    run.mkdir()
    torch.save({"supernet": {}, "model": {}, "num_classes": 10,
                "config": {"arch_name": "supernet:x", "supernet": {"space": [1, 2]}}}, run / "checkpoint.pt")
    before = snapshot(tmp_path)
    line = one_line(mnas("supernet", "train", "--resume", run))
    assert "records a config that does not validate (supernet.space" in line and "damaged" in line
    assert snapshot(tmp_path) == before
