"""Datasets and loaders.

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
import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bnnbench.errors import DataError, did_you_mean

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
    from sklearn.datasets import load_digits
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
    from torchvision.datasets import CIFAR10, CIFAR100
    base = CIFAR100 if hundred else CIFAR10
    folder = base.base_folder
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]

    class LocalCopy(base):  # accepts copies whose md5s differ from the official archive
        def _check_integrity(self) -> bool:
            return present(Path(self.root))

        def _load_meta(self) -> None:
            import pickle
            with open(Path(self.root) / folder / self.meta["filename"], "rb") as f:
                meta = pickle.load(f, encoding="latin1")
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def present(r: Path) -> bool:
        return all((r / folder / f).is_file() for f in files)

    root = _cifar_root(root, folder)
    name = "cifar100" if hundred else "cifar10"
    expected = (f"{root}/{folder}/ holding {', '.join(files)} (the official 'python version' archive, "
                f"e.g. {base.url})")
    if not present(root):
        if not download:
            raise DataError(f"{name} not found under --data-root {root}: expected {expected}; "
                            f"download is disabled for this run")
        try:
            with _socket_timeout(30):
                base(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - turned into a message for people
            raise DataError(f"{name} not found under --data-root {root} and the download failed "
                            f"({type(exc).__name__}: {exc}). Point --data-root at a folder holding "
                            f"{expected}, or at the {folder} folder itself") from None
    try:
        train = LocalCopy(str(root), train=True, download=False)
        test = LocalCopy(str(root), train=False, download=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{name} under --data-root {root} could not be read ({type(exc).__name__}: {exc}); "
                        f"expected {expected}") from None

    def to_tensor(ds) -> tuple[Tensor, Tensor]:
        data = np.asarray(ds.data)
        if data.ndim != 4 or data.shape[1:] != (32, 32, 3):
            raise DataError(f"{name} under --data-root {root}: images have shape {data.shape[1:]}, "
                            f"expected (32, 32, 3)")
        return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    (tx, ty), (vx, vy) = to_tensor(train), to_tensor(test)
    return TensorData(tx, ty, vx, vy, 100 if hundred else 10, name)


def _mnist_family(root: Path, download: bool, *, cls_name: str) -> TensorData:
    import gzip
    import shutil

    import torchvision.datasets as tvd
    base = getattr(tvd, cls_name)
    raw = Path(root) / cls_name / "raw"
    for gz in raw.glob("*.gz") if raw.is_dir() else []:  # local .gz archives need no download
        if not gz.with_suffix("").exists():
            with gzip.open(gz, "rb") as src, open(gz.with_suffix(""), "wb") as dst:
                shutil.copyfileobj(src, dst)
    try:
        with _socket_timeout(30):
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


class _socket_timeout:
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
    """"tensor" (held in memory, :class:`TensorLoader`) or "folder" (an ImageFolder on disk)."""
    check_dataset_name(name, "recipe")
    return "folder" if name in FOLDER_DATASETS else "tensor"


class BatchLoader(Protocol):
    """What the trainer needs of a loader (:class:`TensorLoader`, :class:`FolderLoader`, ``DaliLoader``).

    Batches may come on any device and in any memory layout: the trainer moves them to its device
    (non-blocking) and to channels_last. The order depends only on (seed, epoch).
    """

    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]: ...


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


# --- tensor loader ---------------------------------------------------------------------------------------

def draw_augment(n: int, pad: int, flip: bool, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image crop offsets (y, x) in [0, 2 pad] and flip decisions, drawn on the CPU from ``gen``."""
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    fl = torch.rand(n, generator=gen) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return oy, ox, fl


def crop_flip(x: Tensor, pad: int, oy: Tensor, ox: Tensor, fl: Tensor | None) -> Tensor:
    """Random crop with ``pad`` zero padding and horizontal flip of a whole batch (N, C, H, W).

    ``oy``/``ox`` are each image's crop offsets into the padded image, ``fl`` its flip decision (None: no
    flipping), all on the batch's device: the crop is one gather there and nothing is copied from the host
    or read back (no synchronisation with the device).
    """
    n, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        idx_n = torch.arange(n, device=x.device)[:, None, None, None]
        idx_c = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[idx_n, idx_c, rows, cols]
    if fl is not None:
        x = torch.where(fl[:, None, None, None], x.flip(3), x)
    return x


