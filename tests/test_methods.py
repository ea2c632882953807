"""Every method against the formulas in its docstring (methods/*.py), on hand-made tensors."""
import math

import pytest
import torch
from bnnbench.methods.irnet import ede_schedule
from bnnbench.methods.ovsw import ags_, sad_
from bnnbench.methods.recu import tau_schedule
from torch import nn

from bnnbench.engine import train_step
from bnnbench.errors import ConfigError
from bnnbench.plugins import METHODS


def layer(name, cin=4, cout=6, **hp):
    conv = METHODS.get(name)(overrides=hp).conv(cin, cout, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight)
    return conv


def per_channel_values(wb):
    return [torch.unique(row.abs()) for row in wb.detach().flatten(1)]


def test_xnor_weights_are_plus_minus_l1_mean_per_filter():
    conv = layer("xnor")
    wb = conv.binarize_weight(conv.weight)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3))
    assert torch.allclose(wb.abs().flatten(1), alpha[:, None].expand(-1, wb[0].numel()))
    assert torch.equal(torch.sign(wb), torch.sign(conv.weight))


def test_xnor_gradient_is_exact_chain_rule():
    conv = layer("xnor")
    w = conv.weight.detach().clone().double().mul_(3).requires_grad_()  # some |w| > 1
    g = torch.randn_like(w)
    conv.binarize_weight(w).backward(g)
    n = w[0].numel()
    alpha = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    s = torch.sign(w.detach())
    expected = alpha * (w.detach().abs() <= 1) * g + s / n * (s * g).sum(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(w.grad, expected)


def test_bireal_weights_and_clamp_gradient():
    conv = layer("bireal")
    w = (conv.weight.detach() * 4).requires_grad_()
    wb = conv.binarize_weight(w)
    alpha = w.detach().abs().mean(dim=(1, 2, 3))
    for row, a in zip(per_channel_values(wb), alpha):
        assert torch.allclose(row, a.reshape(1))
    g = torch.randn_like(w)
    wb.backward(g)
    assert torch.equal(w.grad, g * (w.detach().abs() <= 1))  # no alpha factor


def test_irnet_libra_pb_weights():
    conv = layer("irnet")
    wb = conv.binarize_weight(conv.weight)
    w = conv.weight.detach()
    wf = w.flatten(1)
    std = (wf - wf.mean(1, keepdim=True)) / wf.std(1, keepdim=True)
    s = torch.round(torch.log2(std.abs().mean(1)))
    assert torch.equal(s, torch.zeros_like(s))  # 2^s = 1 for Gaussian weights (Libra-PB's scale, methods/irnet.py)
    assert set(torch.unique(wb).tolist()) <= {-1.0, 1.0}
    assert torch.equal(torch.sign(wb).flatten(1), torch.sign(std))
    assert torch.equal(conv.effective_sign().flatten(1), torch.sign(wf - wf.mean(1, keepdim=True)))


def test_irnet_scale_is_power_of_two_when_not_one():
    conv = layer("irnet")
    with torch.no_grad():  # a filter that is mostly zeros with a few outliers: mean|W^| far from 1
        conv.weight.zero_()
        conv.weight[:, 0, 0, 0] = 1.0
    wb = conv.binarize_weight(conv.weight)
    for row in per_channel_values(wb):
        assert len(row) == 1 and math.log2(row.item()).is_integer() and row.item() != 1.0


@pytest.mark.parametrize("epochs,t_min,t_max", [(400, 1e-3, 10.0), (300, 0.1, 10.0)])
def test_irnet_ede_schedule_first_and_last_epoch(epochs, t_min, t_max):
    t0, k0 = ede_schedule(0, epochs, t_min, t_max)
    assert t0 == pytest.approx(t_min) and k0 == pytest.approx(1 / t_min)
    tl, kl = ede_schedule(epochs - 1, epochs, t_min, t_max)
    expected = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * (epochs - 1) / epochs)
    assert tl == pytest.approx(expected) and kl == 1.0
    assert 9.5 < tl < 10
    method = METHODS.get("irnet")(overrides={"t_min": t_min, "t_max": t_max})
    model = nn.Sequential(method.conv(4, 4, 3))
    method.on_epoch_start(model, epochs - 1, epochs)
    assert model[0].t.item() == pytest.approx(tl) and model[0].k.item() == 1.0


