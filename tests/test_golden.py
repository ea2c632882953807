"""Parity with the authors' own code, method by method: golden tensors in ../shared/reference/golden (see its
README)."""
import pytest
import torch
from bnnbench.methods.ovsw import ags_, sad_
from torch import nn

from bnnbench.plugins import METHODS


def run_conv(method, d, stride, dtype, setup):
    """Train-mode forward + backward of ``grad_out`` and an eval forward of a 16->32 3x3 conv of ``method`` (a
    registered name or a Method instance) with the golden weight; ``setup(conv)`` sets the rest."""
    method = METHODS.get(method)() if isinstance(method, str) else method
    conv = method.conv(16, 32, 3, stride=stride, padding=1).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(d["weight"])
    setup(conv)
    x = d["x"].clone().requires_grad_()
    conv.train()
    out = conv(x)
    out.backward(d["grad_out"])
    conv.eval()
    with torch.no_grad():
        out_eval = conv(d["x"])
    return conv, x, out.detach(), out_eval


@pytest.mark.parametrize("name", ["ovsw_conv_16x32_s1_f32.pt", "ovsw_conv_16x32_s2_f32.pt",
                                  "ovsw_conv_16x32_s1_f64.pt"])
def test_ovsw_conv_matches_reference(golden, name):
    d = golden(name)
    dtype = d["x"].dtype
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    conv, x, out, out_eval = run_conv("ovsw", d, d["config"]["stride"], dtype, lambda c: None)
    assert torch.allclose(out, d["out_train"], **tol)
    assert torch.allclose(out_eval, d["out_eval"], **tol)
    assert torch.allclose(x.grad, d["grad_x"], **tol)
    assert torch.allclose(conv.weight.grad, d["grad_weight"], **tol)
    assert torch.allclose(conv.output_scale().flatten(), d["scale"], **tol)


@pytest.mark.parametrize("name", ["recu_conv_16x32_s1_f32.pt", "recu_conv_16x32_s2_f32.pt",
                                  "recu_conv_16x32_s1_f64.pt"])
@pytest.mark.parametrize("tau", ["tau0.85", "tau0.99"])
def test_recu_conv_matches_reference(golden, name, tau):
    d = golden(name)
    sub = d[tau]
    dtype = d["x"].dtype

    def setup(conv):
        with torch.no_grad():
            conv.alpha.copy_(d["alpha"])
            conv.tau.copy_(sub["tau"])
    conv, x, out, out_eval = run_conv("recu", d, d["config"]["stride"], dtype, setup)
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    def scale(t):
        return rel * max(1.0, t.abs().max().item())
    assert torch.allclose(out, sub["out_train"], rtol=rel, atol=scale(sub["out_train"]))
    assert torch.allclose(out_eval, sub["out_eval"], rtol=rel, atol=scale(sub["out_eval"]))
    assert torch.allclose(x.grad, sub["grad_x"], rtol=rel, atol=scale(sub["grad_x"]))
    assert torch.allclose(conv.alpha.grad, sub["grad_alpha"], rtol=rel, atol=scale(sub["grad_alpha"]))
    # hard 0/1 clamp window: allow isolated elements at the threshold to differ in float32 only
    diff = ~torch.isclose(conv.weight.grad, sub["grad_weight"], rtol=rel, atol=scale(sub["grad_weight"]))
    assert diff.sum().item() <= (0 if dtype == torch.float64 else 2)


def test_ovsw_ags_sad_edit_matches_reference(golden):
    d = golden("ovsw_ags_sad_edit_f32.pt")
    hp = d["hparams"]
    g, t, p = d["grad_in"].clone(), d["tracker_in"].clone(), d["weight_prev_in"].clone()
    ratio = ags_(g, d["weight"], hp["delta"])
    assert torch.allclose(g, d["grad_after_ags"], rtol=1e-6, atol=0)
    assert ratio.mean().item() == pytest.approx(d["ags_return"].item(), rel=1e-6)
    scaled_rows = ratio < hp["delta"]
    assert torch.equal(scaled_rows, d["derived_ags_scaled_rows"].bool())
    silent = sad_(g, d["weight"], t, p, gamma=hp["dampen_weight"], momentum=hp["track_momentum"],
                  threshold=hp["track_threshold"])
    assert (silent != d["derived_sad_mask"].bool()).sum().item() == 0
    assert silent.float().mean().item() == pytest.approx(d["sad_return"].item(), rel=1e-6)
    assert torch.allclose(g, d["grad_out"], rtol=1e-6, atol=1e-9)
    assert torch.equal(t, d["tracker_out"])
    assert torch.equal(p, d["weight_prev_out"])