class TensorLoader:
    """Batches of a uint8 image tensor: shuffle, augment and normalise on the device.

    On an accelerator the images live on it; the epoch's order and augmentation parameters are drawn on
    the host from a seeded generator and copied to the device once per epoch, so a batch issues no
    host-to-device copy and no synchronisation. Iteration order and augmentation depend only on
    (seed, epoch): call :meth:`set_epoch` before each epoch. ``shard=(rank, world)`` serves one rank's
    share of every batch for distributed training.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool, drop_last: bool,
                 mean, std, device: torch.device, seed: int = 0, crop_pad: int = 0, flip: bool = False,
                 channels_last: bool = False, shard: tuple[int, int] = (0, 1)):
        self.device = torch.device(device)
        keep_on_device = self.device.type != "cpu"
        self.x = x.to(self.device) if keep_on_device else x
        self.y = y.to(self.device) if keep_on_device else y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.seed, self.epoch = seed, 0
        self.crop_pad, self.flip = crop_pad, flip
        self.channels_last = channels_last
        self.rank, self.world = shard

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``start``, ``start + 1``, ... of the epoch (the same batches a full pass yields)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        augment = self.crop_pad > 0 or self.flip
        if augment:  # the whole epoch's parameters, copied to the device once
            oy, ox, fl = (t.to(self.device) for t in draw_augment(n, self.crop_pad, self.flip, gen))
        order_dev = order.to(self.x.device)
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size + self.rank, (i + 1) * self.batch_size, self.world)
            idx = order_dev[sl]
            xb = self.x[idx].to(self.device, non_blocking=True)
            yb = self.y[idx].to(self.device, non_blocking=True)
            if augment:
                xb = crop_flip(xb, self.crop_pad, oy[sl], ox[sl], fl[sl] if self.flip else None)
            xb = (xb.float() - self.mean) / self.std
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb


# --- ImageNet --------------------------------------------------------------------------------------------

class Lighting:
    """AlexNet-style PCA lighting noise on a [0, 1] tensor image (OvSW's effective tensor version)."""

    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __init__(self, alphastd: float = 0.1):
        self.alphastd = alphastd

    def __call__(self, img: Tensor) -> Tensor:
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = (self.EIGVEC * alpha * self.EIGVAL).sum(dim=1)
        return img + rgb.view(3, 1, 1)


def imagenet_loaders(root: Path, batch_size: int, eval_batch_size: int, workers: int, seed: int,
                     lighting: float = 0.1, scale=(0.08, 1.25), size: int = 224, shard=(0, 1),
                     augment: str = "imagenet", normalize: str = "imagenet"):
    """ImageFolder train/val loaders with the ReCU/OvSW augmentations (methods_spec section 4).

    ``augment``: "imagenet" (RandomResizedCrop + flip + lighting) or "none" (the validation transform for
    training too); ``normalize``: "imagenet" or "dataset" (the same ImageNet statistics: computing them over
    the folder is not done). Other values raise.
    """
    import torchvision.transforms as T
    if augment not in ("imagenet", "none"):
        raise DataError(f"augment = {augment!r} cannot be applied to an ImageFolder dataset; use 'imagenet' "
                        f"or 'none'")
    if normalize not in ("imagenet", "dataset"):
        raise DataError(f"normalize = {normalize!r} cannot be applied to an ImageFolder dataset; use "
                        f"'imagenet' (or 'dataset', which means the ImageNet statistics here)")
    from torchvision.datasets import ImageFolder
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"imagenet not found under --data-root {root}: expected {root}/train/<class>/*.JPEG "
                            f"and {root}/val/<class>/*.JPEG (torchvision ImageFolder layout)")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    val_tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm])
    train_tf = val_tf if augment == "none" else T.Compose([
        T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(), T.ToTensor(), Lighting(lighting), norm])
    train, val = ImageFolder(str(root / "train"), train_tf), ImageFolder(str(root / "val"), val_tf)
    if train.classes != val.classes:
        raise DataError(f"imagenet under {root}: train/ and val/ have different class folders")
    rank, world = shard
    return (FolderLoader(train, batch_size, shuffle=True, workers=workers, seed=seed, rank=rank, world=world),
            FolderLoader(val, eval_batch_size, shuffle=False, workers=workers, seed=seed, rank=rank, world=world),
            len(train.classes))


class FolderLoader:
    """torchvision DataLoader over an ImageFolder (a :class:`BatchLoader`; batches stay on the CPU, pinned
    on CUDA machines, and the trainer moves them).

    The order depends only on (seed, epoch) through a DistributedSampler (one replica unless sharded).
    """

    def __init__(self, dataset, batch_size: int, *, shuffle: bool, workers: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                                  num_workers=workers, pin_memory=torch.cuda.is_available(),
                                                  drop_last=shuffle, persistent_workers=workers > 0)
        self.num_samples = len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start: int):
        loader = self.loader
        if start:
            indices = list(iter(self.sampler))[start * self.loader.batch_size:]
            loader = torch.utils.data.DataLoader(self.loader.dataset, batch_size=self.loader.batch_size,
                                                 sampler=indices, num_workers=self.loader.num_workers,
                                                 pin_memory=torch.cuda.is_available(), drop_last=self.loader.drop_last)
        yield from loader
