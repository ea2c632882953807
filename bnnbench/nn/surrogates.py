"""Sign with the backward surrogates ("straight-through estimators") used by 1-bit networks.

All forward passes are ``torch.sign`` (so sign(0) = 0, as in every reference implementation). They differ
only in the factor g'(u) that multiplies the incoming gradient in the backward pass:

========================  =======================================  =================================
name                      backward factor g'(u)                    paper
========================  =======================================  =================================
:func:`sign_ste`          1                                         Bengio et al. 2013; Courbariaux 2016
:func:`sign_clipped`      1[|u| <= 1]                               Hubara et al. 2016 / XNOR-Net 2016
:func:`sign_approx`       max(0, 2 - 2|u|)                          Bi-Real Net (Liu et al., ECCV 2018)
:func:`sign_ede`          k * t * (1 - tanh^2(t u))                 IR-Net (Qin et al., CVPR 2020)
========================  =======================================  =================================

Mixed precision: every Function is declared with ``torch.amp.custom_fwd`` / ``custom_bwd`` (the backward
runs under the forward's autocast state). The forward is ``sign`` in the input's dtype (exact in any
dtype); backward factors are computed in the incoming gradient's dtype, except where low precision loses
them: EDE's ``1 - tanh^2`` is formed in float32 (in fp16/bf16 it rounds to 0 for |t u| above ~4 and ~3)
and the per-sample statistics of :func:`sign_approx_per_sample` are always float32 (a sum of squares over
C*H*W overflows fp16). Gradients return in the input's dtype.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

#: decorators of every autograd Function here: the backward runs under the forward's autocast state
amp_forward = functools.partial(torch.amp.custom_fwd, device_type="cuda")
amp_backward = functools.partial(torch.amp.custom_bwd, device_type="cuda")


def sample_rows(x: Tensor) -> Tensor:
    """``x`` as (N, everything else), a view (no copy) when x is contiguous or channels_last: the rows hold
    each sample's elements in memory order, which per-sample sums do not depend on."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(len(x), -1)


def sample_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance of each sample over all its other dimensions, each shaped (N, 1, ..., 1),
    in float32 for fp16/bf16/fp32 inputs (float64 stays float64).

    Computed from the first two moments, var = (sum x^2 - (sum x)^2 / n) / (n - 1), which on CPUs is several
    times faster than ``torch.var`` (same value to float rounding; gradient 2 (x - mean) / (n - 1)).
    """
    f = sample_rows(x)
    n = f.shape[1]
    dt = torch.promote_types(x.dtype, torch.float32)   # at least float32: sum x^2 overflows fp16
    s1 = f.sum(dim=1, dtype=dt)
    s2 = torch.linalg.vector_norm(f, dim=1, dtype=dt) ** 2
    var = ((s2 - s1 * s1 / n) / (n - 1)).clamp_min(0.0)
    shape = (-1, *([1] * (x.dim() - 1)))
    return (s1 / n).view(shape), var.view(shape)


def _approx_grad_(a: Tensor, g: Tensor) -> Tensor:
    """ApproxSign's backward in place on ``a`` = |u| (a temporary): max(0, 2 - 2 a) * g."""
    return a.mul_(-2.0).add_(2.0).clamp_(min=0.0).mul_(g)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    @amp_forward()
    def forward(ctx, u: Tensor) -> Tensor:
        return torch.sign(u)

    @staticmethod
    @amp_backward()
    def backward(ctx, g: Tensor) -> Tensor:
        return g


