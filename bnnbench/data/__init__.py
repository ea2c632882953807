"""Data: the dataset catalog and the loaders that serve batches to the engine.

* :mod:`~bnnbench.data.catalog`: dataset names and kinds (in memory / ImageFolder), normalisation
  statistics, loading the in-memory datasets (digits, CIFAR-10/100, the MNIST family), subsets;
* :mod:`~bnnbench.data.loaders`: :class:`TensorLoader` (augmentation on whole tensors on the training
  device), the torchvision ImageFolder loaders, the :class:`BatchLoader` protocol;
* :mod:`~bnnbench.data.dali`: NVIDIA DALI for ImageFolder datasets (optional extra; imported on use);
* :mod:`~bnnbench.data.corruptions`: the 15 common corruptions (CIFAR-10-C / ImageNet-C parameters).

Layering: imports only the leaves (errors); the engine, config and tools read it.
"""
from bnnbench.data.catalog import (
    DATASETS,
    FOLDER_DATASETS,
    NORMALIZATIONS,
    TENSOR_DATASETS,
    TensorData,
    check_dataset_name,
    check_loader,
    dataset_kind,
    is_folder_dataset,
    load_tensor_dataset,
    socket_timeout,
    subset,
)
from bnnbench.data.loaders import BatchLoader, FolderLoader, TensorLoader, imagenet_loaders

__all__ = ["DATASETS", "FOLDER_DATASETS", "NORMALIZATIONS", "TENSOR_DATASETS", "BatchLoader", "FolderLoader",
           "TensorData", "TensorLoader", "check_dataset_name", "check_loader", "dataset_kind", "imagenet_loaders",
           "is_folder_dataset", "load_tensor_dataset", "socket_timeout", "subset"]
