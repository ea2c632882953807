"""Bop: the binary optimizer. No latent weights: the binary weights are flipped from a gradient average.

Helwegen, Widdicombe, Geiger, Liu, Cheng, Nusselder, "Latent Weights Do Not Exist: Rethinking Binarized
Neural Network Optimization", NeurIPS 2019 (rule: larq/larq @ fe3ce52, larq/optimizers.py ``Bop``
lines 331-339, larq/math.py ``sign``; paper code plumerai/rethinking-bnn-optimization @ 9856919).

Every binary conv weight is +-1 and used as is in the forward (no STE, no scale). After each backward,
with g the plain gradient of the loss w.r.t. W, gamma the adaptivity rate and tau the threshold:
    m_t = m_{t-1} + gamma (g - m_{t-1})                       (the paper's (1 - gamma) m + gamma g)
    W_t = sgn+(-sign(W_{t-1} m_t - tau) W_{t-1}),  sgn+(v) = +1 for v >= 0, -1 for v < 0
i.e. W flips where W m_t > tau, stays where W m_t < tau, and on an exact tie W m_t = tau becomes +1 (larq).
The real-valued parameters (stem, BatchNorm, shortcuts, head) keep the recipe's optimizer: Bop claims the
binary weights through the optimizer seam (:meth:`Bop.optimizer`; larq's ``CaseOptimizer``), so they get
no weight decay, momentum or learning rate. m and the step count live in the optimizer's state and are
checkpointed with the recipe's optimizer, so a resumed run flips exactly as an uninterrupted one.

gamma schedules, per optimizer step (``gamma_schedule``):
    constant:  gamma
    step:      gamma * gamma_decay ** floor(epoch / gamma_every)   (CIFAR-10 section 5.2: 1e-4, x0.1 every 100)
    linear:    gamma -> gamma_end linearly over the run's steps      (ImageNet Bi-Real: 1e-4 -> 1e-6)
with tau = 1e-8 in both published recipes (the section 5.1 sweeps use gamma 1e-3, tau 1e-6).

Benchmark decisions: the binary weights start as sgn+ of the backbone's initialisation (:meth:`Bop.prepare`;
larq lets the first step binarise real initial weights, which would make step 1's forward real-valued);
activations use Bi-Real's ApproxSign, as the authors' Bi-Real-18 does. Parity: ``tests/test_golden.py``
replays the golden three-step trajectory (edge cases: ties, zeros, real-valued weights).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnnbench.nn import BinaryConv2d, sign_approx
from bnnbench.plugins import Method, register_method


def sign_plus(x: Tensor) -> Tensor:
    """larq.math.sign: +1 for x >= 0, -1 for x < 0 (never 0)."""
    return torch.sign(torch.sign(x) + 0.1)


@torch.no_grad()
def bop_update_(w: Tensor, g: Tensor, m: Tensor, gamma: float, threshold: float) -> Tensor:
    """One Bop step in place on ``w`` and ``m``; returns the flip condition W m_t > tau."""
    m.add_(gamma * (g - m))
    flip = w * m > threshold
    w.copy_(sign_plus(-torch.sign(w * m - threshold) * w))
    return flip


class BopOptimizer(torch.optim.Optimizer):
    """Bop over the given (binary) parameters; ``gamma_at(step)`` gives gamma at 0-based step ``step``."""

    def __init__(self, params, gamma_at, threshold: float):
        super().__init__(params, {"threshold": threshold, "bop_step": 0})
        self.gamma_at = gamma_at

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            gamma = self.gamma_at(group["bop_step"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "m" not in state:
                    state["m"] = torch.zeros_like(p)
                bop_update_(p, p.grad, state["m"], gamma, group["threshold"])
            group["bop_step"] += 1


class BopConv2d(BinaryConv2d):
    """y = conv(ApproxSign(x), W), W in {-1, +1} itself (updated by :class:`BopOptimizer`, not by a gradient step)."""

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return w


SCHEDULES = ("constant", "step", "linear")


@register_method
class Bop(Method):
    """Bop: binary weights flipped by a thresholded gradient average, no latent weights (NeurIPS 2019)."""

    name = "bop"
    paper = "Helwegen et al., Bop, NeurIPS 2019"
    conv_class = BopConv2d
    hparams = {"gamma": 1e-4, "threshold": 1e-8, "gamma_schedule": "constant", "gamma_end": 1e-6,
               "gamma_decay": 0.1, "gamma_every": 100}
    presets = {"cifar": {"gamma_schedule": "step"}, "imagenet": {"gamma_schedule": "linear"}}
    hparam_ranges = {"gamma": ("in (0, 1]", lambda v: 0 < v <= 1), "threshold": (">= 0", lambda v: v >= 0),
                     "gamma_schedule": (" or ".join(SCHEDULES), lambda v: v in SCHEDULES),
                     "gamma_end": ("in (0, 1]", lambda v: 0 < v <= 1),
                     "gamma_decay": ("in (0, 1]", lambda v: 0 < v <= 1),
                     "gamma_every": (">= 1 (epochs)", lambda v: v >= 1)}

    @torch.no_grad()
    def prepare(self, model: nn.Module) -> None:
        for layer in self.layers(model, BopConv2d):
            layer.weight.copy_(sign_plus(layer.weight))

    def gamma_at(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        """gamma at 0-based optimizer step ``step`` (module docstring)."""
        hp = self.hp
        if hp["gamma_schedule"] == "step":
            return hp["gamma"] * hp["gamma_decay"] ** math.floor(step / (hp["gamma_every"] * steps_per_epoch))
        if hp["gamma_schedule"] == "linear":
            frac = min(1.0, step / max(1, epochs * steps_per_epoch))
            return hp["gamma"] + (hp["gamma_end"] - hp["gamma"]) * frac
        return hp["gamma"]

    def optimizer(self, model: nn.Module, settings, steps_per_epoch: int) -> BopOptimizer:
        weights = [layer.weight for layer in self.layers(model, BopConv2d)]
        return BopOptimizer(weights, lambda step: self.gamma_at(step, steps_per_epoch, settings.epochs),
                            self.hp["threshold"])
