"""Each surrogate's forward is sign and its backward equals the formula, edges included."""
import math

import pytest
import torch

from bnnbench.nn.surrogates import sign_approx, sign_clipped, sign_ede, sign_ste

U = torch.tensor([-2.0, -1.0 - 1e-6, -1.0, -0.75, -0.5, -1e-7, 0.0, 1e-7, 0.25, 0.5, 1.0 - 1e-6, 1.0, 1.0 + 1e-6,
                  3.0], dtype=torch.float64)


def grad_of(fn, u, *args):
    u = u.clone().requires_grad_()
    y = fn(u, *args)
    g = torch.linspace(0.5, 2.0, len(u), dtype=u.dtype)  # a non-constant upstream gradient
    y.backward(g)
    return y.detach(), u.grad, g


@pytest.mark.parametrize("fn", [sign_ste, sign_clipped, sign_approx])
def test_forward_is_torch_sign(fn):
    y, _, _ = grad_of(fn, U)
    assert torch.equal(y, torch.sign(U))
    assert y[U == 0].item() == 0.0


def test_identity_ste():
    _, du, g = grad_of(sign_ste, U)
    assert torch.equal(du, g)


def test_clipped_identity_window_edges():
    _, du, g = grad_of(sign_clipped, U)
    expected = [0 if abs(u) > 1 else 1 for u in U.tolist()]
    assert torch.equal(du, g * torch.tensor(expected, dtype=U.dtype))
    # the edges +-1 pass the gradient, just outside does not
    assert du[U == 1.0].item() != 0 and du[U == -1.0].item() != 0
    assert du[U == 1.0 + 1e-6].item() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_clipped_identity_window_is_exact_in_every_dtype(dtype):
    eps = torch.finfo(dtype).eps  # 1 + eps is the neighbour of 1 above; 1 - eps / 2 the one below
    u = torch.tensor([-1 - eps, -1.0, -(1 - eps / 2), 0.0, 1 - eps / 2, 1.0, 1 + eps], dtype=dtype)
    _, du, g = grad_of(sign_clipped, u)
    assert torch.equal(du, g * torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=dtype))


def test_approxsign_piecewise():
    _, du, g = grad_of(sign_approx, U)
    def f(u):
        if -1 <= u < 0:
            return 2 + 2 * u
        if 0 <= u < 1:
            return 2 - 2 * u
        return 0.0
    expected = torch.tensor([f(u) for u in U.tolist()], dtype=U.dtype)
    assert torch.allclose(du, g * expected, atol=1e-12)
    assert du[U == 0.0].item() == pytest.approx(2 * g[U == 0.0].item())
    assert du[U == 1.0].item() == 0 and du[U == -1.0].item() == 0


@pytest.mark.parametrize("t,k", [(0.1, 10.0), (1.0, 1.0), (10.0, 1.0), (0.001, 1000.0)])
def test_ede(t, k):
    _, du, g = grad_of(sign_ede, U, t, k)
    # 1 - tanh^2 = 1 / cosh^2, evaluated without the cancellation of 1 - tanh^2 near |t u| >> 1
    expected = torch.tensor([k * t / math.cosh(t * u) ** 2 for u in U.tolist()], dtype=U.dtype)
    assert torch.allclose(du, g * expected, rtol=1e-12, atol=1e-14 * k * t)  # float64 rounding of k t
    assert torch.all(du >= 0)


def test_ede_starts_as_identity():
    # at e = 0 of IR-Net's schedule k * t = 1 and t is small: close to the identity STE
    _, du, g = grad_of(sign_ede, U, 1e-3, 1e3)
    assert torch.allclose(du, g, rtol=1e-5)


