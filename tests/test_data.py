"""Datasets: real CIFAR-10 from the shared folder, splits, readers, errors, device-side batches."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mnas.data import BatchLoader, load_dataset, split_indices, stratified_take
from mnas.errors import UserError


@pytest.fixture(scope="module")
def subset(data_root):
    return load_dataset("cifar10_subset", data_root=data_root, val_size=0.1, seed=0)


@pytest.fixture(scope="module")
def raw_subset(data_root):
    with np.load(data_root / "cifar10_subset10k_uint8.npz") as f:
        return {k: f[k] for k in f.files}


def test_validation_split_sizes_disjoint_stratified(subset):
    assert (len(subset.train), len(subset.val), len(subset.test)) == (9000, 1000, 2000)
    assert subset.num_classes == 10 and subset.resolution == 32
    tr, va = set(subset.train.indices.tolist()), set(subset.val.indices.tolist())
    assert not tr & va and len(tr | va) == 10000
    # the subset file holds 1000 images per class, so a stratified 10% is 100 of each
    assert torch.bincount(subset.val.labels, minlength=10).tolist() == [100] * 10
    assert subset.train.images.dtype == torch.uint8 and subset.train.images.shape[1:] == (32, 32, 3)


def test_split_is_seeded_and_independent_of_train_subset(subset, data_root):
    again = load_dataset("cifar10_subset", data_root=data_root, seed=0)
    assert torch.equal(again.val.indices, subset.val.indices)
    small = load_dataset("cifar10_subset", data_root=data_root, seed=0, train_subset=1000)
    assert torch.equal(small.val.indices, subset.val.indices)  # same held-out images for every proxy size
    assert len(small.train) == 1000
    assert torch.bincount(small.train.labels, minlength=10).tolist() == [100] * 10
    assert set(small.train.indices.tolist()) <= set(subset.train.indices.tolist())
    other = load_dataset("cifar10_subset", data_root=data_root, seed=1)
    assert not torch.equal(other.val.indices, subset.val.indices)


def test_images_and_labels_match_the_file(subset, raw_subset):
    i = int(subset.val.indices[3])
    assert np.array_equal(subset.val.images[3].numpy(), raw_subset["x_train"][i])
    assert int(subset.val.labels[3]) == int(raw_subset["y_train"][i])


def test_stratified_take_rounding():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_take(labels, 11, np.random.default_rng(0))
    assert len(idx) == 11 and len(set(idx.tolist())) == 11
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() in ([6, 3, 2], [5, 4, 2], [6, 3, 2])


def test_split_errors():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(UserError, match="train-subset"):
        split_indices(labels, 0.1, 500, 0)
    with pytest.raises(UserError, match="val_size"):
        split_indices(labels, 1.5, None, 0)
    tr, va = split_indices(labels, 20, None, 0)
    assert len(va) == 20 and len(tr) == 80


@pytest.mark.slow
def test_full_file_is_preferred_and_env_var_is_used(monkeypatch, data_root):
    monkeypatch.setenv("MNAS_DATA", str(data_root))
    full = load_dataset("cifar10", val_size=5000)
    assert full.source.endswith("cifar10_uint8.npz")
    assert (len(full.train), len(full.val), len(full.test)) == (45000, 5000, 10000)


def test_missing_data_names_every_place_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MNAS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UserError) as err:
        load_dataset("cifar10")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / "cifar10_uint8.npz") in msg
    assert "cifar-10-batches-py" in msg and "download" in msg and "MNAS_DATA" in msg
    with pytest.raises(UserError, match="fashion-mnist"):
        load_dataset("fashion_mnist", data_root=tmp_path)
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet42", data_root=tmp_path)


def test_corrupt_npz_is_named(tmp_path):
    bad = tmp_path / "cifar10_uint8.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(UserError, match="cifar10_uint8.npz is corrupt"):
        load_dataset("cifar10", data_root=tmp_path)
    np.savez(bad, x_train=np.zeros((4, 32, 32), np.uint8), y_train=np.zeros(4),
             x_test=np.zeros((1, 32, 32, 3), np.uint8), y_test=np.zeros(1))
    with pytest.raises(UserError, match="corrupt"):
        load_dataset("cifar10", data_root=tmp_path)


def test_torchvision_batches_folder(tmp_path, raw_subset):
    """The layout torchvision downloads: pickled dicts with CHW-flattened rows."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = raw_subset["x_train"][:500], raw_subset["y_train"][:500]
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for i in range(5):
        sl = slice(i * 100, (i + 1) * 100)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": rows[sl], "labels": y[sl].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rows[:50], "labels": y[:50].tolist()}, f)
    ds = load_dataset("cifar10", data_root=tmp_path, val_size=100)
    assert ds.source.endswith("cifar-10-batches-py") and len(ds.train) == 400 and len(ds.test) == 50
    j = int(ds.train.indices[0])
    assert np.array_equal(ds.train.images[0].numpy(), x[j])
    (folder / "test_batch").write_bytes(b"\x80\x04truncated")
    with pytest.raises(UserError, match="test_batch is corrupt"):
        load_dataset("cifar10", data_root=tmp_path)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path, raw_subset):
    """Real pixels (CIFAR, grey, 28x28) in Fashion-MNIST's idx.gz layout."""
    grey = raw_subset["x_train"][:300, 2:30, 2:30].mean(-1).astype(np.uint8)
    labels = raw_subset["y_train"][:300]
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte.gz", grey[:200])
    _write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:200])
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", grey[200:])
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[200:])
    ds = load_dataset("fashion_mnist", data_root=tmp_path, val_size=20)
    assert ds.resolution == 28 and len(ds.train) == 180 and len(ds.test) == 100
    x, y = next(iter(BatchLoader(ds, ds.train, 16, train=True)))
    assert x.shape == (16, 3, 28, 28) and y.shape == (16,)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x64abc"))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_dataset("fashion_mnist", data_root=tmp_path)


