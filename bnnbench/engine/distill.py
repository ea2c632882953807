"""Knowledge distillation from a frozen full-precision teacher (the two-stage track,
README "Two-stage training and distillation").

Loss, with the recipe's ``distill_weight`` w and ``distill_temperature`` T::

    L = (1 - w) * CE(s, y) + w * T^2 * softCE(s / T, softmax(t / T)),   softCE(a, p) = -sum_k p_k log softmax(a)_k

w = 1, T = 1 is ReActNet's "distribution loss" (the student matches the teacher's softmax, no labels), which
the ReCU two-stage code uses; the T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
timm's ``SoftTargetCrossEntropy`` is the same soft cross-entropy for given target probabilities, but taking
timm as a dependency for these three lines is not worth it, and its distillation task wraps its own training
loop, which the trainer here does not use.

The teacher is either a finished full-precision run of the suite (a recipe's ``teacher`` section: the same
backbone and method with ``binarize: none``, trained first as its own run) or torchvision's ImageNet
ResNet-34 (``teacher: {torchvision: resnet34}``) when its weights are in torch's hub cache.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    """The frozen teacher a run's spec names (``{"run", "name"}`` of a finished run, or ``{"torchvision"}``)."""
    if "torchvision" in ref:
        model = torchvision_teacher(ref["torchvision"], num_classes)
    else:
        d = finished_dependency(runs_dir, ref, "teacher")
        _, model, _ = trained_model(d, data_root, device)
    return model.to(device, memory_format=torch.channels_last).eval()
