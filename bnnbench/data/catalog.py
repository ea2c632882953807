"""The dataset catalog: which datasets exist, their kind (in memory or an ImageFolder on disk), their
normalisation statistics, and loading the in-memory ones (``bnnbench/data/loaders.py`` serves batches).

Small datasets (the embedded digits, CIFAR-10/100, MNIST-family) are held in memory as one uint8 tensor
(N, C, H, W) and served by :class:`TensorLoader`, which shuffles with a per-epoch seeded generator and
augments whole batches as tensors (random crop with zero padding + horizontal flip, on the training
device), so loading never bounds training. ImageNet is an ``ImageFolder`` (``train/`` and ``val/``) read by
torchvision's DataLoader with the recipe's augmentations.

Every dataset is reached through :func:`load_dataset`; a missing or malformed dataset raises
:class:`~bnnbench.errors.DataError` naming ``--data-root`` and the expected layout.
"""
from __future__ import annotations

import functools
import gzip
import pickle
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bnnbench.errors import ConfigError, DataError, did_you_mean

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZATIONS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
                  "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass
class TensorData:
    """An in-memory dataset: uint8 images (N, C, H, W) and int64 labels."""
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    name: str

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std of the training images in [0, 1]."""
        x = self.train_x.float().div_(255)
        return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


# --- datasets --------------------------------------------------------------------------------------------

def _digits(root: Path, download: bool) -> TensorData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), upsampled to 3x32x32.

    Fixed split: a seed-0 permutation, the first 360 images (20%) are the test set.
    """
    from sklearn.datasets import load_digits  # deferred: start-up: scikit-learn loads only for the digits dataset
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0       # (N,1,8,8) in [0,1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360], perm[360:]
    return TensorData(x[train], y[train], x[test], y[test], 10, "digits")


def _cifar_root(root: Path, folder: str) -> Path:
    """Accept either the parent of ``cifar-10-batches-py`` or that folder itself."""
    return root.parent if root.name == folder else root


def _cifar(root: Path, download: bool, *, hundred: bool) -> TensorData:
    """CIFAR-10/100 in torchvision's "python version" layout (downloaded when allowed and missing)."""
    from torchvision.datasets import CIFAR10, CIFAR100  # deferred: start-up (torchvision datasets)
    base = CIFAR100 if hundred else CIFAR10
    folder = base.base_folder
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    root = _cifar_root(root, folder)
    name = "cifar100" if hundred else "cifar10"
    expected = (f"{root}/{folder}/ holding {', '.join(files)} (the official 'python version' archive, "
                f"e.g. {base.url})")
    if not all((root / folder / f).is_file() for f in files):
        if not download:
            raise DataError(f"{name} not found under --data-root {root}: expected {expected}; "
                            f"download is disabled for this run")
        try:
            with socket_timeout(30):
                base(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - turned into a message for people
            raise DataError(f"{name} not found under --data-root {root} and the download failed "
                            f"({type(exc).__name__}: {exc}). Point --data-root at a folder holding "
                            f"{expected}, or at the {folder} folder itself") from None
    local = _local_copy(base, folder, files)
    try:
        train, test = local(str(root), train=True, download=False), local(str(root), train=False, download=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{name} under --data-root {root} could not be read ({type(exc).__name__}: {exc}); "
                        f"expected {expected}") from None
    (tx, ty), (vx, vy) = (_hwc_to_tensors(ds, f"{name} under --data-root {root}") for ds in (train, test))
    return TensorData(tx, ty, vx, vy, 100 if hundred else 10, name)


def _local_copy(base: type, folder: str, files: list[str]) -> type:
    """torchvision's CIFAR class accepting copies whose md5s differ from the official archive (the files
    must be there; their content is checked when read)."""
    class LocalCopy(base):
        def _check_integrity(self) -> bool:
            return all((Path(self.root) / folder / f).is_file() for f in files)

        def _load_meta(self) -> None:
            with open(Path(self.root) / folder / self.meta["filename"], "rb") as f:
                meta = pickle.load(f, encoding="latin1")
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
    return LocalCopy


def _hwc_to_tensors(ds, what: str) -> tuple[Tensor, Tensor]:
    """(uint8 images N x 3 x 32 x 32, int64 labels) of a torchvision CIFAR dataset (N x 32 x 32 x 3)."""
    data = np.asarray(ds.data)
    if data.ndim != 4 or data.shape[1:] != (32, 32, 3):
        raise DataError(f"{what}: images have shape {data.shape[1:]}, expected (32, 32, 3)")
    return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)