def test_batches_are_augmented_on_device_and_reproducible(subset):
    data = subset
    a = BatchLoader(data, data.train, 64, train=True, seed=3, epoch=2)
    b = BatchLoader(data, data.train, 64, train=True, seed=3, epoch=2)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert xa.shape == (64, 3, 32, 32) and xa.dtype == torch.float32
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = next(iter(BatchLoader(data, data.train, 64, train=True, seed=3, epoch=3)))
    assert not torch.equal(xa, xc)
    # resuming at batch k yields exactly the tail of a full pass
    full = list(BatchLoader(data, data.train, 1000, train=True, seed=3, epoch=2))
    tail_loader = BatchLoader(data, data.train, 1000, train=True, seed=3, epoch=2)
    tail_loader.start_batch = 7
    tail = list(tail_loader)
    assert len(tail) == len(full) - 7 and torch.equal(tail[0][0], full[7][0]) and torch.equal(tail[-1][1], full[-1][1])


def test_eval_batches_are_plain_and_normalised(subset):
    loader = BatchLoader(subset, subset.val, 1000, train=False)
    assert len(loader) == 1
    x, y = next(iter(loader))
    assert torch.equal(y, subset.val.labels)
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
    raw = subset.val.images[:2].permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(subset.mean).view(1, 3, 1, 1)
    std = torch.tensor(subset.std).view(1, 3, 1, 1)
    assert torch.allclose(x[:2], (raw - mean) / std, atol=1e-5)


