"""Rebuilding a run from its :class:`~bnnbench.config.spec.RunSpec`: its data, loaders, method and model.

The one place that turns a spec into the objects a run trains or evaluates: the training :class:`Run`, a
finished run re-evaluated (:func:`trained_model`), a teacher, an export file. Nothing in the engine's own
lower modules imports it back.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bnnbench.config.spec import RunSpec
from bnnbench.data.catalog import NORMALIZATIONS, check_loader, is_folder_dataset, load_tensor_dataset, subset
from bnnbench.data.loaders import TensorLoader, imagenet_loaders
from bnnbench.engine import distributed as ddp
from bnnbench.errors import ConfigError, RunError
from bnnbench.plugins import ARCHITECTURES, METHODS, Method, build_model
from bnnbench.store import RunDir


def checked_data(spec: RunSpec, data_root: Path):
    """The run's in-memory dataset (subset applied), after checking the batch size against it."""
    st = spec.settings
    data = load_tensor_dataset(spec.dataset, data_root, download=spec.download)
    data = subset(data, st.train_subset, st.test_subset)
    if st.batch_size > len(data.train_y):
        raise ConfigError(f"batch_size = {st.batch_size} is larger than the {len(data.train_y)} training "
                          f"images of {data.name} (recipe {spec.recipe}); lower it")
    return data


def class_count(spec: RunSpec, data_root: Path) -> int:
    """How many classes the run's dataset has (an ImageFolder's: its train/ class folders)."""
    if is_folder_dataset(spec.dataset):
        return len([p for p in (Path(data_root) / "train").iterdir() if p.is_dir()])
    return checked_data(spec, data_root).num_classes


def input_normalization(spec: RunSpec, data) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) in [0, 1] scale the run normalises its in-memory images with."""
    norm = spec.settings.normalize
    return data.stats() if norm == "dataset" else NORMALIZATIONS[norm]


def run_model(spec: RunSpec, num_classes: int, run_name: str) -> tuple[Method, nn.Module]:
    """The run's method (its resolved hyperparameters) and its freshly built backbone."""
    arch = ARCHITECTURES.get(spec.backbone)
    method = METHODS.get(spec.method)(family=arch.family, overrides=dict(spec.method_hparams),
                                      source=f"run config of {run_name}")
    model = build_model(method, arch, num_classes, options=dict(spec.backbone_options), source=f"recipe {spec.recipe}")
    method.set_binarize(model, spec.settings.binarize)
    return method, model


def make_loaders(spec: RunSpec, device: torch.device, data_root: Path):
    """(train_loader, test_loader, num_classes) for the run's dataset and settings (this rank's share)."""
    st = spec.settings
    shard = (ddp.rank(), ddp.world_size() if ddp.active() else 1)
    if st.batch_size % shard[1]:
        raise ConfigError(f"batch_size = {st.batch_size} (the global batch) must be divisible by the "
                          f"{shard[1]} processes of this torchrun job")
    check_loader(st.loader, spec.dataset, f"recipe {spec.recipe}")
    if is_folder_dataset(spec.dataset):
        if st.loader == "dali":
            return _dali_loaders(spec, device, Path(data_root), shard)
        return imagenet_loaders(data_root, st.batch_size // shard[1], st.eval_batch_size, st.workers, spec.seed,
                                shard=shard, augment=st.augment, normalize=st.normalize)
    data = checked_data(spec, data_root)
    mean, std = input_normalization(spec, data)
    if st.augment == "imagenet":
        raise ConfigError(f"augment = 'imagenet' needs an ImageFolder dataset, not {data.name}")
    common = dict(mean=mean, std=std, device=device, seed=spec.seed, channels_last=True, shard=shard)
    train = TensorLoader(data.train_x, data.train_y, st.batch_size, shuffle=True, drop_last=st.compile,
                         crop_pad=4 if st.augment in ("cifar", "crop") else 0, flip=st.augment == "cifar", **common)
    test = TensorLoader(data.test_x, data.test_y, st.eval_batch_size, shuffle=False, drop_last=False, **common)
    return train, test, data.num_classes


def _dali_loaders(spec: RunSpec, device: torch.device, root: Path, shard: tuple[int, int]):
    from bnnbench.data.dali import DaliLoader  # deferred: an optional dependency (the dali extra)
    st = spec.settings
    per_rank = dict(seed=spec.seed, device=device, workers=st.workers, shard=shard)
    train = DaliLoader(root / "train", st.batch_size // shard[1], train=True, **per_rank)
    val = DaliLoader(root / "val", st.eval_batch_size, train=False, **per_rank)
    return train, val, len([p for p in (root / "train").iterdir() if p.is_dir()])


def on_device(batches, device: torch.device):
    """Batches of any loader on the training device, NHWC (a no-op for loaders that already deliver so)."""
    for x, y in batches:
        if x.device != device:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x.contiguous(memory_format=torch.channels_last), y


def trained_model(run_dir: Path, data_root: Path, device: torch.device | None = None, loaders: bool = True):
    """(spec, model in eval mode with the run's final weights, test loader) of a finished run; the loader is
    None when ``loaders`` is false (only the class count is read from the data)."""
    rd = RunDir(run_dir)
    spec = rd.read_spec()
    done = rd.read_result()
    if not done or done.get("status") != "done":
        raise RunError(f"{run_dir} is not a finished run (no result.json with status done)")
    if spec.hash != done.get("spec_hash", done.get("config_hash")):
        raise RunError(f"{rd.file('config.yaml')} does not describe the run its result.json is of (spec hash "
                       f"{spec.hash}, result {done.get('spec_hash')!r}): edited after the run? Restore it or rerun")
    state = rd.load_checkpoint()
    if state is None or state.get("epoch") != spec.settings.epochs - 1 or state.get("partial"):
        raise RunError(f"{run_dir}: no checkpoint of the final epoch {spec.settings.epochs} (checkpoint.pt; "
                       f"checkpoints are not committed: run_bench.py rebuild-weights restores it)")
    device = device or torch.device("cpu")
    if loaders:
        _, test, num_classes = make_loaders(spec, device, Path(data_root))
    else:
        test, num_classes = None, class_count(spec, Path(data_root))
    _, model = run_model(spec, num_classes, rd.name)
    model.load_state_dict(state["model"])
    return spec, model.to(device, memory_format=torch.channels_last).eval(), test  # the layout it trained in
