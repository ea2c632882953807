"""BiPer: binary periodic weights, sign(sin(omega W)), with a learnable scale.

Vargas, Jacome, Arguello, "BiPer: Binary Neural Networks using a Periodic Function", CVPR 2024 (code:
edmav4/BiPer @ 0c07fdd, cifar10/modules/binarized_modules.py, ``BinarizeConv2d``, ``BinaryQuantize``,
``BinaryQuantize_a``; the ImageNet module is the same up to an unused ``beta``).

Activations (as ReCU, whose code base BiPer's is):
    training  x~ = x / sqrt(Var_unbiased over (C,H,W) of each sample + 1e-5)  (gradient through the std)
    eval      x~ = x;          a_b = sign(x~), ApproxSign backward max(0, 2 - 2|x~|)
Weights:
    stage 2 (1W1A):  W_b = sign(sin(omega W)), identity STE through sign, so dL/dW = omega cos(omega W) dL/dW_b
    stage 1:         W_q = sin(omega W), real-valued ("binarize: activations": :meth:`BiPerConv2d.real_weight`)
    y = conv(a_b, W_b or W_q) * alpha,   alpha learnable (C_out, 1, 1), initialised U[0, 1)
Regulariser (CIFAR scripts, ``cifar10/main.py`` l. 281-287): loss += tau * sum over binary convs of
mean(0.5 - 0.5 cos(2 omega W)) = tau * sum mean(sin^2(omega W)) (:meth:`BiPer.penalty`); ImageNet has it
commented out (``tau = 0`` in the imagenet preset).
omega = 20 (every shipped script passes ``--freq 20``; the code default is 30).

The deployed weight sign is sign(sin(omega W)), not sign(W): a latent weight in (pi/omega, 2 pi/omega) is
positive yet binarises to -1 (:meth:`BiPerConv2d.effective_sign`). sin(omega W) = 0 exactly (e.g. W = 0)
gives a zero weight, which the export refuses by name.

Benchmark decisions: the authors' two stages are two runs (stage 2 restarts from stage 1's best checkpoint
with a fresh optimizer); here they are the two-stage track's stages (``binarize: activations`` then
``all``), one tau for both (the authors' CIFAR stage 2 uses 0.0468 against stage 1's 0.037: set
``biper.tau`` per stage in a recipe). The regulariser is part of the training loss only; the test loss
the suite reports is the plain cross-entropy (the authors' validation loss includes it).
Parity with the authors' code: ``tests/test_golden.py`` (both stages, stride 1 and 2, float32 and float64,
the regulariser's value and gradient).
"""
from __future__ import annotations

import torch
from bnnbench.methods.recu import conv_or_fc
from torch import Tensor, nn

from bnnbench.nn import BinaryConv2d, sign_approx, sign_approx_per_sample, sign_ste
from bnnbench.plugins import Method, register_method


class BiPerConv2d(BinaryConv2d):
    """y = conv(ApproxSign(x~), sign_STE(sin(omega W))) * alpha."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.out_channels, 1, 1))

    def periodic(self, w: Tensor) -> Tensor:
        return torch.sin(self.hparams["omega"] * w)

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx_per_sample(x, 1e-5, through_std=True) if self.training else sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return sign_ste(self.periodic(w))

    def output_scale(self) -> Tensor:
        return self.alpha

    def real_weight(self, w: Tensor) -> Tensor:
        """Stage 1: sin(omega W) * alpha (real weights, binary activations)."""
        return self.periodic(w) * self.alpha.reshape(-1, 1, 1, 1)

    def effective_sign(self) -> Tensor:
        return torch.sign(self.periodic(self.weight))

    def regulariser(self) -> Tensor:
        """mean(0.5 - 0.5 cos(2 omega W)) = mean(sin^2(omega W)), written as the authors' code writes it."""
        return (0.5 - 0.5 * torch.cos(2 * self.hparams["omega"] * self.weight)).mean()


@register_method
class BiPer(Method):
    """BiPer: weights binarised through a periodic function, sign(sin(omega W)), learnable scale (CVPR 2024)."""

    name = "biper"
    paper = "Vargas et al., BiPer, CVPR 2024"
    conv_class = BiPerConv2d
    hparams = {"omega": 20.0, "tau": 0.037}
    presets = {"imagenet": {"tau": 0.0}}
    hparam_ranges = {"omega": ("> 0", lambda v: v > 0), "tau": (">= 0", lambda v: v >= 0)}

    def penalty(self, model: nn.Module):
        """tau * sum over binary convs of mean(sin^2(omega W)); None when tau = 0."""
        if self.hp["tau"] == 0:
            return None
        return self.hp["tau"] * torch.stack([m.regulariser() for m in self.layers(model, BiPerConv2d)]).sum()

    def decays_by_name(self, name: str) -> bool:
        """The authors' ImageNet rule, ReCU's (:func:`bnnbench.methods.recu.conv_or_fc`)."""
        return conv_or_fc(name)