def test_crop_and_flip_move_pixels_only(subset):
    """A crop with padding shifts the image (zeros enter at the border); a flip mirrors it."""
    from mnas.data import augment_batch

    img = subset.train.images[:256]
    g = torch.Generator().manual_seed(0)
    out = augment_batch(img, 4, True, g)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert not torch.equal(out, img)
    flipped = augment_batch(img, 0, True, torch.Generator().manual_seed(1))
    same = (flipped == img).flatten(1).all(1)
    mirrored = (flipped == img.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 50 < int(mirrored.sum()) < 206


def test_image_folder(tmp_path, raw_subset):
    from PIL import Image

    for split, n in (("train", 12), ("val", 4)):
        for cls in ("cat", "dog"):
            d = tmp_path / "tree" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(raw_subset["x_train"][i + (100 if cls == "dog" else 0)]).save(d / f"{i}.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'tree'}", val_size=4, resolution=32)
    assert ds.num_classes == 2 and len(ds.train) == 20 and len(ds.val) == 4 and len(ds.test) == 8
    loader = BatchLoader(ds, ds.train, 8, train=True, workers=0)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    with pytest.raises(UserError, match="train/<class>"):
        load_dataset(f"imagefolder:{tmp_path}")


# ---- the data agrees with itself and with the model (issue #28, item 6) ----------------------------
def _npz(folder: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "cifar10_uint8.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return folder


@pytest.mark.parametrize("change,needle", [
    ({"y_train": np.ones(60, np.int64)}, "every training label is 1 (60 images), one class"),
    ({"y_train": np.arange(60) % 2 * 2}, "no training image has class 1"),
    ({"y_test": np.full(10, 7)}, "the test labels have class(es) 7, which no training image has"),
    ({"size": 96}, "the images are 96x96 but cifar10 is 32x32"),
    ({"size": 2}, "the images are 2x2, smaller than the 8x8"),
    ({"test_size": 28}, "the training images are 32x32 but the test images 28x28"),
])
def test_in_memory_data_must_agree_before_training(change, needle, tmp_path, raw_subset):
    """Real CIFAR-10 pixels (cropped or tiled to the size under test) with one thing wrong each."""
    size, test_size = change.get("size", 32), change.get("test_size", change.get("size", 32))

    def images(n: int, side: int) -> np.ndarray:
        x = raw_subset["x_train"][:n]
        return np.ascontiguousarray(np.tile(x, (1, 3, 3, 1))[:, :side, :side] if side > 32 else x[:, :side, :side])

    y_train = change.get("y_train", np.arange(60) % 3)
    y_test = change.get("y_test", np.arange(10) % 3)
    root = _npz(tmp_path, images(60, size), y_train, images(10, test_size), y_test)
    with pytest.raises(UserError) as exc:
        load_dataset("cifar10", data_root=root, val_size=6)
    assert needle in str(exc.value) and "cifar10_uint8.npz" in str(exc.value)


def test_a_size_the_caller_asks_for_is_accepted(tmp_path, raw_subset):
    """96x96 images load when 96 is the resolution asked for (and say so), and only then."""
    x = np.ascontiguousarray(np.tile(raw_subset["x_train"][:40], (1, 3, 3, 1)))
    root = _npz(tmp_path, x, np.arange(40) % 4, x[:8], np.arange(8) % 4)
    ds = load_dataset("cifar10", data_root=root, val_size=8, resolution=96)
    assert ds.resolution == 96 and ds.num_classes == 4
    x_b, _ = next(iter(BatchLoader(ds, ds.train, 8, train=True)))
    assert x_b.shape == (8, 3, 96, 96)
    with pytest.raises(UserError, match="resolution must lie in 8..1024"):
        load_dataset("cifar10", data_root=root, resolution=4)


def test_a_training_split_of_one_class_is_refused(tmp_path, raw_subset):
    root = _npz(tmp_path, raw_subset["x_train"][:60], np.r_[np.zeros(59, np.int64), 1], raw_subset["x_train"][:4],
                np.zeros(4, np.int64))
    with pytest.raises(UserError, match="are all of class 0; use a larger --train-subset"):
        load_dataset("cifar10", data_root=root, val_size=6, train_subset=5)


def test_image_folder_images_too_small_are_refused(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(d / f"{i}.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "train" / "b" / "tiny.png")
    with pytest.raises(UserError, match=r"tiny.png is 2x2, smaller than the 8x8"):
        load_dataset(f"imagefolder:{tmp_path}", val_size=2, resolution=32)


def test_data_and_a_trained_model_must_agree(subset):
    from mnas.data import check_fits

    check_fits(subset, 10, 32, "the model m.pt")
    with pytest.raises(UserError, match=r"the model m.pt has 2 classes but the data cifar10 .* has 10"):
        check_fits(subset, 2, 32, "the model m.pt")
    with pytest.raises(UserError, match="the model m.pt takes 224x224 images but the data .* is 32x32"):
        check_fits(subset, 10, 224, "the model m.pt")
