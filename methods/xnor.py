"""XNOR-Net on the shared backbones (benchmark variant).

Rastegari, Ordonez, Redmon, Farhadi, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural
Networks", ECCV 2016.

Weights:      W_b = alpha_c * sign(W_c),  alpha_c = ||W_c||_1 / n  (one scale per output filter, n = C_in*k*k)
              backward: clipped identity 1[|W| <= 1] through sign, and autograd through alpha_c, which gives
              the exact chain rule dC/dW_i = alpha*1[|W_i|<=1]*dC/dW~_i + (1/n)*sign(W_i)*sum_j sign(W_j)dC/dW~_j
              that XNOR-Net-PyTorch implements.
Activations:  sign(x) with clipped identity 1[|x| <= 1].

Benchmark decisions (what both official codes effectively compute): no activation scale K (computed but
unused by both), no in-place mean-centring/clamping of the latent weights, and no x n / x 1e9
gradient multipliers (they rescale the lr per layer; the shared recipes set the lr). The backbone's BN
and Hardtanh are kept.
"""
from __future__ import annotations

from torch import Tensor

from bnnbench.nn import FILTER_DIMS, BinaryConv2d, sign_clipped
from bnnbench.plugins import Method, register_method


class XnorConv2d(BinaryConv2d):
    """y = conv(sign(x), alpha_c * sign(W_c)), alpha_c = mean|W_c| (differentiated), clipped-identity STEs."""

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_clipped(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        alpha = w.abs().mean(dim=FILTER_DIMS, keepdim=True)
        return alpha * sign_clipped(w)


@register_method
class XNOR(Method):
    """XNOR-Net: per-filter L1 scale, clipped-identity STE on weights and activations (ECCV 2016)."""

    name = "xnor"
    paper = "Rastegari et al., XNOR-Net, ECCV 2016"
    conv_class = XnorConv2d
