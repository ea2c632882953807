"""Batch loaders: :class:`TensorLoader` (in-memory datasets, augmentation on whole tensors on the training
device) and :class:`FolderLoader` / :func:`imagenet_loaders` (ImageFolder datasets through torchvision);
``bnnbench/data/dali.py`` is the DALI path. Every loader serves batches in an order that depends only on
(seed, epoch), so a resumed run sees the same data.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from bnnbench.data.catalog import IMAGENET_MEAN, IMAGENET_STD
from bnnbench.errors import DataError


class BatchLoader(Protocol):
    """What the trainer needs of a loader (:class:`TensorLoader`, :class:`FolderLoader`, ``DaliLoader``).

    Batches may come on any device and in any memory layout: the trainer moves them to its device
    (non-blocking) and to channels_last. The order depends only on (seed, epoch).
    """

    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]: ...



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
    """ImageFolder train/val loaders with the ReCU/OvSW augmentations (the ImageNet recipes'
``augment: imagenet``).

    ``augment``: "imagenet" (RandomResizedCrop + flip + lighting) or "none" (the validation transform for
    training too); ``normalize``: "imagenet" or "dataset" (the same ImageNet statistics: computing them over
    the folder is not done). Other values raise.
    """
    import torchvision.transforms as T  # deferred: start-up: torchvision loads only for a torchvision teacher
    if augment not in ("imagenet", "none"):
        raise DataError(f"augment = {augment!r} cannot be applied to an ImageFolder dataset; use 'imagenet' "
                        f"or 'none'")
    if normalize not in ("imagenet", "dataset"):
        raise DataError(f"normalize = {normalize!r} cannot be applied to an ImageFolder dataset; use "
                        f"'imagenet' (or 'dataset', which means the ImageNet statistics here)")
    from torchvision.datasets import ImageFolder  # deferred: start-up (torchvision datasets)
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


def folder_test_images(root: Path, n: int | None, size: int = 224) -> tuple[Tensor, Tensor]:
    """``n`` images of ``root/val`` (all when None), evenly spaced over the ImageFolder's class-sorted order so
    that every class is represented, after the evaluation's resize and centre crop: uint8 (N, 3, size, size)
    and labels (the robustness track corrupts them before normalising)."""
    import torchvision.transforms as T  # deferred: start-up (torchvision transforms)
    from torchvision.datasets import ImageFolder  # deferred: start-up (torchvision datasets)
    if not (Path(root) / "val").is_dir():
        raise DataError(f"no val/ folder under --data-root {root}: expected {root}/val/<class>/*.JPEG")
    ds = ImageFolder(str(Path(root) / "val"), T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size),
                                                         T.PILToTensor()]))
    total = len(ds)
    n = total if n is None else min(n, total)
    picks = torch.linspace(0, total - 1, n).round().long().tolist() if n < total else range(total)
    xs, ys = zip(*(ds[i] for i in picks))
    return torch.stack(xs), torch.tensor(ys)


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