@pytest.mark.parametrize("name", ["reste_conv_16x32_s1_f32.pt", "reste_conv_16x32_s2_f32.pt",
                                  "reste_conv_16x32_s1_f64.pt", "reste_conv_16x32_s2_f64.pt"])
@pytest.mark.parametrize("epoch", ["epoch500", "epoch999"])
def test_reste_conv_matches_reference(golden, name, epoch):
    """ReSTE's layer, forward and backward (power estimator, secant constant on [-m, m], autograd through
    mean|W|), against DravenALG/ReSTE's own outputs; o from the schedule at that epoch of 1000."""
    from bnnbench.methods.reste import ReSTEConv2d, reste_o
    d = golden(name)
    sub, dtype = d[epoch], d["x"].dtype
    assert reste_o(int(epoch[5:]), 1000, 3.0) == sub["o"].item()   # the schedule gives the golden's o

    def setup(conv):
        assert isinstance(conv, ReSTEConv2d) and conv.o.dtype == torch.float32
        conv.o.fill_(sub["o"].item())
    conv, x, out, out_eval = run_conv("reste", d, d["config"]["stride"], dtype, setup)
    rel = 1e-10 if dtype == torch.float64 else 1e-5

    def close(a, b):
        return torch.allclose(a, b, rtol=rel, atol=rel * max(1.0, b.abs().max().item()))
    assert close(out, sub["out_train"]) and close(out_eval, sub["out_eval"])
    assert close(x.grad, sub["grad_x"]) and close(conv.weight.grad, sub["grad_weight"])
    assert torch.allclose(conv.weight.abs().mean().reshape(1), d["scale"], rtol=rel)


def test_reste_estimator_on_hand_made_values():
    """g'(u) = (1/o)|u|^((1-o)/o) on (m, t], m^(1/o)/m on [0, m] (u = 0 included), 0 above t; o = 1: 1[|u| <= t]."""
    from bnnbench.methods.reste import sign_reste
    u = torch.tensor([0.0, 0.05, -0.1, 0.5, -1.0, 1.5, 1.6, -3.0], dtype=torch.float64, requires_grad=True)
    o = torch.tensor([2.0])
    sign_reste(u, o).sum().backward()
    inside = 0.1 ** 0.5 / 0.1
    want = [inside, inside, inside, 0.5 * 0.5 ** -0.5, 0.5, 0.5 * 1.5 ** -0.5, 0.0, 0.0]
    assert torch.allclose(u.grad, torch.tensor(want, dtype=torch.float64))
    u.grad = None
    sign_reste(u, torch.tensor([1.0])).sum().backward()
    assert u.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["biper_conv_16x32_s1_f32.pt", "biper_conv_16x32_s2_f32.pt",
                                  "biper_conv_16x32_s1_f64.pt", "biper_conv_16x32_s2_f64.pt"])
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_biper_conv_matches_reference(golden, name, stage):
    """BiPer's layer in both stages (stage 1: sin(omega W) real weights through ``binarize: activations``;
    stage 2: sign(sin(omega W))), forward, gradients and the CIFAR regulariser, against edmav4/BiPer's own."""
    from bnnbench.methods.biper import BiPer
    d = golden(name)
    sub, dtype = d[stage], d["x"].dtype
    method = BiPer(overrides={"omega": float(d["config"]["freq"]), "tau": float(sub["reg_tau"])})

    def setup(conv):
        method.set_binarize(conv, "activations" if stage == "stage1" else "all")
        with torch.no_grad():
            conv.alpha.copy_(d["alpha"])
    conv, x, out, out_eval = run_conv(method, d, d["config"]["stride"], dtype, setup)
    rel = 1e-10 if dtype == torch.float64 else 1e-5

    def close(a, b):
        return torch.allclose(a, b, rtol=rel, atol=rel * max(1.0, b.abs().max().item()))
    assert close(out, sub["out_train"]) and close(out_eval, sub["out_eval"])
    assert close(x.grad, sub["grad_x"]) and close(conv.alpha.grad, sub["grad_alpha"])
    assert close(conv.weight.grad, sub["grad_weight"])
    conv.weight.grad = None
    reg = method.penalty(conv)
    reg.backward()
    assert close(reg.reshape(1), sub["loss_reg"].reshape(1)) and close(conv.weight.grad, sub["grad_weight_reg"])