def _mnist_family(root: Path, download: bool, *, cls_name: str) -> TensorData:

    import torchvision.datasets as tvd  # deferred: start-up (torchvision datasets)
    base = getattr(tvd, cls_name)
    raw = Path(root) / cls_name / "raw"
    for gz in raw.glob("*.gz") if raw.is_dir() else []:  # local .gz archives need no download
        if not gz.with_suffix("").exists():
            with gzip.open(gz, "rb") as src, open(gz.with_suffix(""), "wb") as dst:
                shutil.copyfileobj(src, dst)
    try:
        with socket_timeout(30):
            train = base(str(root), train=True, download=download)
            test = base(str(root), train=False, download=download)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{cls_name} not found under --data-root {root} ({type(exc).__name__}: {exc}); "
                        f"expected {root}/{cls_name}/raw/ holding the four idx .gz files "
                        f"(train-images-idx3-ubyte.gz, ...)") from None

    def prep(ds) -> tuple[Tensor, Tensor]:
        x = ds.data.unsqueeze(1)                          # (N,1,28,28) uint8
        x = F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()  # 3x32x32 for the CIFAR backbones
        return x, ds.targets.clone()

    (tx, ty), (vx, vy) = prep(train), prep(test)
    return TensorData(tx, ty, vx, vy, len(train.classes), cls_name.lower())


class socket_timeout:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.seconds)

    def __exit__(self, *exc):
        socket.setdefaulttimeout(self.old)


TENSOR_DATASETS = {
    "digits": _digits,
    "cifar10": lambda r, d: _cifar(r, d, hundred=False),
    "cifar100": lambda r, d: _cifar(r, d, hundred=True),
    "mnist": lambda r, d: _mnist_family(r, d, cls_name="MNIST"),
    "fashion_mnist": lambda r, d: _mnist_family(r, d, cls_name="FashionMNIST"),
    "kmnist": lambda r, d: _mnist_family(r, d, cls_name="KMNIST"),
}
#: ImageFolder datasets (``train/`` and ``val/`` class folders), read by torchvision or DALI
FOLDER_DATASETS = ("imagenet",)
DATASETS = sorted([*TENSOR_DATASETS, *FOLDER_DATASETS])


def dataset_kind(name: str) -> str:
    """"tensor" (held in memory, :class:`~bnnbench.data.loaders.TensorLoader`) or "folder" (an ImageFolder
    on disk)."""
    return "folder" if is_folder_dataset(name) else "tensor"


def is_folder_dataset(name: str) -> bool:
    """Whether ``name`` is an ImageFolder dataset on disk (read by torchvision or DALI), not held in memory."""
    check_dataset_name(name, "recipe")
    return name in FOLDER_DATASETS


def check_loader(loader: str, dataset: str, where: str) -> None:
    """``loader = 'dali'`` reads ImageFolder datasets only."""
    if loader == "dali" and not is_folder_dataset(dataset):
        raise ConfigError(f"{where}: loader = 'dali' is for ImageFolder datasets (imagenet), not {dataset}")


def check_dataset_name(name: str, source: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (from {source}){did_you_mean(name, DATASETS)}; "
                        f"allowed: {', '.join(DATASETS)}")


def load_tensor_dataset(name: str, root: Path, download: bool = True) -> TensorData:
    """Load (once per process: cached) an in-memory dataset."""
    check_dataset_name(name, "recipe")
    return _load_cached(name, str(Path(root).resolve()), download)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str, download: bool) -> TensorData:
    return TENSOR_DATASETS[name](Path(root), download)


def subset(data: TensorData, train: int | None, test: int | None) -> TensorData:
    """The first ``train`` / ``test`` images (datasets here are stored in a fixed shuffled order)."""
    if train is not None and train > len(data.train_y):
        raise DataError(f"train_subset = {train} is larger than the {len(data.train_y)} training images "
                        f"of {data.name}")
    if test is not None and test > len(data.test_y):
        raise DataError(f"test_subset = {test} is larger than the {len(data.test_y)} test images of {data.name}")
    return TensorData(data.train_x[:train], data.train_y[:train], data.test_x[:test], data.test_y[:test],
                      data.num_classes, data.name)
