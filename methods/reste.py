"""ReSTE: the rectified straight-through estimator, a scheduled power function.

Wu, Zhang, Lin, Ding, Cao, Ji, "Estimator Meets Equilibrium Perspective: A Rectified Straight Through
Estimator for Binary Neural Networks Training", ICCV 2023 (code: DravenALG/ReSTE @ 0d3c36a,
model/binary_module/binarized_modules.py, ``BinarizeConv2d``, ``Binary_ReSTE``, ``approximate_function``).

Forward (training = evaluation):
    a_b = sign(x)                       (raw input, no normalisation)
    W_b = sign(W) * s,   s = mean|W|    (one scalar per layer, over the whole tensor, **not** detached)
    y   = conv(a_b, W_b)
Backward of sign (weights and activations alike), exponent o, interval m = 0.1, clip t = 1.5:
    g'(u) = (1/o) |u|^((1-o)/o)   for m < |u| <= t
    g'(u) = m^(1/o) / m           for |u| <= m (the secant slope of |u|^(1/o) over [0, m]; also at u = 0)
    g'(u) = 0                     for |u| > t
and autograd through s adds sign(W)/numel * sum_j sign(W_j) dL/dW_b,j to the weight gradient.
Schedule, set before each epoch e of E: o(e) = 1 + (o_end - 1)(1 - cos(pi/2 * e/E)), o_end = 3 (at o = 1 the
estimator is the clipped identity 1[|u| <= t]). As in the reference, o is float32 whatever the model's
dtype (the code keeps it as a plain float32 tensor): 1/o and (1-o)/o are float32-rounded and the constant
on [-m, m] is computed in double from the float32 1/o; here o is a float32 buffer, so it is checkpointed
and a resumed run continues the schedule.

Benchmark decisions: the shared backbones are used (the authors' blocks order conv -> ReLU -> BN; the
suite's keep their Hardtanh); the recipes' optimizer and weight decay apply (the paper: SGD 0.1, wd 1e-4
on every parameter). Parity with the authors' code: ``tests/test_golden.py`` (float32 and float64, stride
1 and 2, o at epochs 500 and 999 of 1000).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnnbench.nn import BinaryConv2d, amp_backward, amp_forward
from bnnbench.plugins import Method, register_method


def reste_o(epoch: int, epochs: int, o_end: float) -> float:
    """o(e) = 1 + (o_end - 1)(1 - cos(pi/2 * e/E)), computed in float32 as the reference computes it (the
    cosine too: its float32 rounding moves o by up to 2e-7, which the golden resolves)."""
    angle = torch.tensor(math.pi / 2 * epoch / epochs, dtype=torch.float32)
    return float(1 + (o_end - 1) * (1 - torch.cos(angle)))


class _SignReSTE(torch.autograd.Function):
    @staticmethod
    @amp_forward()
    def forward(ctx, u: Tensor, o: Tensor, m: float, t: float) -> Tensor:
        ctx.save_for_backward(u, o)
        ctx.m, ctx.t = m, t
        return torch.sign(u)

    @staticmethod
    @amp_backward()
    def backward(ctx, g: Tensor):
        u, o = ctx.saved_tensors
        o32 = o.detach().float()
        inv, power = 1 / o32, (1 - o32) / o32                      # float32, as in the reference
        m64 = torch.full((), ctx.m, dtype=torch.float64, device=u.device)
        inside = torch.pow(m64, inv.double()) / ctx.m               # double, from the float32 1/o
        a = u.abs()
        slope = torch.where(a <= ctx.m, inside.to(a.dtype),
                            torch.where(a <= ctx.t, inv.to(a.dtype) * a.pow(power.to(a.dtype)), torch.zeros_like(a)))
        return g * slope.to(g.dtype), None, None, None


def sign_reste(u: Tensor, o: Tensor, m: float = 0.1, t: float = 1.5) -> Tensor:
    """sign(u) with ReSTE's backward (module docstring); ``o`` a float32 tensor."""
    return _SignReSTE.apply(u, o, m, t)


class ReSTEConv2d(BinaryConv2d):
    """y = conv(sign_ReSTE(x), sign_ReSTE(W) * mean|W|)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("o", torch.ones(1, dtype=torch.float32))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.o = self.o.float()  # o stays float32 under .to(dtype) / .double() (module docstring)
        return self

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_reste(x, self.o, self.hparams["m"], self.hparams["t"])

    def binarize_weight(self, w: Tensor) -> Tensor:
        return sign_reste(w, self.o, self.hparams["m"], self.hparams["t"]) * w.abs().mean()


@register_method
class ReSTE(Method):
    """ReSTE: sign with a scheduled power-function estimator, one differentiable scale per layer (ICCV 2023)."""

    name = "reste"
    paper = "Wu et al., ReSTE, ICCV 2023"
    conv_class = ReSTEConv2d
    hparams = {"o_end": 3.0, "t": 1.5, "m": 0.1}
    hparam_ranges = {"o_end": (">= 1", lambda v: v >= 1), "t": ("> 0", lambda v: v > 0),
                     "m": ("> 0", lambda v: v > 0)}

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        o = reste_o(epoch, epochs, self.hp["o_end"])
        for layer in self.layers(model, ReSTEConv2d):
            layer.o.fill_(o)