def test_recu_tau_schedule_values():
    assert tau_schedule(0, 600, 0.85, 0.99) == pytest.approx(0.85)
    assert tau_schedule(300, 600, 0.85, 0.99) == pytest.approx(0.903, abs=5e-4)
    assert tau_schedule(599, 600, 0.85, 0.99) == pytest.approx(0.990, abs=5e-4)
    method = METHODS.get("recu")()
    model = nn.Sequential(method.conv(4, 4, 3))
    method.on_epoch_start(model, 300, 600)
    assert model[0].tau.item() == pytest.approx(tau_schedule(300, 600, 0.85, 0.99), rel=1e-6)


def test_recu_weights_are_signs_and_clamp_at_laplace_quantile():
    conv = layer("recu")
    w = conv.weight.detach().double().requires_grad_()
    conv = conv.double()
    wb = conv.binarize_weight(w)
    assert set(torch.unique(wb).tolist()) <= {-1.0, 1.0}
    def standardise(v):
        v0 = v - v.mean(dim=(1, 2, 3), keepdim=True)
        return v0 / (torch.sqrt(v0.var(dim=(1, 2, 3), keepdim=True) + 1e-5) / (2 * math.sqrt(2)))
    w1 = standardise(w.detach())
    q = -w1.abs().mean() * math.log(2 - 2 * 0.85)  # the 0.85-quantile of Laplace(0, mean|W1|)
    assert torch.equal(wb, torch.sign(torch.clamp(w1, -q, q)))
    inside = (w1.abs() <= q).double()
    assert 0 < inside.mean() < 1  # some weights are clamped, some are not
    g = torch.randn_like(wb)
    wb.backward(g)
    # STE through sign, the clamp's gradient 1 inside [-Q, Q] and 0 outside, then autograd through the
    # standardisation (Q carries no gradient)
    ref = w.detach().clone().requires_grad_()
    (standardise(ref) * inside * g).sum().backward()
    assert torch.allclose(w.grad, ref.grad, rtol=1e-10, atol=1e-12)
    # the output is scaled by the learnable alpha of shape (C_out, 1, 1), initialised in [0, 1)
    assert conv.alpha.shape == (conv.out_channels, 1, 1) and 0 <= conv.alpha.min() and conv.alpha.max() < 1


def test_ovsw_weights_and_scale():
    conv = layer("ovsw")
    wb = conv.binarize_weight(conv.weight)
    assert set(torch.unique(wb).tolist()) <= {-1.0, 1.0}
    wf = conv.weight.detach().flatten(1)
    expected = ((wf - wf.mean(1, keepdim=True)) / torch.sqrt(wf.var(1, keepdim=True) + 1e-5)).abs().mean(1)
    assert torch.allclose(conv.output_scale().flatten(), expected)
    assert not conv.output_scale().requires_grad


def test_ags_scales_small_ratio_channels_to_exactly_delta():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    g = torch.randn_like(w)
    norms_w = w.flatten(1).norm(dim=1)
    ratios = torch.tensor([1e-3, 0.5, 0.039, 0.2], dtype=torch.float64)  # channels 0 and 2 below 0.04
    g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * (ratios * norms_w).view(-1, 1, 1, 1)
    before = g.clone()
    ags_(g, w, 0.04)
    after = g.flatten(1).norm(dim=1) / norms_w
    assert after[0].item() == pytest.approx(0.04, rel=1e-12) and after[2].item() == pytest.approx(0.04, rel=1e-12)
    assert torch.equal(g[1], before[1]) and torch.equal(g[3], before[3])
    # scaled channels keep their direction
    assert torch.allclose(g[0] / g[0].norm(), before[0] / before[0].norm())


