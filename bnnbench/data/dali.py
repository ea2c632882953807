"""NVIDIA DALI ImageNet pipeline (optional extra: ``pip install 'bnnbench[dali]'``).

Selected with the recipe key ``loader: dali``. Train: file reader over this epoch's order, JPEG decoding
(on the GPU when one is used, DALI's CPU operators otherwise), random resized crop to 224 with area in
[0.08, 1] and aspect ratio in [3/4, 4/3], random horizontal flip and ImageNet normalisation. Val: resize
the shorter side to 256, centre crop 224. Labels follow the sorted class-folder names, the same class
indices as torchvision's ImageFolder. Batches come NHWC in memory, as a channels_last NCHW tensor (the
layout the trainer's model uses: no layout change per step).

Order: the epoch's permutation is drawn from (seed, epoch), as for the other loaders, and each rank reads
its share of every global batch; the reader is given that file list, so resuming at step s starts reading
at the s-th batch (nothing is decoded and discarded) and the images come in the same order as in an
uninterrupted epoch. The random crops and flips of a resumed epoch are drawn afresh (DALI's random state
is not checkpointed).

Differences from the torchvision path (and from the ReCU/OvSW recipes): DALI's random_area cannot exceed 1,
so the 1.25 upper bound of the recipes becomes 1.0, and no PCA lighting is applied. The ReCU authors report
that their DALI loader is faster but gives lower accuracy than the PyTorch loader; published numbers come
from the PyTorch loader.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bnnbench.data.catalog import IMAGENET_MEAN, IMAGENET_STD
from bnnbench.errors import ConfigError


def _require():
    try:
        import nvidia.dali  # noqa: F401 - deferred: an optional dependency (the dali extra)
    except ImportError:
        raise ConfigError("loader: dali needs NVIDIA DALI: pip install 'bnnbench[dali]' "
                          "(nvidia-dali-cuda130, or the wheel matching your CUDA)") from None


def listing(root: Path) -> tuple[list[str], list[int]]:
    """(files, labels) of an ImageFolder root in torchvision's order (sorted classes, sorted files)."""
    from torchvision.datasets import ImageFolder  # deferred: start-up (torchvision datasets)
    samples = ImageFolder(str(root)).samples
    return [f for f, _ in samples], [c for _, c in samples]


def build_pipeline(files: list[str], labels: list[int], batch_size: int, *, train: bool, seed: int,
                   device_id: int | None, threads: int = 4, size: int = 224):
    """A DALI pipeline reading ``files`` in the given order, yielding (images float HWC normalised, labels)."""
    _require()
    from nvidia.dali import fn, pipeline_def, types  # deferred: an optional dependency (the dali extra)
    mean = [255 * m for m in IMAGENET_MEAN]
    std = [255 * s for s in IMAGENET_STD]
    decoder_device = "mixed" if device_id is not None else "cpu"

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed)
    def pipe():
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="Reader",
                                       pad_last_batch=False)
        images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
        if train:
            images = fn.random_resized_crop(images, size=size, random_area=[0.08, 1.0],
                                            random_aspect_ratio=[3 / 4, 4 / 3])
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.resize(images, resize_shorter=int(size * 256 / 224))
            mirror = 0
        images = fn.crop_mirror_normalize(images, crop=(size, size), mean=mean, std=std, mirror=mirror,
                                          dtype=types.FLOAT, output_layout="HWC")
        return images, label

    p = pipe()
    p.build()
    return p


class DaliLoader:
    """A :class:`~bnnbench.data.loaders.BatchLoader` over DALI pipelines: one per epoch (or resumed epoch)."""

    def __init__(self, root: Path, batch_size: int, *, train: bool, seed: int, device: torch.device,
                 workers: int = 4, shard: tuple[int, int] = (0, 1), size: int = 224):
        _require()
        self.files, self.labels = listing(Path(root))
        self.batch_size, self.train, self.seed, self.device, self.size = batch_size, train, seed, device, size
        self.device_id = (device.index or 0) if device.type == "cuda" else None
        self.threads, (self.rank, self.world) = max(1, workers), shard
        self.epoch = 0
        if train and len(self.files) < batch_size * self.world:
            raise ConfigError(f"{root}: {len(self.files)} images are fewer than one global batch "
                              f"({batch_size} x {self.world} processes)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """This rank's image indices for the epoch, in reading order."""
        n = len(self.files)
        if not self.train:
            return list(range(self.rank, n, self.world))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        used = n // (self.batch_size * self.world) * self.batch_size * self.world   # full global batches
        return perm[self.rank:used:self.world].tolist()

    def __len__(self) -> int:
        return -(-len(self.order()) // self.batch_size)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start: int):
        from nvidia.dali.plugin.pytorch import (  # deferred: an optional dependency (the dali extra)
            DALIGenericIterator,
            LastBatchPolicy,
        )
        idx = self.order()[start * self.batch_size:]
        if not idx:
            return
        pipe = build_pipeline([self.files[i] for i in idx], [self.labels[i] for i in idx], self.batch_size,
                              train=self.train, seed=(self.seed * 1_000_003 + self.epoch * 1_009 + start) % 2**31,
                              device_id=self.device_id, threads=self.threads, size=self.size)
        it = DALIGenericIterator([pipe], ["x", "y"], reader_name="Reader", auto_reset=False,
                                 last_batch_policy=LastBatchPolicy.PARTIAL)
        for batch in it:
            x = batch[0]["x"].to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory, NCHW view
            yield x, batch[0]["y"].squeeze(-1).long().to(self.device, non_blocking=True)