@pytest.mark.parametrize("through_std", [True, False])
def test_fused_per_sample_approxsign_equals_autograd_reference(through_std):
    from bnnbench.nn.surrogates import sign_approx_per_sample
    torch.manual_seed(1)
    x = (torch.randn(3, 4, 5, 5, dtype=torch.float64) * 0.7).requires_grad_()
    g = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    var = x.var(dim=(1, 2, 3), keepdim=True)  # the textbook unbiased variance as the reference
    std = torch.sqrt(var + 1e-5)
    ref = sign_approx(x / (std if through_std else std.detach()))
    (gr,) = torch.autograd.grad(ref, x, g)
    out = sign_approx_per_sample(x, 1e-5, through_std=through_std)
    (gf,) = torch.autograd.grad(out, x, g)
    assert torch.equal(out, ref)
    assert torch.allclose(gf, gr, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_per_sample_statistics_and_gradient_do_not_depend_on_memory_layout(layout):
    from bnnbench.nn.surrogates import sample_moments, sample_rows, sign_approx_per_sample
    torch.manual_seed(2)
    base = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    g = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    x = {"contiguous": base.clone(), "channels_last": base.contiguous(memory_format=torch.channels_last),
         "strided": torch.randn(3, 8, 5, 6, dtype=torch.float64)[:, ::2].copy_(base)}[layout]
    assert torch.equal(x, base)
    if layout == "channels_last":
        assert sample_rows(x).data_ptr() == x.data_ptr()  # a view, not a copy
    mean, var = sample_moments(x)
    assert torch.allclose(mean.flatten(), base.mean(dim=(1, 2, 3)), rtol=1e-12)
    assert torch.allclose(var.flatten(), base.var(dim=(1, 2, 3)), rtol=1e-12)
    xs = x.clone().requires_grad_() if layout != "strided" else x.requires_grad_()
    (gx,) = torch.autograd.grad(sign_approx_per_sample(xs, 1e-5, through_std=True), xs, g)
    xb = base.clone().requires_grad_()
    std = torch.sqrt(xb.var(dim=(1, 2, 3), keepdim=True) + 1e-5)
    (gr,) = torch.autograd.grad(sign_approx(xb / std), xb, g)
    assert torch.allclose(gx, gr, rtol=1e-10, atol=1e-12)


def test_binarizers_in_fp16_and_bf16_match_fp32():
    """Every surrogate and every registered method's input binarizer: exact signs, gradients equal to
    float32's rounded to the low dtype, nothing lost to 0 and nothing overflowing (bnnbench/tools/precision.py)."""
    from bnnbench.tools.precision import compare
    results = compare("cpu")
    assert {r.dtype for r in results} == {"float16", "bfloat16"}
    assert {"sign_ede[t=10]", "sign_approx_per_sample", "ovsw.binarize_input"} <= {r.name for r in results}
    bad = [r for r in results if not r.ok]
    assert not bad, bad


def test_per_sample_statistics_are_float32_for_low_precision_inputs():
    from bnnbench.nn.surrogates import sample_moments
    x = (torch.randn(2, 64, 16, 16) * 40).half()       # sum x^2 per sample ~ 2.6e7, beyond fp16's 65504
    mean, var = sample_moments(x)
    assert mean.dtype == var.dtype == torch.float32 and torch.isfinite(var).all()
    ref = x.double().flatten(1).var(dim=1)
    assert torch.allclose(var.flatten().double(), ref, rtol=1e-4)


def test_shift_keeps_the_activation_dtype_and_trains_the_threshold():
    from bnnbench.nn.layers import shift
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)
    beta = torch.nn.Parameter(torch.full((1, 4, 1, 1), 0.25))
    y = shift(x, beta)
    assert y.dtype == torch.bfloat16 and torch.equal(y, x - beta.detach().to(torch.bfloat16))
    y.float().sum().backward()
    assert beta.grad.dtype == torch.float32 and torch.equal(beta.grad, torch.full_like(beta, -18.0))
    assert (x - beta).dtype == torch.float32     # what shift avoids: promotion, twice the memory


def test_binary_conv_counts_exact_zero_inputs():
    from bnnbench.nn.layers import BinaryConv2d, take_sign0_counts
    conv = torch.nn.Sequential(BinaryConv2d(2, 3, 3, padding=1), BinaryConv2d(3, 3, 1))
    x = torch.randn(2, 2, 4, 4)
    x[0, 0, :2, :2] = 0.0                              # 4 exact zeros in the first layer's input
    conv(x)
    zeros, seen = take_sign0_counts(conv)
    first_out = conv[0](x)
    assert zeros == 4 + int((first_out == 0).sum()) and seen == 2 * 2 * 16 + 2 * 3 * 16
    take_sign0_counts(conv)
    assert take_sign0_counts(conv) == (0, 0)           # the counters restart after each call
    assert "sign0" not in conv.state_dict().keys() and "0.sign0" not in conv.state_dict()
