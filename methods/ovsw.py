"""OvSW: Adaptive Gradient Scaling (AGS) and Silence Awareness Decaying (SAD).

Xiang, Chen, Li, Wu, Liu, "OvSW: Overcoming Silent Weights for Accurate Binary Neural Networks",
ECCV 2024 (code: JingyangXiang/OvSW @ aa52fce, model/modules/ovsw.py, trainers/ovsw.py).

Binary conv (OvSW's ``xnor`` forward, ``scaling_factor=False``):
    training: x~ = x / sg(sqrt(Var_unbiased over (C,H,W) of each sample + 1e-5));  eval: x~ = x
    a_b = sign(x~) with ApproxSign backward (training: fused ``sign_approx_per_sample``, std detached);
    W_b = sign(W) with identity STE
    y   = conv(a_b, W_b) * alpha_c,  alpha_c = sg(mean_i |(W_c,i - mean W_c) / sqrt(Var_unbiased(W_c) + 1e-5)|)

Gradient edit, after backward and AMP unscaling, before the optimizer step, on every OvSW conv's
``weight.grad`` in module order, AGS first and then SAD:
    AGS  ||g_c|| = max(||G_c||_2, 1e-6),  ||w_c|| = max(||W_c||_2, 1e-3)
         G_c <- delta * ||w_c|| / ||g_c|| * G_c   where ||g_c|| / ||w_c|| < delta   (only ever scales up)
    SAD  T <- m T + (1 - m) 1[sign(W) != sign(W_prev)]          (sign(0) = 0 differs from +-1)
         G <- G + gamma * 1[T < sigma] * W;   W_prev <- W
The optimizer's own weight decay then applies on top. T starts at zeros (every weight "silent" until it
first flips; ``track_ones`` reproduces the reference's ``--track_ones True``).
Defaults: delta 0.01, gamma 2e-5 (the shipped ImageNet values), m 0.999, sigma 1e-4; the ``cifar`` preset
is the shipped cResNet20/CIFAR-10 sweep, delta 0.04, gamma 9e-4 (the reference's argparse default for
gamma is 0, which turns SAD's decay off; every shipped run sets it). ``ags: false, sad: false`` gives
the vanilla BNN of the paper's comparisons.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnbench.nn import FILTER_DIMS, BinaryConv2d, sign_approx, sign_approx_per_sample, sign_ste
from bnnbench.plugins import Method, register_method


class OvSWConv2d(BinaryConv2d):
    """y = conv(ApproxSign(x / sg(std)), STE-sign(W)) * sg(mean|standardised W_c|), with SAD buffers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        fill = 1.0 if self.hparams["track_ones"] else 0.0
        self.register_buffer("tracker", torch.full_like(self.weight, fill))
        self.register_buffer("weight_prev", self.weight.detach().clone())

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx_per_sample(x, 1e-5, through_std=False) if self.training else sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return sign_ste(w)

    def output_scale(self) -> Tensor:
        with torch.no_grad():
            w = self.weight
            mean = w.mean(dim=FILTER_DIMS, keepdim=True)
            var = w.var(dim=FILTER_DIMS, keepdim=True)
            scale = ((w - mean) / torch.sqrt(var + 1e-5)).abs().mean(dim=FILTER_DIMS)
        return scale.view(1, -1, 1, 1)


@torch.no_grad()
def ags_(grad: Tensor, weight: Tensor, delta: float) -> Tensor:
    """Adaptive Gradient Scaling in place; returns the per-channel ratio ||g_c|| / ||w_c|| before scaling."""
    gn = torch.linalg.vector_norm(grad, dim=FILTER_DIMS).clamp_min(1e-6)  # any memory layout, no copy
    pn = torch.linalg.vector_norm(weight, dim=FILTER_DIMS).clamp_min(1e-3)
    ratio = gn / pn
    factor = torch.where(ratio < delta, delta * pn / gn, torch.ones_like(ratio))
    grad.mul_(factor.view(-1, *([1] * (grad.dim() - 1))))
    return ratio


@torch.no_grad()
def sad_(grad: Tensor, weight: Tensor, tracker: Tensor, weight_prev: Tensor, *, gamma: float,
         momentum: float, threshold: float) -> Tensor:
    """Silence Awareness Decaying in place (grad, tracker, weight_prev); returns the silent mask."""
    flipped = torch.sign(weight) != torch.sign(weight_prev)
    tracker.mul_(momentum).add_(flipped.to(tracker.dtype), alpha=1.0 - momentum)
    silent = tracker < threshold
    grad.add_(weight * silent.to(weight.dtype), alpha=gamma)
    weight_prev.copy_(weight)
    return silent


@register_method
class OvSW(Method):
    """OvSW: sign-STE BNN with Adaptive Gradient Scaling and Silence Awareness Decaying (ECCV 2024)."""

    name = "ovsw"
    paper = "Xiang et al., OvSW, ECCV 2024"
    conv_class = OvSWConv2d
    hparams = {"ags": True, "sad": True, "delta": 0.01, "gamma": 2e-5, "momentum": 0.999,
               "threshold": 1e-4, "track_ones": False}
    presets = {"cifar": {"delta": 0.04, "gamma": 9e-4}, "imagenet": {"delta": 0.01, "gamma": 2e-5}}
    hparam_ranges = {"delta": (">= 0", lambda v: v >= 0), "gamma": (">= 0", lambda v: v >= 0),
                     "momentum": ("in [0, 1)", lambda v: 0 <= v < 1), "threshold": (">= 0", lambda v: v >= 0)}

    def prepare(self, model: nn.Module) -> None:
        for layer in self.layers(model, OvSWConv2d):
            layer.weight_prev.copy_(layer.weight.detach())

    def after_backward(self, model: nn.Module) -> None:
        hp = self.hp
        for layer in self.layers(model, OvSWConv2d):
            grad = layer.weight.grad
            if grad is None:
                continue
            if hp["ags"]:
                ags_(grad, layer.weight, hp["delta"])
            if hp["sad"]:
                sad_(grad, layer.weight, layer.tracker, layer.weight_prev, gamma=hp["gamma"],
                     momentum=hp["momentum"], threshold=hp["threshold"])

    def epoch_stats(self, model: nn.Module) -> dict[str, float]:
        if not self.hp["sad"]:
            return {}
        layers = self.layers(model, OvSWConv2d)
        silent = sum((layer.tracker < self.hp["threshold"]).sum() for layer in layers)
        total = sum(layer.tracker.numel() for layer in layers)
        return {"ovsw_ema_silent": float(silent) / max(total, 1)}