def test_sad_ema_and_extra_decay_land_on_silent_weights_only():
    w = torch.tensor([[0.5, -0.2, 0.3, 0.0, -0.7]])
    prev = torch.tensor([[0.4, 0.1, 0.3, 0.2, -0.6]])      # elements 1 and 3 flipped (sign(0) != +1)
    tracker = torch.tensor([[0.0, 0.0, 2e-4, 0.0, 1e-4]])
    g = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    m, sigma, gamma = 0.999, 1e-4, 9e-4
    silent = sad_(g, w, tracker, prev, gamma=gamma, momentum=m, threshold=sigma)
    f = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]])
    t_expected = m * torch.tensor([[0.0, 0.0, 2e-4, 0.0, 1e-4]]) + (1 - m) * f
    assert torch.allclose(tracker, t_expected, rtol=1e-6)
    # T' = [0, 1e-3, 1.998e-4, 1e-3, 0.999e-4]: below sigma = 1e-4 are elements 0 and 4
    assert silent.tolist() == [[True, False, False, False, True]]
    expected_g = 1.0 + gamma * w * silent
    assert torch.equal(g, expected_g)
    assert torch.equal(prev, w)


def test_ovsw_hook_edits_only_binary_weight_grads():
    method = METHODS.get("ovsw")(family="cifar")
    model = nn.Sequential(method.conv(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 16, 2))
    method.prepare(model)
    x = torch.randn(2, 3, 4, 4)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    method.after_backward(model)
    for n, p in model.named_parameters():
        if n == "0.weight":
            assert not torch.equal(p.grad, grads[n])  # tracker starts at 0: every weight is silent
        else:
            assert torch.equal(p.grad, grads[n])


def _tiny(method_name, seed=0):
    torch.manual_seed(seed)
    method = METHODS.get(method_name)(family="cifar")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), method.conv(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    method.prepare(model)
    return method, model


def test_gradient_hook_composes_with_amp_unscaling():
    """With a real GradScaler (scale 2^16) the step equals the unscaled one: the hook sees true units."""
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 1])
    results = []
    seen = []
    for enabled in (False, True):
        method, model = _tiny("ovsw")
        original = method.after_backward

        def spy(m, _orig=original):
            seen.append(m[1].weight.grad.abs().max().item())
            _orig(m)
        method.after_backward = spy
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=enabled)
        for _ in range(3):
            train_step(model, x, y, nn.CrossEntropyLoss(), opt, scaler, method, use_amp=False)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in results[0]:
        assert torch.allclose(results[0][k].float(), results[1][k].float(), rtol=1e-5, atol=1e-7), k
    assert seen[0] == pytest.approx(seen[3], rel=1e-5)  # first step: same gradient magnitude seen by the hook


def test_hparam_overrides_are_validated():
    with pytest.raises(ConfigError, match="did you mean 'delta'"):
        METHODS.get("ovsw")(overrides={"delt": 0.1})
    with pytest.raises(ConfigError, match="must be a number"):
        METHODS.get("ovsw")(overrides={"delta": "big"})
    assert METHODS.get("ovsw")(family="cifar").hp["delta"] == 0.04
    assert METHODS.get("ovsw")(family="imagenet").hp["gamma"] == 2e-5
    assert METHODS.get("ovsw")(family="cifar", overrides={"delta": 0.02}).hp["delta"] == 0.02


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_has_paper_docstring_and_effective_sign(name):
    cls = METHODS.get(name)
    assert cls.paper and cls.conv_class.__doc__
    conv = cls().conv(2, 2, 3)
    s = conv.effective_sign()
    assert s.shape == conv.weight.shape and set(torch.unique(s).tolist()) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_binary_conv_is_the_composition_of_its_pieces(name, stride, training):
    """y = conv(zero-pad(binarize_input(x)), binarize_weight(W)) * output_scale, for every registered method:
    the input is binarised before padding (border taps see 0, not sign(0-pad) = ±1)."""
    conv = METHODS.get(name)().conv(4, 6, 3, stride=stride, padding=1).double().train(training)
    nn.init.kaiming_normal_(conv.weight)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64) + 0.3  # a nonzero mean: padding zeros differ from sign(x)
    with torch.no_grad():
        y = conv(x)
        xb = torch.nn.functional.pad(conv.binarize_input(x), (1, 1, 1, 1))
        ref = torch.nn.functional.conv2d(xb, conv.binarize_weight(conv.weight), stride=stride)
        scale = conv.output_scale()
        if scale is not None:
            ref = ref * scale.reshape(1, -1, 1, 1)
    assert torch.allclose(y, ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y, torch.nn.functional.conv2d(  # padding before binarising would differ
        torch.sign(torch.nn.functional.pad(x, (1, 1, 1, 1), value=1.0)), conv.binarize_weight(conv.weight),
        stride=stride) * (1 if scale is None else scale.reshape(1, -1, 1, 1)))


