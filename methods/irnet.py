"""IR-Net: Libra-PB weights and the Error Decay Estimator (EDE).

Qin, Gong, Liu, Bai, Song, Yu, "Forward and Backward Information Retention for Accurate Binary Neural
Networks", CVPR 2020 (code: htqin/IR-Net, modules/ir_1w1a.py and binaryfunction.py).

Weights (Libra-PB):
    W^_c = (W_c - mean(W_c)) / std_unbiased(W_c)          (no epsilon; statistics differentiated)
    s_c  = round(log2(mean_i |W^_c,i|)),  W_b = 2^{s_c} * sign(W^_c)   (2^{s_c} detached; ~1 in practice,
                                                                         kept: the reference computes it)
Activations: sign(x) on the raw input.
Backward (weights and activations): EDE, g'(u) = k * t * (1 - tanh^2(t u)).
Schedule, set before each epoch e of E:  t_e = 10^(log10 T_min + (log10 T_max - log10 T_min) * e / E),
k_e = max(1 / t_e, 1).  Defaults T_min = 0.1, T_max = 10 (paper and VGG-Small code); the authors'
ResNet-20 code uses T_min = 1e-3 (set ``t_min`` in a recipe for that). t and k are buffers recomputed from
the epoch at every epoch start, so a resumed run gets the same values (no state outside the model). Before the first
epoch the layer holds the reference's initial t = 0.1, k = 10.
The models return logits (the reference's LogSoftmax before CrossEntropy changes nothing:
log_softmax is idempotent).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnnbench.nn import FILTER_DIMS, BinaryConv2d, sign_ede
from bnnbench.plugins import Method, register_method

#: allowed values of the EDE schedule's hyperparameters (IR-Net, AdaBin)
EDE_RANGES = {"t_min": ("> 0 (log10 is taken)", lambda v: v > 0), "t_max": ("> 0 (log10 is taken)", lambda v: v > 0)}


def set_ede(layers, epoch: int, epochs: int, t_min: float, t_max: float) -> None:
    """Fill every layer's ``t`` and ``k`` buffers with the EDE schedule at ``epoch`` of ``epochs``."""
    t, k = ede_schedule(epoch, epochs, t_min, t_max)
    for layer in layers:
        layer.t.fill_(t)
        layer.k.fill_(k)


def ede_schedule(epoch: int, epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    """(t, k) of IR-Net's EDE at 0-based ``epoch`` of ``epochs``."""
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = 10 ** (lo + (hi - lo) * epoch / epochs)
    return t, max(1.0 / t, 1.0)


class IRNetConv2d(BinaryConv2d):
    """y = conv(sign_EDE(x), 2^s * sign_EDE(standardise(W))) (Libra-PB + EDE)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("t", torch.tensor(0.1))
        self.register_buffer("k", torch.tensor(10.0))

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_ede(x, self.t, self.k)

    def binarize_weight(self, w: Tensor) -> Tensor:
        centred = w - w.mean(dim=FILTER_DIMS, keepdim=True)
        bw = centred / centred.std(dim=FILTER_DIMS, keepdim=True)
        scale = torch.pow(2.0, torch.round(torch.log2(bw.abs().mean(dim=FILTER_DIMS, keepdim=True)))).detach()
        return scale * sign_ede(bw, self.t, self.k)

    def effective_sign(self) -> Tensor:
        w = self.weight
        return torch.sign(w - w.mean(dim=FILTER_DIMS, keepdim=True))


@register_method
class IRNet(Method):
    """IR-Net: Libra-PB balanced standardised weights and the EDE surrogate (CVPR 2020)."""

    name = "irnet"
    paper = "Qin et al., IR-Net, CVPR 2020"
    conv_class = IRNetConv2d
    hparams = {"t_min": 0.1, "t_max": 10.0}
    hparam_ranges = EDE_RANGES

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        set_ede(self.layers(model, IRNetConv2d), epoch, epochs, self.hp["t_min"], self.hp["t_max"])
