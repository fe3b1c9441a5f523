"""Datasets, the held-out validation split and device-side batch augmentation.

MnasNet scores a candidate on images held out of the *training* set, so the test set is touched only
by final evaluation. Small datasets (CIFAR-10, Fashion-MNIST) live in memory as uint8 tensors and
are augmented on the training device a whole batch at a time (random crop with padding, horizontal
flip, normalisation), so a GPU is never starved by per-image Python work. ImageFolder trees use
torchvision transforms and DataLoader workers.

Where data is looked for: `data_root` (the CLI's `--data-root`), else `$MNAS_DATA`, else
`~/.cache/mnas/data`.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mnas.architecture import MIN_RESOLUTION, check_resolution
from mnas.errors import UserError
from mnas.run_options import DEFAULT_DATASET, DEFAULT_VAL_SIZE

# Debian's `dataset-fashion-mnist` package installs the idx files here (a documented system place).
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MEAN = (0.2860,)
FASHION_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS = ("cifar10", "cifar10_subset", "fashion_mnist", "imagefolder:PATH (or a folder path)")

CIFAR_HOWTO = (
    "get it with: python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', download=True)\" "
    "(needs internet), or copy cifar10_uint8.npz (keys x_train NHWC uint8, y_train, x_test, y_test) there, "
    "or pass --data-root / set MNAS_DATA to the folder that holds it"
)
FASHION_HOWTO = (
    "get it with: apt-get install dataset-fashion-mnist (installs /usr/share/datasets/fashion-mnist), or "
    "python -c \"import torchvision; torchvision.datasets.FashionMNIST('{root}', download=True)\", "
    "or pass --data-root / set MNAS_DATA to the folder that holds the *-idx?-ubyte(.gz) files"
)


def default_data_root(data_root: str | Path | None = None) -> Path:
    """`data_root`, else `$MNAS_DATA`, else `~/.cache/mnas/data` (never a machine-specific path)."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("MNAS_DATA")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/mnas/data").expanduser()


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


@dataclass
class ArraySplit:
    """An in-memory split: uint8 images NHWC and int64 labels (CPU tensors).

    Device copies are cached per device so repeated proxy runs do not copy the data again.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None = None  # positions in the source split (train or test)
    _on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(torch.device(device))
        if key == "cpu":
            return self.images, self.labels
        if key not in self._on_device:
            self._on_device[key] = (
                self.images.to(device, non_blocking=True),
                self.labels.to(device, non_blocking=True),
            )
        return self._on_device[key]


@dataclass
class FolderSplit:
    """A subset of an ImageFolder tree, read through torchvision transforms by DataLoader workers."""

    train_view: Any  # torchvision ImageFolder with training transforms
    eval_view: Any  # the same files with evaluation transforms
    indices: np.ndarray

    def __len__(self) -> int:
        return int(len(self.indices))

    @property
    def labels(self) -> torch.Tensor:
        targets = np.asarray(self.train_view.targets)
        return torch.from_numpy(targets[self.indices]).long()


Split = ArraySplit | FolderSplit


@dataclass
class DatasetSplits:
    """train / val (held out of train) / test, plus what a model and the loader need to know."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    resolution: int
    name: str
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    source: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "source": self.source,
        }


def stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `n` items with class proportions as in `labels` (largest-remainder rounding)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n = int(n)
    if n >= len(labels):
        return rng.permutation(len(labels))
    exact = counts * (n / len(labels))
    quota = np.floor(exact).astype(int)
    remainder = n - int(quota.sum())
    if remainder > 0:
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:remainder]] += 1
    picked = []
    for cls, q in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.choice(members, size=int(q), replace=False))
    out = np.concatenate(picked) if picked else np.zeros(0, dtype=int)
    return np.sort(out)


