"""Bi-Real Net binarizer (PyTorch re-implementation of the authors).

Liu, Wu, Luo, Yang, Liu, Cheng, "Bi-Real Net: Enhancing the Performance of 1-bit CNNs with Improved
Representational Capability and Advanced Training Algorithm", ECCV 2018.

Activations:  sign(x), backward ApproxSign max(0, 2 - 2|x|) (derivative of the piecewise polynomial).
Weights:      W_b = sg(alpha_c) * sign(W), alpha_c = mean|W_c| (detached);
              backward through clamp(W, -1, 1): dW = dW_b * 1[-1 <= W <= 1], with **no** alpha factor
              (authors' PyTorch code; the paper's "magnitude-aware gradient" would multiply by alpha).

Benchmark decisions: the shared backbones of bnnbench are used (the Bi-Real "one residual per binary
conv" topology is what the ImageNet ResNets and cResNet20 already are); latent weights use the backbone's
shared initialisation, not the authors' U[0, 1e-3) (that init makes every initial sign +1 and
silent-weight figures incomparable). The recipe of the paper track follows the PyTorch code (Adam from
scratch, linear decay, label smoothing 0.1), not the Caffe fine-tuning pipeline (which starts
from a full-precision model).
"""
from __future__ import annotations

import torch
from torch import Tensor

from bnnbench.nn import FILTER_DIMS, BinaryConv2d, amp_backward, amp_forward, sign_approx
from bnnbench.plugins import Method, register_method


class _MagnitudeSign(torch.autograd.Function):
    """forward alpha * sign(w); backward g * 1[|w| <= 1] (gradient of clamp(w, -1, 1); alpha gets none)."""

    @staticmethod
    @amp_forward()
    def forward(ctx, w: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return alpha * torch.sign(w)

    @staticmethod
    @amp_backward()
    def backward(ctx, g: Tensor):
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= 1).to(g.dtype), None


class BiRealConv2d(BinaryConv2d):
    """y = conv(ApproxSign(x), sg(mean|W_c|) * sign(W)) with the clamp(W, -1, 1) weight gradient."""

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        alpha = w.detach().abs().mean(dim=FILTER_DIMS, keepdim=True)
        return _MagnitudeSign.apply(w, alpha)


@register_method
class BiReal(Method):
    """Bi-Real Net: ApproxSign activations, magnitude-scaled sign weights with clamp gradient (ECCV 2018)."""

    name = "bireal"
    paper = "Liu et al., Bi-Real Net, ECCV 2018"
    conv_class = BiRealConv2d
