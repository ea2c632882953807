"""NVIDIA DALI ImageNet pipeline (optional extra: ``pip install 'bnnbench[dali]'``).

Selected with the recipe key ``loader: dali``. Train: file reader with per-epoch shuffling, JPEG decoding
(on the GPU when one is used, DALI's CPU operators otherwise), random resized crop to 224 with area in
[0.08, 1] and aspect ratio in [3/4, 4/3], random horizontal flip and ImageNet normalisation. Val: resize
the shorter side to 256, centre crop 224. Labels follow the sorted class-folder names, the same class
indices as torchvision's ImageFolder.

Differences from the torchvision path (and from the ReCU/OvSW recipes): DALI's random_area cannot exceed 1,
so the 1.25 upper bound of the recipes becomes 1.0, and no PCA lighting is applied. The ReCU authors report
that their DALI loader is faster but gives lower accuracy than the PyTorch loader; published numbers come
from the PyTorch loader.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .data import IMAGENET_MEAN, IMAGENET_STD
from .errors import ConfigError


def _require():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise ConfigError("loader: dali needs NVIDIA DALI: pip install 'bnnbench[dali]' "
                          "(nvidia-dali-cuda130, or the wheel matching your CUDA)") from None


def build_pipeline(root: Path, batch_size: int, *, train: bool, seed: int, device_id: int | None,
                   threads: int = 4, shard: tuple[int, int] = (0, 1), size: int = 224, shuffle: bool | None = None):
    """A DALI pipeline yielding (images float CHW normalised, labels int) for one shard of ``root``."""
    _require()
    from nvidia.dali import fn, pipeline_def, types
    mean = [255 * m for m in IMAGENET_MEAN]
    std = [255 * s for s in IMAGENET_STD]
    decoder_device = "mixed" if device_id is not None else "cpu"
    shuffle = train if shuffle is None else shuffle

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed)
    def pipe():
        jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=shuffle, shard_id=shard[0],
                                        num_shards=shard[1], name="Reader", seed=seed, pad_last_batch=not train)
        images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
        if train:
            images = fn.random_resized_crop(images, size=size, random_area=[0.08, 1.0],
                                            random_aspect_ratio=[3 / 4, 4 / 3])
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.resize(images, resize_shorter=int(size * 256 / 224))
            mirror = 0
        images = fn.crop_mirror_normalize(images, crop=(size, size), mean=mean, std=std, mirror=mirror,
                                          dtype=types.FLOAT, output_layout="CHW")
        return images, labels

    p = pipe()
    p.build()
    return p


class DaliLoader:
    """Iterator over a DALI pipeline with the TensorLoader/FolderLoader interface."""

    def __init__(self, root: Path, batch_size: int, *, train: bool, seed: int, device: torch.device,
                 workers: int = 4, shard: tuple[int, int] = (0, 1)):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
        device_id = device.index or 0 if device.type == "cuda" else None
        self.device = device
        self.pipe = build_pipeline(root, batch_size, train=train, seed=seed, device_id=device_id,
                                   threads=max(1, workers), shard=shard)
        self.it = DALIGenericIterator([self.pipe], ["x", "y"], reader_name="Reader", auto_reset=True,
                                      last_batch_policy=LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL)
        n = self.pipe.epoch_size("Reader") // shard[1]
        self._len = n // batch_size if train else -(-n // batch_size)
        self.channels_last = False

    def set_epoch(self, epoch: int) -> None:  # DALI reshuffles itself every epoch
        pass

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start: int):
        for i, batch in enumerate(self.it):
            if i < start:
                continue
            x = batch[0]["x"].to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, batch[0]["y"].squeeze(-1).long().to(self.device, non_blocking=True)
