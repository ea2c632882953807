"""The XNOR-popcount kernels (bnnbench/deploy/kernels.py, csrc/binconv.cpp) against float convolutions of +-1 values,
and the packed model (bnnbench/deploy/packed.py) against the trained model, for every method x backbone."""
import pytest
import torch
import torch.nn.functional as F

from bnnbench.deploy import fusion, kernels
from bnnbench.deploy import packed as deploy
from bnnbench.nn.layers import BinaryConv2d, binary_layers
from bnnbench.plugins import ARCHITECTURES, METHODS
from bnnbench.plugins.arch import build_model

if kernels.unavailable_reason():
    pytest.skip(kernels.unavailable_reason(), allow_module_level=True)

ISAS = kernels.ISAS[: kernels.ISAS.index(kernels.best_isa()) + 1]  # every path this CPU can run


def test_bit_layout_by_hand():
    x = torch.tensor([-1.0, 2.0, -0.5, 0.0, 3.0]).view(1, 5, 1, 1)  # negative -> bit 1; 0 -> bit 0 (+1)
    for isa in ISAS:
        assert kernels.pack_activations(x, isa).view(torch.int64).tolist() == [[[[0b00101]]]]
    w = torch.ones(2, 70, 1, 1)
    w[1, 0], w[1, 69] = -1, -1                     # channel 69 is bit 5 of the second word
    packed = kernels.pack_weights(w).view(torch.int64)
    assert packed.shape == (1, 1, 2, 16)            # at most 16 output channels: blocks of 16 lanes
    assert packed[0, 0, :, 1].tolist() == [1, 1 << 5] and packed[0, 0, :, 0].tolist() == [0, 0]
    assert packed[0, 0, :, 2:].abs().sum() == 0     # padded output lanes: zero bits
    assert kernels.pack_weights(torch.ones(17, 70, 3, 3)).shape == (1, 9, 2, 32)


def test_padding_contributes_zero_at_the_borders():
    """All +1 inputs and weights, 3x3 / padding 1: corners see 4 taps, edges 6, the interior 9 (times C)."""
    c = 3
    x, w = torch.ones(1, c, 5, 6), torch.ones(4, c, 3, 3)
    for isa in ISAS:
        out = kernels.binconv2d(kernels.pack_activations(x, isa), kernels.pack_weights(w), c, 4, (3, 3), 1, 1,
                                isa=isa)
        assert out.dtype == torch.int32
        assert out[0, 0, 0, 0] == 4 * c and out[0, 0, 0, 2] == 6 * c and out[0, 0, 2, 2] == 9 * c
        assert out[0, 0, 4, 5] == 4 * c and out[0, 0, 2, 0] == 6 * c


@pytest.mark.parametrize("shape", [
    # n, c_in, h, w, c_out, k, stride, padding: ragged words and lanes, 4-position runs and borders; AVX2 sums
    # bytes at >= 4 words per tap and widens every 31 words: across kernel rows (512) and within one (704: 33)
    (2, 16, 9, 13, 16, 3, 1, 1), (1, 70, 6, 11, 40, 3, 2, 1), (2, 128, 8, 8, 65, 3, 1, 1),
    (1, 3, 5, 5, 7, 1, 1, 0), (1, 64, 7, 7, 33, 3, 2, 0), (1, 200, 4, 9, 3, 3, 1, 2), (1, 512, 3, 3, 32, 3, 2, 1),
    (2, 256, 5, 9, 64, 3, 1, 1), (1, 704, 3, 8, 40, 3, 1, 1),
    # few input channels (a part of one word per tap), a 5x5 and a 1x1 kernel
    (1, 32, 9, 14, 40, 3, 2, 1), (2, 8, 6, 11, 16, 3, 1, 1), (1, 16, 7, 12, 33, 5, 1, 2), (1, 16, 6, 6, 8, 1, 1, 0)])
def test_integer_outputs_equal_float_conv_of_signs(shape):
    n, c, h, w, co, k, s, p = shape
    g = torch.Generator().manual_seed(sum(shape))
    x, wt = torch.randn(n, c, h, w, generator=g), torch.randn(co, c, k, k, generator=g).sign()
    wt[wt == 0] = 1  # a weight of exactly 0 (randn can draw it) is not binary
    ref = F.conv2d(x.sign(), wt, stride=s, padding=p)  # integers, exact in float32
    scale = torch.rand(co, generator=g) + 0.5
    for isa in ISAS:
        px = kernels.pack_activations(x, isa)
        dot = kernels.binconv2d(px, kernels.pack_weights(wt), c, co, (k, k), s, p, isa=isa)
        assert torch.equal(dot.float(), ref), isa
        scaled = kernels.binconv2d(px, kernels.pack_weights(wt), c, co, (k, k), s, p, scale=scale, isa=isa)
        assert torch.equal(scaled, ref * scale.view(1, -1, 1, 1)), isa  # one rounding, as the trained model
        assert scaled.is_contiguous(memory_format=torch.channels_last)


