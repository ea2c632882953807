"""White-box L-infinity attacks on a trained model: FGSM (Goodfellow et al., ICLR 2015) and PGD (Madry et al.,
ICLR 2018), through the model's own gradients.

A binary model in eval mode with gradients enabled runs its training formula (``BinaryConv2d.forward``,
``bnnbench/nn/layers.py``): the sign's surrogate backward (the STE) is what the attacker differentiates, and
BatchNorm uses its running statistics. Images are attacked in pixel scale, x in [0, 255], and ``eps`` is
in pixel levels (eps = 8 means 8/255 of the [0, 1] scale); the model sees ``(x - 255 mean) / (255 std)``,
the same expression as the evaluation loader (``TensorLoader``), so an attack with eps = 0 reproduces the
clean evaluation exactly.

* FGSM: x' = clip(x + eps sign(grad_x L(f(x), y)), 0, 255);
* PGD: x_0 = x + U(-eps, eps) (seeded), then ``steps`` times x_{k+1} = P(x_k + a sign(grad_x L(f(x_k), y))),
  P the projection onto the eps-ball around x intersected with [0, 255], a = eps / 4 (Madry et al.'s
  2/255 for 8/255 with 10 steps is a = eps / 4).

``torchattacks`` would do the same; its release pins ``requests~=2.25.1``, which downgrades a researcher's
environment, so the two loops are here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.config.evaluation import PGD_STEPS


@dataclass(frozen=True)
class Normalizer:
    """The model's input normalisation in pixel scale: ``(x - mean255) / std255`` (per channel)."""

    mean255: Tensor
    std255: Tensor

    @classmethod
    def of(cls, mean, std, device: torch.device) -> Normalizer:
        def per_channel(v) -> Tensor:
            return torch.tensor(v, device=device).view(1, -1, 1, 1) * 255
        return cls(per_channel(mean), per_channel(std))

    def __call__(self, x: Tensor) -> Tensor:
        return ((x - self.mean255) / self.std255).contiguous(memory_format=torch.channels_last)


def _input_grad(model: nn.Module, norm: Normalizer, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    model.eval()   # running BatchNorm statistics; the binary convs' training formula, since gradients are on
    with torch.enable_grad():
        loss = F.cross_entropy(model(norm(x)).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def pgd(model: nn.Module, norm: Normalizer, x: Tensor, y: Tensor, eps: float, steps: int = PGD_STEPS,
        random_start: bool = True, step_size: float | None = None, gen: torch.Generator | None = None) -> Tensor:
    """Adversarial images for pixel-scale ``x`` (float, [0, 255]); FGSM is ``steps=1, random_start=False,
    step_size=eps`` (:func:`fgsm`)."""
    step_size = eps / 4 if step_size is None else step_size
    adv = x.clone()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=gen, dtype=x.dtype) if gen is not None else torch.rand_like(x)
        adv = (x + (2 * noise.to(x.device) - 1) * eps).clamp(0, 255)
    for _ in range(steps if eps > 0 else 0):
        adv = adv + step_size * _input_grad(model, norm, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 255)
    return adv.detach()


def fgsm(model: nn.Module, norm: Normalizer, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """One signed-gradient step of size ``eps`` (pixel levels)."""
    return pgd(model, norm, x, y, eps, steps=1, random_start=False, step_size=eps)


@torch.no_grad()
def correct(model: nn.Module, norm: Normalizer, x: Tensor, y: Tensor) -> int:
    """How many of ``x`` (pixel scale) the model, in eval mode, classifies as ``y``."""
    model.eval()
    return int((model(norm(x)).topk(1, dim=1).indices[:, 0] == y).sum())  # as evaluate() ranks
