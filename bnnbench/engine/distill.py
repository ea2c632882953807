"""Knowledge distillation from a frozen full-precision teacher (the two-stage track,
README "Two-stage training and distillation").

Loss, with the recipe's ``distill_weight`` w and ``distill_temperature`` T::

    L = (1 - w) * CE(s, y) + w * T^2 * softCE(s / T, softmax(t / T)),   softCE(a, p) = -sum_k p_k log softmax(a)_k

w = 1, T = 1 is ReActNet's "distribution loss" (the student matches the teacher's softmax, no labels), which
the ReCU two-stage code uses; the T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
timm's ``SoftTargetCrossEntropy`` is the same soft cross-entropy for given target probabilities, but taking
timm as a dependency for these three lines is not worth it, and its distillation task wraps its own training
loop, which the trainer here does not use.

The teacher is a finished full-precision run of the suite (a recipe's ``teacher`` section: the same
backbone and method with ``binarize: none``, trained first as its own run), a torchvision ImageNet model
(``teacher: {torchvision: resnet34}``) when its weights are in torch's hub cache, or a timm model
(``teacher: {timm: resnet34.a1_in1k}``; the optional extra ``bnnbench[timm]``) when its weights are in the
Hugging Face cache (or, for timm models published by URL, torch's hub cache). Nothing is downloaded for a
timm teacher: a missing file is an error that says where to put it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.config.settings import pretrained_teacher
from bnnbench.data.catalog import socket_timeout
from bnnbench.engine.rebuild import trained_model
from bnnbench.errors import ConfigError
from bnnbench.store import finished_dependency


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over the batch of -sum_k softmax(teacher / T)_k log softmax(student / T)_k (in float32)."""
    p = F.softmax(teacher.float() / temperature, dim=1)
    return -(p * F.log_softmax(student.float() / temperature, dim=1)).sum(dim=1).mean()


class DistillationLoss(nn.Module):
    """``(1 - w) base(out, y) + w T^2 softCE(out / T, teacher(x) / T)``; called with the batch ``x`` too."""

    needs_input = True

    def __init__(self, base: nn.Module, teacher: nn.Module, weight: float, temperature: float):
        super().__init__()
        self.base, self.weight, self.temperature = base, float(weight), float(temperature)
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)  # not a submodule: never saved or trained

    def forward(self, out: Tensor, y: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            t = self.teacher(x)
        soft = self.temperature ** 2 * soft_cross_entropy(out, t, self.temperature)
        if self.weight >= 1.0:
            return soft
        return (1.0 - self.weight) * self.base(out, y) + self.weight * soft


def torchvision_teacher(name: str, num_classes: int) -> nn.Module:
    """torchvision's ImageNet ``name`` (e.g. resnet34) with its default pretrained weights from the hub cache."""
    import torchvision  # deferred: start-up: torchvision loads only for a torchvision teacher
    if num_classes != 1000:
        raise ConfigError(f"teacher torchvision:{name} has 1000 ImageNet classes; this dataset has {num_classes}")
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ConfigError(f"teacher torchvision:{name}: no such torchvision model with pretrained weights") from None
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        with socket_timeout(30):
            state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - no network, or a damaged file
        raise ConfigError(f"teacher torchvision:{name}: its weights are not on disk ({cache}) and could not be "
                          f"downloaded ({type(exc).__name__}); copy {Path(weights.url).name} there, or train a "
                          f"full-precision teacher run (recipe section teacher: {{train: ...}})") from None
    model = torchvision.models.get_model(name)
    model.load_state_dict(state)
    return model


def load_teacher(ref: dict, runs_dir: Path, data_root: Path, device: torch.device, num_classes: int) -> nn.Module:
    """The frozen teacher a run's spec names (``{"run", "name"}`` of a finished run, ``{"torchvision"}`` or
    ``{"timm"}``)."""
    pretrained = pretrained_teacher(ref)
    if pretrained:
        source, name = pretrained
        model = {"torchvision": torchvision_teacher, "timm": timm_teacher}[source](name, num_classes)
    else:
        d = finished_dependency(runs_dir, ref, "teacher")
        _, model, _ = trained_model(d, data_root, device)
    return model.to(device, memory_format=torch.channels_last).eval()


def timm_teacher(name: str, num_classes: int) -> nn.Module:
    """timm's pretrained ``name`` with its weights from the local cache (never downloaded)."""
    try:
        import timm  # deferred: optional extra bnnbench[timm], loaded only for a timm teacher
    except ImportError:
        raise ConfigError(f"teacher timm:{name} needs timm: pip install 'bnnbench[timm]'") from None
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise ConfigError(f"teacher timm:{name}: {exc}; list the names with timm.list_pretrained()") from None
    if model.num_classes != num_classes:
        raise ConfigError(f"teacher timm:{name} has {model.num_classes} classes; this dataset has {num_classes}")
    path, where = cached_timm_weights(dict(model.pretrained_cfg))
    if path is None:
        raise ConfigError(f"teacher timm:{name}: its pretrained weights are not in the local cache ({where}); "
                          f"fetch them once on a machine with network access (timm.create_model({name!r}, "
                          f"pretrained=True)) and copy the cache, or train a full-precision teacher run (recipe "
                          f"section teacher: {{train: ...}})")
    timm.models.load_checkpoint(model, str(path))
    return model


def cached_timm_weights(cfg: dict) -> tuple[Path | None, str]:
    """(the cached weight file of a timm pretrained config or None, where it was looked for)."""
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache  # deferred: comes with timm (optional)
        repo = cfg["hf_hub_id"]
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE)
            if isinstance(found, str):
                return Path(found), f"{constants.HF_HUB_CACHE}, repository {repo}"
        return None, f"{constants.HF_HUB_CACHE}, repository {repo}"
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg["url"]).name
        return (path if path.is_file() else None), str(path)
    return None, "no weight source in timm's pretrained config"