def test_unsupported_isa_and_geometry_are_clear_errors():
    with pytest.raises(ValueError, match="isa = 'sse9' is not allowed"):
        kernels.pack_activations(torch.zeros(1, 2, 3, 3), "sse9")
    conv = METHODS.get("ovsw")().conv(8, 8, 3, padding=1, dilation=2)
    with pytest.raises(ValueError, match="dilation"):
        deploy.PackedBinaryConv2d(conv, "layer.x")


def model_for(method: str, arch: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A model of ``arch`` with BatchNorm statistics from one batch, at a reduced input size for ImageNet."""
    spec = ARCHITECTURES.get(arch)
    size = (3, 48, 48) if spec.input_size[-1] > 64 else spec.input_size
    torch.manual_seed(0)
    model = build_model(METHODS.get(method)(), arch, 10)
    for _, layer in binary_layers(model):  # random init draws a few exact zeros (sign 0): not binary weights
        with torch.no_grad():
            layer.weight[layer.weight == 0] = 1e-3
    x = torch.randn(3, *size)
    with torch.no_grad():
        model(x)
    return model.eval().to(memory_format=torch.channels_last), x


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
@pytest.mark.parametrize("method", METHODS.names())
def test_packed_model_computes_what_the_trained_model_computes(method, arch):
    """Unfused: integers exact, the same floats where no activation is exactly 0. Fused (bnnbench/deploy/fusion.py):
    the same integers, logits within float tolerance of the unfused ones, top-1 identical; a form with offsets
    is not fused and says so."""
    model, x = model_for(method, arch)
    packed = deploy.packed_model(model)
    report = deploy.check_exact(model, packed, x)
    assert len(report.layers) == len(binary_layers(model))
    assert report.exact, [c for c in report.layers if c.mismatches]
    assert sum(c.outputs for c in report.layers) > 0
    if sum(c.zero_inputs for c in report.layers) == 0:   # no sign(0) anywhere: the logits are the same floats
        assert report.max_logit_diff == 0.0 and report.top1_same == x.shape[0]
    else:
        assert sum(c.skipped_outputs for c in report.layers) > 0
    fused, records = fusion.fuse(packed)
    with torch.no_grad():
        ref, got = packed(x), fused(x)
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max()) and torch.equal(got.argmax(1), ref.argmax(1))
    layers = dict(binary_layers(model))
    for r in records:   # the exactness check's operand: the fused layer's integers are the packed layer's
        x_in = torch.randn(1, layers[r.layer].in_channels, 6, 6)
        assert torch.equal(fused.get_submodule(r.layer).dot(x_in), packed.get_submodule(r.layer).dot(x_in))
        assert (r.unfused == "its inference form has offsets (threshold, box sum or border terms)") == \
            (not layers[r.layer].inference_form().plain)


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_every_backbone_fused_on_every_cpu_path_gives_the_same_integers_and_predictions(arch):
    """The fused model (fusion.fuse) of each backbone with each kernel path this CPU has, forced: every fused
    conv's integers equal the portable unfused layer's, logits within float tolerance, top-1 identical."""
    model, x = model_for("xnor", arch)
    ref_model = deploy.packed_model(model, isa="portable")
    with torch.no_grad():
        ref = ref_model(x)
    layers = dict(binary_layers(model))
    for isa in ISAS:
        fused, records = fusion.fuse(deploy.packed_model(model, isa=isa))
        assert any(r.unfused is None for r in records), (isa, records)
        with torch.no_grad():
            got = fused(x)
        assert (got - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max()), isa
        assert torch.equal(got.argmax(1), ref.argmax(1)), isa
        for r in records:
            x_in = torch.randn(2, layers[r.layer].in_channels, 9, 9)
            assert torch.equal(fused.get_submodule(r.layer).dot(x_in), ref_model.get_submodule(r.layer).dot(x_in))


def test_zero_activations_are_counted_and_follow_the_plus_one_convention():
    conv = METHODS.get("xnor")().conv(4, 2, 3, padding=1).eval()
    x = torch.randn(1, 4, 5, 5)
    x[0, :, 2, 2] = 0.0                               # one pixel, all channels: 9 outputs see it
    packed = deploy.PackedBinaryConv2d(conv, "c")
    check = deploy.check_layer("c", conv, packed, x)
    assert check.zero_inputs == 4 and check.skipped_outputs == 2 * 9 and check.mismatches == 0
    signs = conv.inference_form().signs.float()
    plus_one = F.conv2d(torch.where(x == 0, 1.0, x.sign()), signs, padding=1)
    assert torch.equal(packed.dot(x).float(), plus_one)


class TwoLevelConv(BinaryConv2d):
    def binarize_weight(self, w):
        return torch.where(w > 0, 1.0, -0.5)          # two magnitudes: not 1-bit weights times a scale


class ScaledInputConv(BinaryConv2d):
    def binarize_input(self, x):
        return torch.sign(x) * x.abs().mean()         # XNOR-Net's K: not sign(x)


def test_inference_form_refuses_what_one_bit_cannot_represent():
    with pytest.raises(ValueError, match="not \\+-a_o within each output filter"):
        TwoLevelConv(4, 4, 3).inference_form()
    with pytest.raises(ValueError, match="input binarizer is not torch.sign"):
        ScaledInputConv(4, 4, 3).inference_form()
    conv = BinaryConv2d(4, 4, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="1 weights have sign 0"):
        conv.inference_form()
    with torch.no_grad():                               # a negative learnt scale folds into the signs
        conv.weight[0, 0, 0, 0] = 0.3
    form = conv.inference_form()
    assert form.signs.dtype == torch.int8 and set(form.signs.unique().tolist()) == {-1, 1}
    assert torch.equal(form.scale, torch.ones(4))


def test_eval_forward_is_the_inference_form_and_training_is_unchanged():
    conv = METHODS.get("recu")().conv(8, 6, 3, padding=1)
    with torch.no_grad():
        conv.alpha[1] = -0.7                            # a negative learnt scale
    x = torch.randn(2, 8, 6, 6)
    conv.eval()
    with torch.no_grad():
        got = conv(x)
    form = conv.inference_form()
    want = F.conv2d(x.sign(), form.signs.float(), padding=1) * form.scale.view(1, -1, 1, 1)
    assert torch.equal(got, want)
    wb = conv.binarize_weight(conv.weight) * conv.output_scale().view(-1, 1, 1, 1)
    assert torch.allclose(got, F.conv2d(x.sign(), wb, padding=1), atol=1e-5)
    conv.train()
    with torch.no_grad():
        conv.tau.fill_(0.99)                            # a changed buffer invalidates the cached eval form
    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x.sign(), conv.inference_form().signs.float(), padding=1)
                           * conv.inference_form().scale.view(1, -1, 1, 1))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
def test_a_form_with_offsets_runs_exactly_on_the_kernels_and_in_the_export(stride, isa, tmp_path):
    """AdaBin's affine sets (negative alpha_a, nonzero beta_a and filter means): the kernel's dot and box sum
    are exact integers, the packed and the exported layer give the trained eval forward's floats bit for bit,
    and that forward equals the training formula conv(A, Q) to float rounding (padding after binarising)."""
    from bnnbench.deploy.export import form_entry, form_from_entry
    conv = METHODS.get("adabin")().conv(24, 40, 3, stride=stride, padding=1)
    with torch.no_grad():
        conv.alpha_a.fill_(-0.7)
        conv.beta_a.fill_(0.3)
        conv.weight.add_(0.05 * torch.randn(40, 1, 1, 1))
    x = torch.randn(2, 24, 9, 9)
    x[0, 0, 0, :3] = 0.3                                # exactly at the threshold: sign 0 in the trained model
    conv.eval()
    with torch.no_grad():
        got = conv(x)
        want = F.conv2d(conv.binarize_input(x), conv.binarize_weight(conv.weight), stride=stride, padding=1)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
    form = conv.inference_form()
    assert not form.plain and form.threshold.item() == pytest.approx(0.3)
    layer = deploy.PackedBinaryConv2d(conv, "c", isa)
    check = deploy.check_layer("c", conv, layer, x)
    assert check.mismatches == 0 and check.zero_inputs == 3 and check.outputs > 0
    x1 = x[1:]                                          # no zero input: the floats agree exactly
    with torch.no_grad():
        assert torch.equal(layer(x1).contiguous(), conv(x1))
        rebuilt = form_from_entry(form_entry(form), list(conv.weight.shape), "test", "c")
        assert torch.equal(rebuilt.apply(rebuilt.input_signs(x), lambda i, w: F.conv2d(i, w, None, stride, 1)), got)
    ints = layer._integers(x1)                          # the extra all-ones filter: the box sum of the signs
    assert torch.equal(ints[:, -1:].float(), F.conv2d(torch.sign(x1 - 0.3), torch.ones(1, 24, 3, 3), stride=stride,
                                                      padding=1))


def test_missing_build_is_reported(monkeypatch):
    monkeypatch.setattr(kernels, "_load", lambda: RuntimeError("Ninja is required to load C++ extensions"))
    assert "1-bit kernels unavailable" in kernels.unavailable_reason()
    with pytest.raises(RuntimeError, match="Ninja is required"):
        deploy.packed_model(torch.nn.Sequential())