def split_indices(
    labels: np.ndarray, val_size: float | int, train_subset: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): a fixed seeded stratified validation split, then an optional
    stratified train subset drawn from what is left. The validation split does not depend on
    `train_subset`, so proxies of different sizes are scored on the same images."""
    n = len(labels)
    if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise UserError(f"val_size {val_size} must be a fraction in [0, 1) or a count of images")
    n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
    if n_val < 0 or n_val >= n:
        raise UserError(f"val_size {val_size} leaves no training images (train set has {n}); use a smaller one")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    val_idx = stratified_take(labels, n_val, rng) if n_val else np.zeros(0, dtype=int)
    mask = np.ones(n, dtype=bool)
    mask[val_idx] = False
    rest = np.flatnonzero(mask)
    if train_subset is not None:
        if train_subset <= 0:
            raise UserError(f"--train-subset {train_subset} must be a positive number of images")
        if train_subset > len(rest):
            raise UserError(
                f"--train-subset {train_subset} is larger than the {len(rest)} training images left "
                f"after the validation split; use at most {len(rest)}"
            )
        sub_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B5E7]))
        rest = rest[stratified_take(labels[rest], train_subset, sub_rng)]
    return rest, val_idx


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _missing(what: str, looked: list[Path], howto: str) -> UserError:
    places = ", ".join(str(p) for p in looked)
    return UserError(f"{what} not found; looked in: {places}; {howto}")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise ValueError(f"missing keys {missing} (has {sorted(f.files)})")
            arrays = tuple(np.asarray(f[k]) for k in keys)
    except Exception as exc:  # a truncated or damaged archive raises zlib, zipfile, OS and value errors
        first = " ".join(str(exc).split())[:160]
        raise UserError(
            f"{path} is corrupt or not a CIFAR npz ({type(exc).__name__}: {first}); expected keys x_train "
            "[N,32,32,3] uint8, y_train, x_test, y_test: delete it and copy or download it again"
        ) from None
    x_tr, y_tr, x_te, y_te = arrays
    _check_images(path, x_tr, y_tr, channels=3)
    _check_images(path, x_te, y_te, channels=3)
    return x_tr, y_tr, x_te, y_te


def _check_images(path: Path, x: np.ndarray, y: np.ndarray, channels: int, num_classes: int = 10) -> None:
    """Shape, dtype and label range, checked when the data is loaded (never mid-training)."""
    if x.ndim != 4 or x.shape[-1] != channels or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise UserError(
            f"{path} is corrupt: images {x.shape} {x.dtype} / labels {y.shape}; expected uint8 NHWC with "
            f"{channels} channels and one label per image: delete it and get it again"
        )
    check_labels(path, y, num_classes)


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[2]}"


def check_arrays(source: str | Path, arrays: tuple[np.ndarray, ...], name: str, size: int) -> int:
    """The class count of an in-memory dataset, once its splits agree with each other and with the
    size its networks expect (`size`: the dataset's own, or the one the caller asked for).

    Refused before any training: train and test images of different sizes, non-square images,
    images smaller than any network takes or of another size than `size` (a 96x96 file where
    CIFAR-10's 32x32 is expected would train a network built for 32 px); fewer than 2 classes in
    the training labels (all labels 1 would train "to 100%" on a 2-class model), a class number
    below the largest that no training image has (an output that is never trained), and test
    labels of classes the training labels lack. The class count is then max label + 1."""
    x_tr, y_tr, x_te, y_te = arrays
    if x_tr.shape[1:3] != x_te.shape[1:3]:
        raise UserError(f"{source}: the training images are {_size(x_tr.shape)} but the test images "
                        f"{_size(x_te.shape)}; both splits need images of one size")
    if x_tr.shape[1] != x_tr.shape[2]:
        raise UserError(f"{source}: the images are {_size(x_tr.shape)} (height x width); mnas trains on square "
                        "images: crop or resize them to one square size")
    side = int(x_tr.shape[1])
    if side < MIN_RESOLUTION:
        raise UserError(f"{source}: the images are {side}x{side}, smaller than the {MIN_RESOLUTION}x{MIN_RESOLUTION} "
                        "any network here takes; use larger images")
    if side != size:
        raise UserError(f"{source}: the images are {side}x{side} but {name} is {size}x{size} (the size its networks "
                        f"and recipes are built for); use the {size}x{size} {name} file")
    present, counts = np.unique(y_tr, return_counts=True)
    if len(present) < 2:
        raise UserError(f"{source}: every training label is {int(present[0])} ({int(counts[0])} images), one class; "
                        "classification needs at least 2: fix the labels")
    num_classes = int(present.max()) + 1
    absent = sorted(set(range(num_classes)) - {int(c) for c in present})
    if absent:
        shown = ", ".join(map(str, absent[:8])) + (", ..." if len(absent) > 8 else "")
        raise UserError(f"{source}: the training labels go up to {num_classes - 1} but no training image has class "
                        f"{shown}; an output with no image cannot be learned: number the classes 0..{len(present) - 1}")
    unseen = np.unique(y_te[y_te >= num_classes])
    if len(unseen):
        shown = ", ".join(str(int(c)) for c in unseen[:8])
        raise UserError(f"{source}: the test labels have class(es) {shown}, which no training image has (the training "
                        f"labels hold classes 0..{num_classes - 1}); train and test need the same classes")
    return num_classes


def _check_train_split(source: str | Path, labels: np.ndarray) -> None:
    """After the validation split and --train-subset: the images trained on still hold 2 classes."""
    present = np.unique(labels)
    if len(present) < 2:
        raise UserError(f"{source}: the {len(labels)} training image(s) left after the validation split and "
                        f"--train-subset are all of class {int(present[0])}; use a larger --train-subset")


def check_labels(path: Path | str, labels: np.ndarray, num_classes: int) -> None:
    """Labels must be whole numbers in 0..num_classes-1; the error counts the others and shows some."""
    y = np.asarray(labels)
    whole = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y))))
    if not whole:
        raise UserError(f"{path}: labels must be whole numbers (got dtype {y.dtype})")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        values = ", ".join(str(int(v)) for v in np.unique(y[bad])[:8])
        raise UserError(f"{path}: {int(bad.sum())} label(s) outside 0..{num_classes - 1} (values {values}); "
                        f"this dataset has {num_classes} classes: fix or replace the file")


class _NotData(pickle.UnpicklingError):
    """A pickle that names code, not data."""


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's pickled batches as data: numpy arrays and builtin containers only; any other
    global (the way a crafted pickle runs code) is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _NotData(f"it names {module}.{name}, which is not data")


def _read_cifar_batches(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's `cifar-10-batches-py` layout (pickled dicts of CHW-flattened rows)."""

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing from {folder}; delete the folder and download CIFAR-10 again")
        try:
            with open(path, "rb") as f:
                entry = _ArrayUnpickler(f, encoding="latin1").load()
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        except _NotData as exc:
            raise UserError(f"refusing to read {path}: {exc}; a CIFAR-10 batch holds only arrays and lists, "
                            "download CIFAR-10 again") from None
        except Exception as exc:  # a truncated pickle can raise almost anything
            raise UserError(f"{path} is corrupt ({type(exc).__name__}: {exc}); download CIFAR-10 again") from None
        return np.ascontiguousarray(data), labels

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_te, y_te = read("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_te, y_te


def _load_cifar(root: Path, prefer_subset: bool) -> tuple[tuple[np.ndarray, ...], Path]:
    names = ["cifar10_subset10k_uint8.npz"] if prefer_subset else ["cifar10_uint8.npz", "cifar10_subset10k_uint8.npz"]
    looked: list[Path] = []
    for base in (root, root / "cifar10"):
        for name in names:
            path = base / name
            looked.append(path)
            if path.is_file():
                return _read_npz(path), path
        if not prefer_subset:
            folder = base / "cifar-10-batches-py"
            looked.append(folder)
            if folder.is_dir():
                return _read_cifar_batches(folder), folder
    what = "CIFAR-10 subset (cifar10_subset10k_uint8.npz)" if prefer_subset else "CIFAR-10"
    raise _missing(what, looked, CIFAR_HOWTO.format(root=root))


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or ndim != expect_dims:
            raise ValueError(f"bad idx header (dtype 0x{dtype_code:02x}, {ndim} dims)")
        shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{data.size} bytes of data for shape {shape}")
        return data.reshape(shape).copy()
    except (OSError, ValueError, EOFError, struct.error, gzip.BadGzipFile) as exc:
        raise UserError(f"{path} is corrupt ({exc}); delete it and get Fashion-MNIST again") from None


def _load_fashion(root: Path) -> tuple[tuple[np.ndarray, ...], Path]:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    looked: list[Path] = []
    for folder in (root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw", root, SYSTEM_FASHION_MNIST):
        looked.append(folder)
        hits = [next((folder / (stem + ext) for ext in (".gz", "") if (folder / (stem + ext)).is_file()), None)
                for stem in stems]
        found = [h for h in hits if h is not None]
        if len(found) == len(stems):
            x_tr = _read_idx(found[0], 3)[..., None]
            y_tr = _read_idx(found[1], 1).astype(np.int64)
            x_te = _read_idx(found[2], 3)[..., None]
            y_te = _read_idx(found[3], 1).astype(np.int64)
            _check_images(found[0], x_tr, y_tr, channels=1)
            _check_images(found[2], x_te, y_te, channels=1)
            return (x_tr, y_tr, x_te, y_te), folder
    raise _missing("Fashion-MNIST (train-images-idx3-ubyte[.gz] and 3 more idx files)", looked, FASHION_HOWTO.format(root=root))


def _array_splits(
    arrays: tuple[np.ndarray, ...], val_size: float | int, train_subset: int | None, seed: int, *,
    source: str | Path, name: str, size: int,
) -> tuple[ArraySplit, ArraySplit, ArraySplit, int]:
    x_tr, y_tr, x_te, y_te = arrays
    y_tr = np.asarray(y_tr).astype(np.int64)  # labels were range-checked on load (check_labels)
    y_te = np.asarray(y_te).astype(np.int64)
    num_classes = check_arrays(source, (x_tr, y_tr, x_te, y_te), name, size)
    tr_idx, val_idx = split_indices(y_tr, val_size, train_subset, seed)
    _check_train_split(source, y_tr[tr_idx])
    images = torch.from_numpy(np.ascontiguousarray(x_tr))
    labels = torch.from_numpy(y_tr)
    tr_t, val_t = torch.from_numpy(tr_idx), torch.from_numpy(val_idx)
    train = ArraySplit(images[tr_t].contiguous(), labels[tr_t].contiguous(), tr_t)
    val = ArraySplit(images[val_t].contiguous(), labels[val_t].contiguous(), val_t)
    test = ArraySplit(torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te), torch.arange(len(y_te)))
    return train, val, test, num_classes


def _load_imagefolder(
    path: Path, val_size: float | int, train_subset: int | None, seed: int, resolution: int
) -> DatasetSplits:
    """ImageNet-style tree: PATH/train/<class>/*.jpg and PATH/val (or PATH/test)/<class>/*.jpg."""
    from torchvision import datasets, transforms  # lazy: torchvision only for image folders

    if not path.is_dir():
        raise UserError(f"image folder {path} does not exist; pass a folder with train/<class>/ images")
    train_dir = path / "train"
    test_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise UserError(
            f"{path} must hold train/<class>/*.jpg and val/<class>/*.jpg (or test/); "
            f"looked for {train_dir} and {path / 'val'} / {path / 'test'}"
        )
    resize = int(round(resolution / 0.875))
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(resolution), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    eval_tf = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(resolution), transforms.PILToTensor()]
    )
    try:
        train_view = datasets.ImageFolder(str(train_dir), transform=train_tf)
        eval_view = datasets.ImageFolder(str(train_dir), transform=eval_tf)
        test_view = datasets.ImageFolder(str(test_dir), transform=eval_tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"cannot read image folder {path}: {exc}") from None
    if test_view.class_to_idx != train_view.class_to_idx:
        raise UserError(f"{test_dir} has different classes from {train_dir}; both need the same class folders")
    if len(train_view.classes) < 2:
        raise UserError(f"{train_dir} holds {len(train_view.classes)} class folder(s); classification needs at least 2")
    _check_image_files([p for p, _ in train_view.samples] + [p for p, _ in test_view.samples])
    labels = np.asarray(train_view.targets)
    tr_idx, val_idx = split_indices(labels, val_size, train_subset, seed)
    _check_train_split(path, labels[tr_idx])
    return DatasetSplits(
        train=FolderSplit(train_view, eval_view, tr_idx),
        val=FolderSplit(train_view, eval_view, val_idx),
        test=FolderSplit(test_view, test_view, np.arange(len(test_view))),
        num_classes=len(train_view.classes),
        resolution=resolution,
        name=f"imagefolder:{path}",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        source=str(path),
    )


def _check_image_files(paths: list[str]) -> None:
    """Every image opens (its header is read, not the pixels) and is at least MIN_RESOLUTION on each
    side (a 2x2 image blown up to the input size holds nothing to learn), before any training."""
    from PIL import Image  # lazy: Pillow only for image folders

    for p in paths:
        try:
            with Image.open(p) as im:
                width, height = im.size
        except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, ValueError...
            raise UserError(f"image file {p} cannot be read ({type(exc).__name__}); remove or replace it") from None
        if min(width, height) < MIN_RESOLUTION:
            raise UserError(f"image file {p} is {width}x{height}, smaller than the {MIN_RESOLUTION}x{MIN_RESOLUTION} "
                            "any network here takes; remove it or use larger images")


def load_dataset(
    name: str = DEFAULT_DATASET,
    data_root: str | Path | None = None,
    val_size: float | int = DEFAULT_VAL_SIZE,
    train_subset: int | None = None,
    seed: int = 0,
    resolution: int | None = None,
) -> DatasetSplits:
    """Load a dataset with a fixed seeded validation split carved out of its training set.

    name: "cifar10" (the full file when present, else the 10k subset), "cifar10_subset",
    "fashion_mnist", or "imagefolder:PATH" / a folder path. `resolution`: the input size the caller
    expects. An ImageFolder is resized to it (default 224); an in-memory set's images must have it
    (default: the dataset's own, 32 or 28). Every split is checked to agree on class count and
    image size before it is returned (`check_arrays`; `check_fits` against a trained model).
    """
    key = name.strip().lower().replace("-", "_")
    root = default_data_root(data_root)
    if resolution is not None:
        check_resolution(resolution)
    if key in ("cifar10", "cifar", "cifar10_subset", "cifar10_subset10k"):
        arrays, source = _load_cifar(root, prefer_subset=key.startswith("cifar10_subset"))
        size = resolution or 32
        train, val, test, num_classes = _array_splits(arrays, val_size, train_subset, seed, source=source,
                                                      name="cifar10", size=size)
        return DatasetSplits(train, val, test, num_classes, size, "cifar10", CIFAR10_MEAN, CIFAR10_STD, str(source))
    if key in ("fashion_mnist", "fashionmnist", "fmnist"):
        arrays, source = _load_fashion(root)
        size = resolution or 28
        train, val, test, num_classes = _array_splits(arrays, val_size, train_subset, seed, source=source,
                                                      name="fashion_mnist", size=size)
        return DatasetSplits(train, val, test, num_classes, size, "fashion_mnist", FASHION_MEAN, FASHION_STD,
                             str(source))
    if key.startswith("imagefolder:") or Path(name).expanduser().is_dir():
        folder = Path(name.split(":", 1)[1] if key.startswith("imagefolder:") else name).expanduser()
        return _load_imagefolder(folder, val_size, train_subset, seed, resolution or 224)
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def check_fits(data: DatasetSplits, num_classes: int, resolution: int, model: str) -> None:
    """The data agrees with a model trained before (a checkpoint to resume or evaluate, a supernet):
    the same class count and input size, else one line before any work. A model's class count
    never adapts to the data, nor the data to the model."""
    where = f"{data.name} ({data.source})" if data.source and data.source not in data.name else data.name
    if int(num_classes) != data.num_classes:
        raise UserError(f"{model} has {num_classes} classes but the data {where} has {data.num_classes}; "
                        "use the dataset it was trained on")
    if int(resolution) != data.resolution:
        raise UserError(f"{model} takes {resolution}x{resolution} images but the data {where} is "
                        f"{data.resolution}x{data.resolution}; use the dataset it was trained on")


# --------------------------------------------------------------------------------------------
# Batches on the device
# --------------------------------------------------------------------------------------------


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (so batch k of epoch e always draws the same numbers)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def augment_batch(
    images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a uint8 NHWC batch, all at once."""
    n, h, w, _ = images.shape
    device = images.device
    if pad > 0:
        padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))
        off = torch.randint(0, 2 * pad + 1, (2, n), device=device, generator=generator)
        rows = off[0][:, None] + torch.arange(h, device=device)[None, :]
        cols = off[1][:, None] + torch.arange(w, device=device)[None, :]
        if flip:
            flip_mask = torch.rand(n, device=device, generator=generator) < 0.5
            cols = torch.where(flip_mask[:, None], cols.flip(1), cols)
        batch_idx = torch.arange(n, device=device)[:, None, None]
        return padded[batch_idx, rows[:, :, None], cols[:, None, :]]
    if flip:
        flip_mask = torch.rand(n, device=device, generator=generator) < 0.5
        return torch.where(flip_mask[:, None, None, None], images.flip(2), images)
    return images


class BatchLoader:
    """Yields (x float NCHW normalised, y int64) batches on `device` for one pass over a split.

    In-memory splits: indexing, crop/flip and normalisation run on the device in whole batches.
    Batch `k` of epoch `e` draws its randomness from a generator seeded with (seed, e, k), so a run
    can resume in the middle of an epoch and see exactly the same batches (`start_batch`).
    """

    def __init__(
        self,
        data: DatasetSplits,
        split: Split,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        epoch: int = 0,
        pad: int = 4,
        flip: bool = True,
        drop_last: bool | None = None,
        channels_last: bool = False,
        resolution: int | None = None,
        workers: int = 4,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.data = data
        self.split = split
        self.batch_size = int(batch_size)
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.epoch = epoch
        self.pad = pad if train else 0
        self.flip = flip and train
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.resolution = resolution
        self.workers = workers
        self.rank, self.world = shard  # DDP: every rank takes its part of each global batch
        if self.world > 1 and self.batch_size % self.world:
            raise UserError(f"batch size {self.batch_size} must be a multiple of the {self.world} processes")
        self.start_batch = 0
        n = len(split)
        if n == 0:
            raise UserError("a data split is empty; use a larger dataset or a smaller validation size")
        full, rest = divmod(n, self.batch_size)
        self.num_batches = full if (self.drop_last and full > 0) else full + (1 if rest else 0)
        channels = len(data.mean)
        shape = (1, channels, 1, 1)
        self._mean = torch.tensor(data.mean, dtype=torch.float32, device=self.device).view(shape) * 255.0
        self._inv_std = 1.0 / (torch.tensor(data.std, dtype=torch.float32, device=self.device).view(shape) * 255.0)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def _generator(self, *parts: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(mix_seed(self.seed, *parts))
        return g

    def _finish(self, x_nhwc_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (3 channels), optionally channels_last and resized."""
        x = x_nhwc_uint8.permute(0, 3, 1, 2).float()  # a channels_last view of an NHWC tensor
        x = (x - self._mean) * self._inv_std
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resolution and self.resolution != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.split, FolderSplit):
            yield from self._iter_folder()
            return
        images, labels = self.split.to(self.device)
        n = len(self.split)
        if self.train:
            order = torch.randperm(n, device=self.device, generator=self._generator(self.epoch, -1))
        else:
            order = None
        for k in range(self.start_batch, self.num_batches):
            lo, hi = k * self.batch_size, min(n, (k + 1) * self.batch_size)
            if order is None:
                xb, yb = images[lo:hi], labels[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = images.index_select(0, idx), labels.index_select(0, idx)
            if self.train and (self.pad or self.flip):
                xb = augment_batch(xb, self.pad, self.flip, self._generator(self.epoch, k))
            if self.world > 1:  # the same global batch as one process, this rank's share of it
                xb, yb = xb[self.rank :: self.world], yb[self.rank :: self.world]
            yield self._finish(xb), yb

    def _iter_folder(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        split = self.split
        assert isinstance(split, FolderSplit)
        view = split.train_view if self.train else split.eval_view
        indices = split.indices
        if self.train:
            rng = np.random.default_rng(mix_seed(self.seed, self.epoch, -1))
            indices = indices[rng.permutation(len(indices))]
        indices = indices[self.start_batch * self.batch_size :]
        batch_size = self.batch_size
        if self.world > 1:  # this rank's share of every global batch, in order
            full = len(indices) // batch_size * batch_size if self.drop_last else len(indices)
            indices = np.concatenate([indices[i : i + batch_size][self.rank :: self.world] for i in range(0, full, batch_size)]
                                     or [indices[:0]])
            batch_size //= self.world
        torch_gen = torch.Generator()
        torch_gen.manual_seed(mix_seed(self.seed, self.epoch, self.start_batch))
        loader = DataLoader(
            Subset(view, indices.tolist()),
            batch_size=batch_size,
            shuffle=False,
            drop_last=self.drop_last,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch_gen,
            persistent_workers=False,
        )
        for xb, yb in loader:  # xb: uint8 NCHW from PILToTensor
            xb = xb.to(self.device, non_blocking=True).permute(0, 2, 3, 1)
            yield self._finish(xb), yb.to(self.device, non_blocking=True)