def test_bop_owns_the_binary_weights_and_the_recipe_optimizer_the_rest():
    """The optimizer seam: Bop's binary weights leave the recipe's SGD (no weight decay, no momentum from
    it), stay +-1 after a step, flip where W m > tau, and both optimizers' states round-trip a state dict."""
    from bnnbench.methods.bop import BopConv2d

    from bnnbench.config.spec import TrainSettings
    from bnnbench.engine.optim import CompositeOptimizer, make_optimizer
    from bnnbench.plugins.arch import build_model
    method = METHODS.get("bop")(family="cifar", overrides={"gamma": 1e-2, "threshold": 1e-6})
    model = build_model(method, "cresnet20", 10)
    method.prepare(model)
    st = TrainSettings(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=4)
    opt = make_optimizer(model, st, method, steps_per_epoch=3)
    assert isinstance(opt, CompositeOptimizer)
    binary = {id(layer.weight) for layer in method.layers(model, BopConv2d)}
    assert binary and not binary & {id(p) for g in opt.recipe.param_groups for p in g["params"]}
    assert binary == {id(p) for g in opt.own.param_groups for p in g["params"]}
    before = [layer.weight.detach().clone() for layer in method.layers(model, BopConv2d)]
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [layer.weight.grad.clone() for layer in method.layers(model, BopConv2d)]
    opt.step()
    for layer, w0, g in zip(method.layers(model, BopConv2d), before, grads):
        assert set(layer.weight.unique().tolist()) <= {-1.0, 1.0}
        flip = w0 * (1e-2 * g) > 1e-6                    # m_1 = gamma g from m_0 = 0
        assert torch.equal(layer.weight != w0, flip)
    state = opt.state_dict()
    assert set(state) == {"recipe", "method"} and state["method"]["param_groups"][0]["bop_step"] == 1
    fresh = make_optimizer(model, st, method, steps_per_epoch=3)
    fresh.load_state_dict(state)
    assert fresh.own.param_groups[0]["bop_step"] == 1
    with pytest.raises(ValueError, match="not a composite one"):
        fresh.load_state_dict(state["recipe"])
    assert [method.gamma_at(step, 3, 4) for step in (0, 100 * 3 - 1, 100 * 3, 300 * 3)] == pytest.approx(
        [1e-2, 1e-2, 1e-3, 1e-5])                        # x0.1 every 100 epochs of 3 steps
    linear = METHODS.get("bop")(family="imagenet")
    assert [linear.gamma_at(step, 3, 4) for step in (0, 6, 12, 99)] == pytest.approx([1e-4, 5.05e-5, 1e-6, 1e-6])