def test_biper_weight_sign_is_that_of_the_sine():
    """sign(sin(omega W)): a positive W in (pi/omega, 2 pi/omega) deploys as -1; dW = omega cos(omega W) g."""
    from bnnbench.methods.biper import BiPer
    conv = BiPer().conv(1, 1, 1)
    w = torch.tensor([0.1, 0.2, -0.1, -0.2], dtype=torch.float64)  # omega = 20: sin(2) > 0, sin(4) < 0
    conv = conv.double()
    with torch.no_grad():
        conv.weight.copy_(w.view(4, 1, 1, 1)[:1])
    u = w.clone().requires_grad_()
    bw = conv.binarize_weight(u)
    assert bw.tolist() == [1.0, -1.0, -1.0, 1.0]
    bw.sum().backward()
    assert torch.allclose(u.grad, 20 * torch.cos(20 * w))


def rebnn_step(d, recurrent: bool, prev_grad=None):
    """One training step of a ReBNN/RBONN layer on the golden inputs: forward, backward, the after_backward
    edit; returns (method, conv, x, out_train, out_eval)."""
    from bnnbench.methods.rebnn import ReBNN
    dtype = d["x"].dtype
    gamma = 1e-4 if recurrent else 2e-4
    method = ReBNN(overrides={"recurrent": recurrent, "gamma": gamma})
    conv = method.conv(16, 32, 3, stride=d["config"]["stride"], padding=1).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(d["weight"])
        conv.scale_raw.copy_(d["scale_raw"])
        if recurrent:
            conv.u.copy_(d["u"])
            if prev_grad is not None:
                conv.prev_grad.copy_(prev_grad)
                conv.has_prev.fill_(1.0)
    x = d["x"].clone().requires_grad_()
    conv.train()
    out = conv(x)
    out.backward(d["grad_out"])
    method.after_backward(conv)
    conv.eval()
    with torch.no_grad():
        out_eval = conv(d["x"])
    return method, conv, x, out.detach(), out_eval


def close_rel(a, b, dtype):
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    return torch.allclose(a, b, rtol=rel, atol=rel * max(1.0, b.abs().max().item()))


GOLDEN_SUFFIXES = ["s1_f32", "s2_f32", "s1_f64", "s2_f64"]


@pytest.mark.parametrize("suffix", GOLDEN_SUFFIXES)
def test_rebnn_conv_matches_reference(golden, suffix):
    """ReBNN's layer and its full weight/alpha gradients (plain parts + the gamma edit) against SteveTsui/ReBNN."""
    d = golden(f"rebnn_conv_16x32_{suffix}.pt")
    dtype = d["x"].dtype
    _, conv, x, out, out_eval = rebnn_step(d, recurrent=False)
    assert close_rel(out, d["out_train"], dtype) and close_rel(out_eval, d["out_eval"], dtype)
    assert close_rel(x.grad, d["grad_x"], dtype) and close_rel(conv.weight.grad, d["grad_weight"], dtype)
    assert close_rel(conv.scale_raw.grad, d["grad_scale_raw"], dtype)


