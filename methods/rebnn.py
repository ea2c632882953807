"""ReBNN (resilient weights) and, with ``recurrent: true``, RBONN (recurrent bilinear optimisation).

Xu, Lin, Zhong, Chen, Ji, Zhang, "Resilient Binary Neural Network", AAAI 2023 (code: SteveTsui/ReBNN @ 77adc01,
2_step2_rebnn/rebnn.py, ``BinaryActivation``, ``HardBinaryConv`` and its autograd Function);
Xu, Zhang, Wang, Zhang, Ji, Zhang, "Recurrent Bilinear Optimization for Binary Neural Networks", ECCV 2022
(code: SteveTsui/RBONN @ c3ae0ba, 2_step2_rbonn/rbonn.py, ``RBOConv``).

Activations: a_b = sign(x), ApproxSign backward max(0, 2 - 2|x|).
Weights, with s = |alpha_raw| (alpha_raw a learnable (C_out,1,1,1) parameter, randn init) and bin = 0.02:
    W_b = bin * s * sign(W)
    dL/dW       = s * g + gamma * R,                      R = W - s * bin * sign(W),  g = dL/dW_b
    dL/ds_c     = sum_i g_ci * W_ci - gamma * sum_i R_ci * bin * sign(W_ci)      (then * sign(alpha_raw))
The first sum uses the latent W where the chain rule would use bin * sign(W): the authors' code, kept
(spec: it changes the alpha gradient by up to 77% on the golden). The gamma terms are the gradient of
(gamma/2)||W - s b||^2; they are added after backward (:meth:`ReBNN.after_backward`, after AMP unscaling),
which equals the authors' in-backward form in true units.
gamma as coded: ReBNN computes a "resilient" per-channel value and clamps it min-then-max, so it is the
constant 2e-4 for every input (spec section 3); RBONN uses 1e-4. ``gamma`` is the hyperparameter.

RBONN's recurrent step (``recurrent: true``; training only): with G_prev the previous step's weight gradient,
    W_eff = W - u * D * G_prev,   u learnable (C_out,1,1,1), init 0.2
    D_c   = 1[argsort(|alpha|)_c < floor(0.4 C_out)]   (the code's "DReLU": the index stored at sorted
            position c, not channel c's rank; kept as coded)
and W_eff goes through the binarisation above. The authors read G_prev from ``W.grad`` at forward time
(their loop zeroes gradients after the forward); here G_prev is a buffer ``prev_grad`` written by
:meth:`ReBNN.after_backward` (after the gamma edit, as their ``W.grad`` holds it) with a 0/1 buffer
``has_prev``, so the recurrence survives any ``zero_grad`` order, a checkpoint and a resume. On the first
step (no G_prev) the forward is the plain one; u then receives a zero gradient where the authors' u has
none (the only difference, and only on step 1).

Benchmark decisions: the shared backbones are used with ReActNet's RPReLU (shift -> PReLU -> shift) as the
activation between binary convs (:class:`RPReLU`); the ReActNet-style backbone has its own RSign/RPReLU
shifts. u trains at 0.1x the schedule's learning rate (``U_LR_SCALE``), as in the authors' ``train.py``.
Parity with the authors' code: ``tests/test_golden.py`` (ReBNN and RBONN, with and without a
previous gradient, the edit in isolation, float32 and float64, stride 1 and 2).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnbench.nn import FILTER_DIMS, BinaryConv2d, Shift, sign_approx
from bnnbench.plugins import Method, register_method

BIN = 0.02           # the authors' hard-coded weight magnitude factor
KEEP_FRACTION = 0.6  # RBONN's "thre": D selects floor((1 - 0.6) C_out) channels
U_LR_SCALE = 0.1     # RBONN's train.py trains u at lr 1e-4 against the others' 1e-3


class _ScaledSign(torch.autograd.Function):
    """W_b = bin * s * sign(W); backward: s * g to W and sum(g * W) to s (the authors' plain parts)."""

    @staticmethod
    def forward(ctx, w: Tensor, s: Tensor) -> Tensor:
        ctx.save_for_backward(w, s)
        return BIN * s * torch.sign(w)

    @staticmethod
    def backward(ctx, g: Tensor):
        w, s = ctx.saved_tensors
        return s * g, (g * w).sum(dim=FILTER_DIMS, keepdim=True)


def drelu_mask(scale_raw: Tensor) -> Tensor:
    """RBONN's channel mask as coded: D_c = 1[argsort(|alpha|)_c < floor((1 - 0.6) C_out)], shape like alpha."""
    n = scale_raw.shape[0]
    order = torch.argsort(scale_raw.detach().abs().flatten())
    return (order < int(n * (1 - KEEP_FRACTION))).to(scale_raw.dtype).view_as(scale_raw)


class ReBNNConv2d(BinaryConv2d):
    """y = conv(ApproxSign(x), 0.02 |alpha| sign(W_eff)), W_eff = W (ReBNN) or W - u D G_prev (RBONN, training)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale_raw = nn.Parameter(torch.randn(self.out_channels, 1, 1, 1))
        if self.hparams["recurrent"]:
            self.u = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), 0.2))
            self.register_buffer("prev_grad", torch.zeros_like(self.weight))
            self.register_buffer("has_prev", torch.zeros(()))

    def effective_latent(self, w: Tensor, recurrent: bool) -> Tensor:
        """W_eff: the latent weight the binarisation sees (``recurrent``: RBONN's step, training only)."""
        if not recurrent:
            return w
        g = (self.prev_grad * self.has_prev).to(w.dtype)
        return w - self.u * drelu_mask(self.scale_raw) * g

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        recurrent = self.hparams["recurrent"] and self.training and torch.is_grad_enabled()
        return _ScaledSign.apply(self.effective_latent(w, recurrent), self.scale_raw.abs())

    @torch.no_grad()
    def add_reconstruction_grad(self, gamma: float) -> None:
        """The gamma terms of the backward (module docstring), then keep this step's W.grad for RBONN."""
        w = self.effective_latent(self.weight, self.hparams["recurrent"])
        s = self.scale_raw.abs()
        b = BIN * torch.sign(w)
        r = w - s * b
        self.weight.grad.add_(gamma * r)
        self.scale_raw.grad.sub_(gamma * (r * b).sum(dim=FILTER_DIMS, keepdim=True) * torch.sign(self.scale_raw))
        if self.hparams["recurrent"]:
            if self.u.grad is not None:
                mask = drelu_mask(self.scale_raw) * self.has_prev
                self.u.grad.sub_((gamma * r * mask * self.prev_grad).sum(dim=FILTER_DIMS, keepdim=True))
            self.prev_grad.copy_(self.weight.grad)
            self.has_prev.fill_(1.0)


class RPReLU(nn.Sequential):
    """ReActNet's RPReLU: shift -> PReLU (per channel, slope 0.25) -> shift (ReBNN/RBONN's blocks)."""

    def __init__(self, channels: int):
        super().__init__(Shift(channels), nn.PReLU(channels), Shift(channels))


@register_method
class ReBNN(Method):
    """ReBNN (AAAI 2023): 0.02|alpha| sign(W) with a reconstruction gradient; RBONN (ECCV 2022) with recurrent: true."""

    name = "rebnn"
    paper = "Xu et al., ReBNN, AAAI 2023 (RBONN, ECCV 2022: recurrent=true, gamma=1e-4)"
    conv_class = ReBNNConv2d
    hparams = {"gamma": 2e-4, "recurrent": False}
    hparam_ranges = {"gamma": (">= 0", lambda v: v >= 0)}

    def lr_scale(self, name: str, param: nn.Parameter) -> float:
        """RBONN's train.py: ``binary_conv.u`` at lr 1e-4 against 1e-3 for the rest (``U_LR_SCALE``)."""
        return U_LR_SCALE if name.rsplit(".", 1)[-1] == "u" else 1.0

    def after_backward(self, model: nn.Module) -> None:
        for layer in self.layers(model, ReBNNConv2d):
            if layer.weight.grad is not None and layer.scale_raw.grad is not None:
                layer.add_reconstruction_grad(self.hp["gamma"])

    def activation(self, channels: int) -> nn.Module:
        return RPReLU(channels)