def test_rebnn_scaled_sign_and_its_coded_gradients_by_hand():
    """W_b = 0.02 |alpha| sign(W); dW = |alpha| g, d|alpha| = sum g W (the latent W, as coded); the gamma edit
    adds gamma (W - 0.02 |alpha| sign W) to dW; RBONN's mask tests the index at each sorted position."""
    from bnnbench.methods.rebnn import drelu_mask
    method = METHODS.get("rebnn")(overrides={"gamma": 0.5})
    conv = method.conv(1, 1, (1, 3)).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.5, -0.2, 0.0]]]]))
        conv.scale_raw.fill_(-2.0)                        # used through abs: s = 2, d alpha_raw = -d s
    w = conv.binarize_weight(conv.weight)
    assert w.flatten().tolist() == pytest.approx([0.04, -0.04, 0.0])
    w.backward(torch.tensor([[[[1.0, 3.0, -1.0]]]], dtype=torch.float64))
    assert conv.weight.grad.flatten().tolist() == pytest.approx([2.0, 6.0, -2.0])
    assert conv.scale_raw.grad.item() == pytest.approx(-(1.0 * 0.5 + 3.0 * -0.2))
    conv.add_reconstruction_grad(0.5)
    r = [0.5 - 0.04, -0.2 + 0.04, 0.0]
    assert conv.weight.grad.flatten().tolist() == pytest.approx([2.0 + 0.5 * r[0], 6.0 + 0.5 * r[1], -2.0])
    edit = -0.5 * (r[0] * 0.02 + r[1] * -0.02)            # -gamma sum R b, times sign(alpha_raw) = -1
    assert conv.scale_raw.grad.item() == pytest.approx(-(1.0 * 0.5 + 3.0 * -0.2) - edit)
    assert drelu_mask(torch.tensor([3.0, -0.5, 1.0, 2.0, -4.0]).view(5, 1, 1, 1)).flatten().tolist() == \
        [1.0, 0.0, 0.0, 1.0, 0.0]                         # argsort |a| = [1, 2, 3, 0, 4]: entries < floor(0.4*5) = 2


def test_bop_rule_by_hand():
    """m = m + gamma (g - m); W flips where W m > tau, keeps below, and a tie W m = tau gives +1 (larq)."""
    from bnnbench.methods.bop import bop_update_
    w = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 0.0], dtype=torch.float64)
    m = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.25, 0.0], dtype=torch.float64)
    g = torch.tensor([2.0, -2.0, -2.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    flip = bop_update_(w, g, m, gamma=0.5, threshold=0.125)
    assert m.tolist() == [1.0, -1.0, -1.0, 1.0, 0.125, 0.5]
    assert flip.tolist() == [True, False, True, False, False, False]
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0, 1.0]   # entry 4: tie 1 * 0.125 = tau -> +1; entry 5: 0 -> +1


def test_adabin_sets_and_the_inference_form_by_hand():
    """A = alpha_a (sign((x - beta_a)/alpha_a) + beta_a); Q = alpha_w sign((W - beta_w)/alpha_w) + beta_w (biased
    std); the deployed form on a 1x1 conv with padding 1 gives conv(A, Q) with zero padding after binarising."""
    conv = METHODS.get("adabin")().conv(2, 1, 1, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[3.0]], [[1.0]]]]))      # beta_w = 2, alpha_w = 1: Q = (3, 1)
        conv.alpha_a.fill_(-0.5)
        conv.beta_a.fill_(0.25)
    x = torch.tensor([[[[1.0, 0.25]], [[-1.0, 0.0]]]], dtype=torch.float64)
    a = conv.binarize_input(x)                        # u = (x - 0.25) / -0.5: sign -1, 0, +1, +1
    assert a.flatten().tolist() == pytest.approx([-0.5 * (-1 + 0.25), -0.5 * 0.25, -0.5 * 1.25, -0.5 * 1.25])
    assert conv.binarize_weight(conv.weight).flatten().tolist() == pytest.approx([3.0, 1.0])
    conv.eval()
    with torch.no_grad():
        y = conv(x)
    want = torch.nn.functional.conv2d(a, torch.tensor([[[[3.0]], [[1.0]]]], dtype=torch.float64), padding=1)
    assert torch.allclose(y, want, atol=1e-12) and y[0, 0, 0, 0].item() == 0.0   # a padded tap: 0, not A(0)
    form = conv.inference_form()
    assert form.threshold.item() == 0.25 and form.signs.flatten().tolist() == [1, -1]
    assert form.scale.item() == 0.5 and form.act_sum.item() == 1.0               # |alpha_a| alpha_w, |alpha_a| beta_w
    assert form.weight_sum.item() == -0.125 and form.count.item() == -0.25       # alpha_a beta_a alpha_w, .. beta_w