@pytest.mark.parametrize("kind", ["rebnn", "rbonn"])
def test_rebnn_gamma_edit_matches_reference(golden, kind):
    """The gamma edit alone (after - before = gamma R for W, -gamma sum R b for |alpha|), tight: it is ~1e-5 of
    the gradient, so it is compared in isolation as the goldens' ``edit`` records it."""
    from bnnbench.methods.rebnn import ReBNN
    e = golden(f"{kind}_conv_16x32_s1_f64.pt")["edit"]
    conv = ReBNN(overrides={"gamma": float(e["gamma"])}).conv(16, 32, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(e["weight"])
        conv.scale_raw.copy_(e["scaling_factor_abs"])
    conv.weight.grad = e["grad_weight_before"].clone()
    conv.scale_raw.grad = e["grad_scale_before"].clone().view_as(conv.scale_raw)
    conv.add_reconstruction_grad(float(e["gamma"]))
    assert torch.allclose(conv.weight.grad - e["grad_weight_before"], e["grad_weight_after"] - e["grad_weight_before"],
                          rtol=1e-9, atol=1e-15)
    assert torch.allclose(conv.scale_raw.grad.flatten() - e["grad_scale_before"].flatten(),
                          (e["grad_scale_after"] - e["grad_scale_before"]).flatten(), rtol=1e-9, atol=1e-15)
    assert torch.allclose(e["weight"] - e["scaling_factor_abs"] * 0.02 * torch.sign(e["weight"]), e["derived_residual"])


@pytest.mark.parametrize("suffix", GOLDEN_SUFFIXES)
def test_rbonn_recurrent_step_matches_reference(golden, suffix):
    """RBONN with the previous gradient (W_eff = W - u D G_prev, the code's argsort mask), and its first step
    (no previous gradient) and eval (never recurrent), against SteveTsui/RBONN."""
    from bnnbench.methods.rebnn import drelu_mask
    d = golden(f"rbonn_conv_16x32_{suffix}.pt")
    dtype = d["x"].dtype
    assert torch.equal(drelu_mask(d["scale_raw"]).flatten().bool(), d["indicator"].bool())
    _, conv, x, out, out_eval = rebnn_step(d, recurrent=True, prev_grad=d["prev_grad"])
    assert close_rel(out, d["out_train"], dtype) and close_rel(out_eval, d["out_eval"], dtype)
    assert close_rel(x.grad, d["grad_x"], dtype) and close_rel(conv.weight.grad, d["grad_weight"], dtype)
    assert close_rel(conv.scale_raw.grad, d["grad_scale_raw"], dtype) and close_rel(conv.u.grad, d["grad_u"], dtype)
    assert torch.equal(conv.prev_grad, conv.weight.grad) and conv.has_prev.item() == 1.0  # kept for the next step
    first = d["first_step"]
    _, conv, x, out, _ = rebnn_step(d, recurrent=True)
    assert close_rel(out, first["out_train"], dtype) and close_rel(x.grad, first["grad_x"], dtype)
    assert close_rel(conv.weight.grad, first["grad_weight"], dtype)
    assert close_rel(conv.scale_raw.grad, first["grad_scale_raw"], dtype)
    assert not conv.u.grad.any()  # no previous gradient: u gets a zero gradient (the authors' u: none)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_bop_trajectory_matches_reference(golden, dtype):
    """Three Bop steps (larq's rule) through BopOptimizer: m and W after each step, the flip condition,
    and the edge entries (tie -> +1, W = 0 -> +1, real-valued W binarised)."""
    from bnnbench.methods.bop import BopOptimizer
    d = golden(f"bop_trajectory_3step_{dtype}.pt")
    w = nn.Parameter(d["steps"][0]["w_before"].clone())
    opt = BopOptimizer([w], lambda step: d["gamma"], d["threshold"])
    for k, s in enumerate(d["steps"]):
        assert torch.equal(w.data, s["w_before"])
        if k == 0:
            opt.state[w]["m"] = s["m_before"].clone()  # the golden's m0 holds the tie entries
        assert torch.equal(opt.state[w]["m"], s["m_before"])
        w.grad = s["grad"].clone()
        opt.step()
        assert torch.allclose(opt.state[w]["m"], s["m_after"], rtol=1e-6 if dtype == "f32" else 1e-14, atol=0)
        assert torch.equal(w.data, s["w_after"]), int((w.data != s["w_after"]).sum())
        assert int((s["w_after"] != s["w_before"]).sum()) == s["n_changed"]
    flat = d["steps"][0]["w_after"].flatten()
    assert flat[:5].tolist() == [1.0, 1.0, 1.0, -1.0, -1.0]  # the edge entries (golden README)


@pytest.mark.parametrize("suffix", GOLDEN_SUFFIXES)
@pytest.mark.parametrize("epoch", ["epoch0", "epoch200", "epoch399"])
def test_adabin_conv_matches_reference(golden, suffix, epoch):
    """AdaBin's layer (affine activation and weight sets, EDE at three points of a 400-epoch schedule, gradients
    to alpha_a, beta_a through both paths) against huawei-noah's own; eval runs the four-term inference form."""
    from bnnbench.methods.adabin import AdaBinConv2d
    from bnnbench.methods.irnet import ede_schedule
    d = golden(f"adabin_conv_16x32_{suffix}.pt")
    sub, dtype = d[epoch], d["x"].dtype
    t, k = ede_schedule(int(epoch[5:]), 400, 1e-3, 10.0)
    assert (t, k) == pytest.approx((sub["t"].item(), sub["k"].item()), rel=1e-6)  # the schedule gives its t, k

    def setup(conv):
        assert isinstance(conv, AdaBinConv2d)
        with torch.no_grad():
            conv.alpha_a.fill_(d["alpha_a"].item())
            conv.beta_a.fill_(d["beta_a"].item())
            conv.t.fill_(sub["t"].item())
            conv.k.fill_(sub["k"].item())
    conv, x, out, out_eval = run_conv("adabin", d, d["config"]["stride"], dtype, setup)
    assert close_rel(out, sub["out_train"], dtype) and close_rel(out_eval, sub["out_eval"], dtype)
    assert close_rel(x.grad, sub["grad_x"], dtype) and close_rel(conv.weight.grad, sub["grad_weight"], dtype)
    assert close_rel(conv.alpha_a.grad.reshape(1), sub["grad_alpha_a"].reshape(1), dtype)
    assert close_rel(conv.beta_a.grad.reshape(1), sub["grad_beta_a"].reshape(1), dtype)


@pytest.mark.parametrize("suffix", GOLDEN_SUFFIXES)
def test_adabin_inference_form_is_the_four_term_algebra(golden, suffix):
    """The deployed form's parts are the golden's T1..T4 (zero padding after binarisation) and their sum its
    recombination; x = beta_a exactly gives sign 0 (A = alpha_a beta_a) in both."""
    from bnnbench.methods.adabin import AdaBin
    d = golden(f"adabin_conv_16x32_{suffix}.pt")
    dtype, stride = d["x"].dtype, d["config"]["stride"]
    conv = AdaBin().conv(16, 32, 3, stride=stride, padding=1).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(d["weight"])
        conv.alpha_a.fill_(d["alpha_a"].item())
        conv.beta_a.fill_(d["beta_a"].item())
        form = conv.deployed_form()
    def geometry(i, w):
        return torch.nn.functional.conv2d(i, w, None, stride, 1)
    s = form.input_signs(d["x"])
    assert int((s == 0).sum()) == 4 and bool((s[0, 0, 0, 4:8] == 0).all())  # the golden's x = beta_a pins
    assert torch.equal(geometry(s, form.signs), d["derived_T1_conv_sa_sw"])
    ones = torch.ones(1, 16, 3, 3, dtype=dtype)
    assert torch.equal(geometry(s, ones).expand_as(d["derived_T2_conv_sa_1"]), d["derived_T2_conv_sa_1"])
    assert torch.equal(geometry(torch.ones_like(d["x"][:1]), ones).expand_as(d["derived_T4_conv_1_1"]),
                       d["derived_T4_conv_1_1"])
    assert close_rel(form.apply(s, geometry), d["derived_out_algebra"], dtype)
    assert torch.allclose(form.scale / d["alpha_a"].abs(), d["derived_alpha_w"].to(dtype), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_adabin_maxout_matches_reference(golden, dtype):
    from bnnbench.methods.adabin import Maxout
    m = golden(f"adabin_conv_16x32_s1_{dtype}.pt")["maxout"]
    act = Maxout(32).to(m["x"].dtype)
    with torch.no_grad():
        act.pos_scale.copy_(m["pos_scale"].view(1, -1, 1, 1))
        act.neg_scale.copy_(m["neg_scale"].view(1, -1, 1, 1))
    x = m["x"].clone().requires_grad_()
    out = act(x)
    out.backward(m["grad_out"])
    dt = m["x"].dtype
    assert close_rel(out.detach(), m["out"], dt) and close_rel(x.grad, m["grad_x"], dt)
    assert close_rel(act.pos_scale.grad.flatten(), m["grad_pos_scale"], dt)
    assert close_rel(act.neg_scale.grad.flatten(), m["grad_neg_scale"], dt)
