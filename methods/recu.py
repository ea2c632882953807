"""ReCU: rectified clamp unit with weight standardisation.

Xu, Lin, Zhang, Chen, Chao, Ji, "ReCU: Reviving the Dead Weights in Binary Neural Networks", ICCV 2021
(code: z-hXu/ReCU, cifar/modules/binarized_modules.py; identical in imagenet/).

Weights:
    W1_c = (W_c - mean(W_c)) / ( sqrt(Var_unbiased(W_c) + 1e-5) / (2 sqrt 2) )   (statistics differentiated)
    b^   = mean |W1| over the whole layer (one scalar)
    Q(tau) = -b^ * ln(2 - 2 tau)            (the tau-quantile of Laplace(0, b^); no gradient)
    W_b  = sign(clamp(W1, -Q, Q))           backward: identity STE, so 0 outside [-Q, Q], then autograd
                                           through the standardisation.
Scale: learnable alpha of shape (C_out, 1, 1), initialised U[0, 1) (torch.rand), multiplied on the output.
Activations: training  x~ = x / sqrt(Var_unbiased over (C,H,W) of each sample + 1e-5), *not* detached;
             eval      x~ = x;  sign(x~) with ApproxSign backward (training: one fused autograd Function,
             ``sign_approx_per_sample``, with the gradient through the std written out).
tau schedule (set before each epoch e of E):
    tau(e) = tau_min + (tau_max - tau_min) * (exp(e / E) - 1) / (exp(1) - 1),  tau_min 0.85, tau_max 0.99.
Q is kept as a tensor computed in tau's float32 (the reference rounds it through float32 too), which
avoids a host synchronisation per forward pass. The analytic alpha of the paper is not what the
reference code does; the code's learnable alpha is used (spec section 3.4).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnnbench.nn import FILTER_DIMS, BinaryConv2d, sign_approx, sign_approx_per_sample, sign_ste
from bnnbench.plugins import Method, register_method

_TWO_SQRT2 = 2.0 * math.sqrt(2.0)


def conv_or_fc(name: str) -> bool:
    """ReCU's ImageNet weight-decay rule (imagenet/main.py): decay only parameters whose name has 'conv' or an
    'fc' part (BiPer's code base is ReCU's and keeps it)."""
    return any("conv" in part or part == "fc" for part in name.split("."))


def tau_schedule(epoch: int, epochs: int, tau_min: float, tau_max: float) -> float:
    """ReCU's adaptive exponential tau at 0-based ``epoch`` of ``epochs``."""
    return tau_min + (tau_max - tau_min) * (math.exp(epoch / epochs) - 1.0) / (math.e - 1.0)


class ReCUConv2d(BinaryConv2d):
    """y = conv(ApproxSign(x~), sign(clamp(standardise(W), -Q(tau), Q(tau)))) * alpha."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.out_channels, 1, 1))
        self.register_buffer("tau", torch.tensor([float(self.hparams["tau_min"])]))

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx_per_sample(x, 1e-5, through_std=True) if self.training else sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        w0 = w - w.mean(dim=FILTER_DIMS, keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var(dim=FILTER_DIMS, keepdim=True) + 1e-5) / _TWO_SQRT2)
        q = (-w1.detach().abs().mean() * torch.log(2.0 - 2.0 * self.tau)).to(w1.dtype)
        return sign_ste(torch.clamp(w1, -q, q))

    def output_scale(self) -> Tensor:
        return self.alpha

    def effective_sign(self) -> Tensor:
        w = self.weight
        return torch.sign(w - w.mean(dim=FILTER_DIMS, keepdim=True))


@register_method
class ReCU(Method):
    """ReCU: standardised weights clamped at a scheduled Laplace quantile, learnable scale (ICCV 2021)."""

    name = "recu"
    paper = "Xu et al., ReCU, ICCV 2021"
    conv_class = ReCUConv2d
    hparams = {"tau_min": 0.85, "tau_max": 0.99}
    # Q(tau) = -b ln(2 - 2 tau) is a positive clamp only for tau in (0.5, 1)
    hparam_ranges = {"tau_min": ("in (0.5, 1)", lambda v: 0.5 < v < 1),
                     "tau_max": ("in (0.5, 1)", lambda v: 0.5 < v < 1)}

    def decays_by_name(self, name: str) -> bool:
        """ReCU's ImageNet rule: :func:`conv_or_fc`."""
        return conv_or_fc(name)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        tau = tau_schedule(epoch, epochs, self.hp["tau_min"], self.hp["tau_max"])
        for layer in self.layers(model, ReCUConv2d):
            layer.tau.fill_(tau)
