"""AdaBin: adaptive binary sets {beta - alpha, beta + alpha} for weights and activations, Maxout activation.

Tu, Chen, Wu, Chen, Wang, Zhang, "AdaBin: Improving Binary Neural Networks with Adaptive Binary Sets", ECCV
2022 (code: huawei-noah/Efficient-Computing @ 225ddd2, BinaryNetworks/AdaBin/cifar10/utils/binarylib.py,
``BinaryQuantize``, ``Maxout``, ``BinaryActivation``, ``AdaBin_Conv2d``; the ImageNet copy is the same).

Activations (learnable scalars alpha_a = 1, beta_a = 0 at init, one pair per conv):
    u = (x - beta_a) / alpha_a,   A = alpha_a (sign(u) + beta_a)      ApproxSign backward on u
(the offset is alpha_a * beta_a as coded; gradients reach alpha_a and beta_a by autograd).
Weights, per output filter c, statistics differentiated (not detached):
    beta_w = mean(W_c),  alpha_w = sqrt(mean((W_c - beta_w)^2))  (biased, no epsilon)
    Q = alpha_w sign((W - beta_w) / alpha_w) + beta_w               EDE backward k t (1 - tanh^2(t u))
y = conv(A, Q) with zero padding after binarisation. EDE schedule (IR-Net's, T_min = 1e-3, T_max = 10):
t_e = 10^(-3 + 4 e/E), k_e = max(1/t_e, 1), set before each epoch (buffers; k = 10, t = 0.1 before the first;
float32 whatever the model's dtype, as the reference's, and k t is formed in float32 first).

Inference (``deployed_form``): with s_a = sign(x - beta_a) (= sign(alpha_a) sign(u)) and s_w the weight signs,
    y_c = |alpha_a| alpha_w,c dot(s_a, s_w) + |alpha_a| beta_w,c sum s_a
          + alpha_a beta_a alpha_w,c sum_inside s_w + alpha_a beta_a beta_w,c n_inside
i.e. the XNOR-popcount dot plus a box sum of the input signs and an input-independent border map
(:class:`~bnnbench.nn.layers.InferenceForm`); an exact zero of x - beta_a gives A = alpha_a beta_a in both
forms. A weight exactly at its filter mean (s_w = 0) or alpha_a = 0 has no 1-bit form and is refused.

Activation between binary convs: Maxout p_c relu(x) - n_c relu(-x), p = 1, n = 0.25 at init (:class:`Maxout`).
Benchmark decisions: the shared backbones are used with Maxout where they put their activation (the
authors' backbones also replace the stem's activation and use their own heads). Parity with the authors'
code: ``tests/test_golden.py`` (three points of the EDE schedule, the four-term algebra, Maxout, float32
and float64, stride 1 and 2).
"""
from __future__ import annotations

import torch
from bnnbench.methods.irnet import EDE_RANGES, set_ede
from torch import Tensor, nn

from bnnbench.nn import FILTER_DIMS, BinaryConv2d, InferenceForm, sign_approx, sign_ede
from bnnbench.plugins import Method, register_method


def weight_stats(w: Tensor) -> tuple[Tensor, Tensor]:
    """(beta_w, alpha_w) per output filter, shaped (C_out, 1, 1, 1): the mean and the biased std."""
    beta = w.mean(dim=FILTER_DIMS, keepdim=True)
    alpha = torch.sqrt(((w - beta) ** 2).mean(dim=FILTER_DIMS, keepdim=True))
    return beta, alpha


class AdaBinConv2d(BinaryConv2d):
    """y = conv(alpha_a (sign((x - beta_a)/alpha_a) + beta_a), alpha_w sign((W - beta_w)/alpha_w) + beta_w)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha_a = nn.Parameter(torch.tensor(1.0))
        self.beta_a = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("t", torch.tensor(0.1))
        self.register_buffer("k", torch.tensor(10.0))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.t, self.k = self.t.float(), self.k.float()  # float32 under .double(), as the reference keeps them
        return self

    def binarize_input(self, x: Tensor) -> Tensor:
        a, b = self.alpha_a.to(x.dtype), self.beta_a.to(x.dtype)
        return a * (sign_approx((x - b) / a) + b)

    def binarize_weight(self, w: Tensor) -> Tensor:
        beta, alpha = weight_stats(w)
        return alpha * sign_ede((w - beta) / alpha, self.t, self.k) + beta

    def effective_sign(self) -> Tensor:
        return torch.sign(self.weight - self.weight.mean(dim=FILTER_DIMS, keepdim=True))

    def deployed_form(self) -> InferenceForm | None:
        """The four-term form of the module docstring, in the weight's dtype; None where it has none."""
        w = self.weight.detach()
        beta, alpha = (t.flatten() for t in weight_stats(w))
        signs = torch.sign((w - beta.view(-1, 1, 1, 1)) / alpha.view(-1, 1, 1, 1))
        a, b = self.alpha_a.detach().to(w.dtype), self.beta_a.detach().to(w.dtype)
        if bool((signs == 0).any()) or not bool(torch.isfinite(signs).all()) or float(a) == 0.0:
            return None
        return InferenceForm(signs=signs, scale=a.abs() * alpha, threshold=b, act_sum=a.abs() * beta,
                             weight_sum=a * b * alpha, count=a * b * beta)


class Maxout(nn.Module):
    """p_c relu(x) - n_c relu(-x): a PReLU with a learnable positive slope (AdaBin's ``Maxout``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.pos_scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.neg_scale = nn.Parameter(torch.full((1, channels, 1, 1), 0.25))

    def forward(self, x: Tensor) -> Tensor:
        return self.pos_scale.to(x.dtype) * torch.relu(x) - self.neg_scale.to(x.dtype) * torch.relu(-x)


@register_method
class AdaBin(Method):
    """AdaBin: learnable affine binary sets for activations and weights, Maxout activation (ECCV 2022)."""

    name = "adabin"
    paper = "Tu et al., AdaBin, ECCV 2022"
    conv_class = AdaBinConv2d
    hparams = {"t_min": 1e-3, "t_max": 10.0}
    hparam_ranges = EDE_RANGES

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        set_ede(self.layers(model, AdaBinConv2d), epoch, epochs, self.hp["t_min"], self.hp["t_max"])

    def activation(self, channels: int) -> nn.Module:
        return Maxout(channels)