class _SignClipped(torch.autograd.Function):
    @staticmethod
    @amp_forward()
    def forward(ctx, u: Tensor) -> Tensor:
        ctx.save_for_backward(u)
        return torch.sign(u)

    @staticmethod
    @amp_backward()
    def backward(ctx, g: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors
        # hardtanh_backward(g, u, lo, hi) = g * 1[lo < u < hi] in one pass; with lo, hi the neighbours of -1
        # and 1 in u's dtype the window is exactly |u| <= 1.
        edge = 1.0 + torch.finfo(u.dtype).eps
        return torch.ops.aten.hardtanh_backward(g, u, -edge, edge)


class _SignApprox(torch.autograd.Function):
    @staticmethod
    @amp_forward()
    def forward(ctx, u: Tensor) -> Tensor:
        ctx.save_for_backward(u)
        return torch.sign(u)

    @staticmethod
    @amp_backward()
    def backward(ctx, g: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors
        return _approx_grad_(u.abs().to(g.dtype), g)


class _SignEDE(torch.autograd.Function):
    @staticmethod
    @amp_forward()
    def forward(ctx, u: Tensor, t: Tensor, k: Tensor) -> Tensor:
        ctx.save_for_backward(u, t, k)
        return torch.sign(u)

    @staticmethod
    @amp_backward()
    def backward(ctx, g: Tensor):
        u, t, k = ctx.saved_tensors
        # 1 - tanh^2(z) = 4 s (1 - s) with s = sigmoid(2 z): sigmoid and sigmoid_backward (g s (1 - s)) are
        # single passes, several times cheaper on CPUs than tanh.
        # Formed in at least float32 (fp16/bf16 round the tail to 0), returned in g's dtype. k * t is formed
        # in the schedule's own dtype, as the references multiply their (float32) k and t first.
        dt = torch.promote_types(u.dtype, torch.float32)
        s = torch.mul(u.to(dt), 2.0 * t.to(dt)).sigmoid_()
        torch.ops.aten.sigmoid_backward.grad_input(g.to(dt), s, grad_input=s)
        return s.mul_(4.0 * (k * t).to(dt)).to(g.dtype), None, None


class _SignApproxPerSample(torch.autograd.Function):
    @staticmethod
    @amp_forward()
    def forward(ctx, x: Tensor, eps: float, through_std: bool) -> Tensor:
        mean, var = sample_moments(x)
        r = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, r, mean)
        ctx.through_std = through_std
        return torch.sign(x)  # sign(x * r) == sign(x): r > 0

    @staticmethod
    @amp_backward()
    def backward(ctx, g: Tensor):
        x, r, mean = ctx.saved_tensors           # r, mean: at least float32
        gt = _approx_grad_(torch.mul(x, r).abs_(), g)   # dL/dx~, x~ = x r (float32 for low-precision x)
        if not ctx.through_std:
            return gt.mul_(r).to(x.dtype), None, None
        # + (sum_i gt_i x_i) dr/dx with dr/dx = -r^3 (x - mean) / (n - 1):
        # dL/dx = gt r - c x + c mean,  c = r^3 sum(gt x) / (n - 1)
        n = x[0].numel()
        dot = sample_rows(gt * x).sum(dim=1, dtype=r.dtype).view_as(r)
        c = r.pow(3).mul_(dot).div_(n - 1)
        return gt.mul_(r).addcmul_(x, c, value=-1.0).add_(c * mean).to(x.dtype), None, None


def sign_ste(u: Tensor) -> Tensor:
    """Sign with the identity straight-through estimator.

    forward: ``sign(u)``; backward: ``dL/du = dL/dy``.
    Bengio, Leonard, Courville, "Estimating or propagating gradients through stochastic neurons", 2013.
    Used for weights by ReCU and OvSW.
    """
    return _SignSTE.apply(u)


def sign_clipped(u: Tensor) -> Tensor:
    """Sign with the clipped identity estimator.

    forward: ``sign(u)``; backward: ``dL/du = dL/dy * 1[|u| <= 1]`` (the edges u = +-1 pass the gradient,
    as the derivative of ``clamp(u, -1, 1)`` does in PyTorch).
    Hubara et al., "Binarized Neural Networks", NeurIPS 2016; Rastegari et al., "XNOR-Net", ECCV 2016.
    XNOR-Net-PyTorch passes only |u| < 1; the two differ on a set of measure zero.
    """
    return _SignClipped.apply(u)


def sign_approx(u: Tensor) -> Tensor:
    """Sign with Bi-Real Net's ApproxSign estimator.

    forward: ``sign(u)``; backward: ``dL/du = dL/dy * max(0, 2 - 2|u|)``, i.e. 2 + 2u on [-1, 0),
    2 - 2u on [0, 1) and 0 elsewhere: the derivative of the piecewise polynomial
    F(u) = -1 (u < -1), u^2 + 2u (-1 <= u < 0), -u^2 + 2u (0 <= u < 1), 1 (u >= 1).
    Liu et al., "Bi-Real Net", ECCV 2018. Used for activations by Bi-Real, ReCU and OvSW.
    """
    return _SignApprox.apply(u)


def sign_ede(u: Tensor, t: Tensor | float, k: Tensor | float) -> Tensor:
    """Sign with IR-Net's Error Decay Estimator.

    forward: ``sign(u)``; backward: ``dL/du = dL/dy * k * t * (1 - tanh^2(t u))``, the derivative of
    ``k * tanh(t u)``. t grows and k shrinks over training (see ``methods/irnet.py``).
    Qin et al., "Forward and Backward Information Retention for Accurate Binary Neural Networks"
    (IR-Net), CVPR 2020.
    """
    t, k = (v.to(u.device) if isinstance(v, Tensor) else torch.tensor(v, dtype=u.dtype, device=u.device)
            for v in (t, k))  # a tensor keeps its dtype: k t is formed in it (AdaBin's float32 schedule)
    return _SignEDE.apply(u, t, k)


def sign_approx_per_sample(x: Tensor, eps: float = 1e-5, through_std: bool = True) -> Tensor:
    """ApproxSign of the per-sample normalised input, fused (ReCU, OvSW: their activation binarizer).

    forward: ``sign(x~)`` with x~ = x r, r = (Var_unbiased over (C,H,W) of each sample + eps)^(-1/2), which
    equals ``sign(x)`` because r > 0, so the forward pass never forms x~.
    backward: ``dL/dx~ = dL/dy * max(0, 2 - 2|x~|)`` chained through x~ = x r: ``dL/dx = r dL/dx~`` plus,
    when ``through_std`` (ReCU: the std is differentiated), ``-r^3 (x - mean(x)) / (n - 1) * sum(dL/dx~ * x)``;
    without it (OvSW detaches the std) only the first term.
    Equal to ``sign_approx(x * r)`` with autograd through r, in fewer passes over the activation.
    """
    return _SignApproxPerSample.apply(x, eps, through_std)


SURROGATES = {"ste": sign_ste, "clipped": sign_clipped, "approx": sign_approx}
