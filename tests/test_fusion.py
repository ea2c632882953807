"""Fused binary blocks (bnnbench/deploy/fusion.py, the Epilogue of csrc/binconv.cpp): the epilogue against its
formula on hand-made tensors on every ISA path, and the graph matching (every method x backbone fused: the
registry-enumerated test of test_kernels.py)."""
import pytest
import torch
import torch.nn.functional as F
from test_kernels import ISAS
from torch import nn

from bnnbench.deploy import fusion, kernels
from bnnbench.deploy import packed as deploy
from bnnbench.nn.layers import Shift
from bnnbench.plugins import METHODS

if kernels.unavailable_reason():
    pytest.skip(kernels.unavailable_reason(), allow_module_level=True)


def operands(seed: int, n=2, c=70, h=6, w=9, co=40, k=3):
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(n, c, h, w, generator=g), torch.randn(co, c, k, k, generator=g).sign()
    per_channel = [torch.randn(co, generator=g) for _ in range(4)]
    return x, wt, per_channel, g


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ["none", "clamp", "prelu"])
@pytest.mark.parametrize("stride", [1, 2])
def test_epilogue_is_its_formula_in_the_same_rounding_order(isa, act, stride):
    x, wt, (scale, bias, slope, post), g = operands(7 + stride)
    dot = F.conv2d(x.sign(), wt, stride=stride, padding=1)
    residual = torch.randn(dot.shape, generator=g).contiguous(memory_format=torch.channels_last)
    y = dot * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1) + residual   # the formula, left to right
    y = {"none": y, "clamp": y.clamp(-0.5, 0.75), "prelu": torch.where(y > 0, y, y * slope.view(1, -1, 1, 1))}[act]
    y = y + post.view(1, -1, 1, 1)
    e = {"scale": scale, "bias": bias, "act": fusion.ACTS[act], "lo": -0.5, "hi": 0.75,
         "slope": slope if act == "prelu" else torch.empty(0), "post": post}
    got, bits = kernels.binconv2d_fused(kernels.pack_activations(x, isa), kernels.pack_weights(wt), 70, 40, (3, 3),
                                        stride, 1, e, residual, True, kernels.ISAS.index(isa))
    assert torch.equal(got, y), (got - y).abs().max()
    assert torch.equal(bits, kernels.pack_activations(y, isa))       # the next conv's input, packed alike
    assert got.is_contiguous(memory_format=torch.channels_last)
    plain, none = kernels.binconv2d_fused(kernels.pack_activations(x, isa), kernels.pack_weights(wt), 70, 40,
                                          (3, 3), stride, 1, {**e, "act": 0, "bias": torch.empty(0),
                                                              "post": torch.empty(0)}, None, False, -1)
    assert none is None and torch.equal(plain, dot * scale.view(1, -1, 1, 1))


@pytest.mark.parametrize("isa", ISAS)
def test_sharing_rows_and_channel_blocks_among_threads_changes_nothing(isa):
    # 7 output rows do not divide among 2 or 3 threads: each row's 3 channel blocks are split too, and the
    # activation and packing run after every block of a row is done
    x, wt, (scale, bias, slope, post), g = operands(11, n=1, h=7, co=70)
    residual = torch.randn(1, 70, 7, 9, generator=g).contiguous(memory_format=torch.channels_last)
    e = {"scale": scale, "bias": bias, "act": fusion.ACTS["prelu"], "lo": -1.0, "hi": 1.0, "slope": slope,
         "post": post}
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(kernels.binconv2d_fused(kernels.pack_activations(x, isa), kernels.pack_weights(wt), 70,
                                                   70, (3, 3), 1, 1, e, residual, True, kernels.ISAS.index(isa)))
    finally:
        torch.set_num_threads(threads)
    y = F.conv2d(x.sign(), wt, padding=1) * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1) + residual
    y = torch.where(y > 0, y, y * slope.view(1, -1, 1, 1)) + post.view(1, -1, 1, 1)
    for got, bits in results:
        assert torch.equal(got, y) and torch.equal(bits, kernels.pack_activations(y, isa))


def test_bad_epilogue_operands_are_named():
    x, wt, (scale, *_), _ = operands(1)
    px, pw = kernels.pack_activations(x), kernels.pack_weights(wt)
    e = {"scale": scale, "bias": torch.zeros(3), "act": 0, "lo": -1.0, "hi": 1.0, "slope": torch.empty(0),
         "post": torch.empty(0)}
    with pytest.raises(RuntimeError, match="bias must be float32 with one value per output channel \\(40\\), got 3"):
        kernels.binconv2d_fused(px, pw, 70, 40, (3, 3), 1, 1, e, None, False)
    with pytest.raises(RuntimeError, match="PReLU needs its slope"):
        kernels.binconv2d_fused(px, pw, 70, 40, (3, 3), 1, 1, {**e, "bias": torch.empty(0), "act": 2}, None, False)
    with pytest.raises(RuntimeError, match="residual must be float32 NHWC of the output's shape"):
        kernels.binconv2d_fused(px, pw, 70, 40, (3, 3), 1, 1, {**e, "bias": torch.empty(0)},
                                torch.zeros(2, 40, 3, 3).contiguous(memory_format=torch.channels_last), False)


class Block(nn.Module):
    """conv -> BN -> + x -> Shift -> PReLU -> Shift, then a second conv reading that output and a residual."""

    def __init__(self, c: int = 16):
        super().__init__()
        make = METHODS.get("xnor")().conv
        self.conv1, self.bn1, self.conv2, self.bn2 = make(c, c, 3, padding=1), nn.BatchNorm2d(c), \
            make(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.move1, self.prelu, self.move2, self.act = Shift(c), nn.PReLU(c), Shift(c), nn.Hardtanh()
        for m in (self.bn1, self.bn2):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.normal_()
            m.bias.data.normal_()
        for m in (self.move1, self.move2):
            m.bias.data.normal_()

    def forward(self, x):
        h = self.move2(self.prelu(self.move1(self.bn1(self.conv1(x)) + x)))
        return self.act(self.bn2(self.conv2(h)) + h)


def test_chains_are_found_from_the_graph_and_equal_the_torch_ops():
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 16, 8, 8)
    packed = deploy.packed_model(model)
    fused, records = fusion.fuse(packed)
    assert [(r.layer, r.absorbed, r.residual, r.emits_packed, r.reads_packed, r.unfused) for r in records] == [
        ("conv1", ["bn1", "move1", "prelu", "move2"], True, True, False, None),
        ("conv2", ["bn2", "act"], True, False, True, None)]
    assert isinstance(fused.get_submodule("conv1"), fusion.FusedBinaryConv2d)
    with torch.no_grad():
        ref, got = packed(x), fused(x)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (got - ref).abs().max()
    assert isinstance(packed.get_submodule("conv1"), deploy.PackedBinaryConv2d)   # the input model is untouched
    assert deploy.check_exact(model, fused, x).exact


def test_the_traced_graph_computes_what_the_fused_model_computes():
    """fusion.Traced: the kernels as torch operators in a TorchScript trace, one trace per input shape."""
    torch.manual_seed(1)
    fused, _ = fusion.fuse(deploy.packed_model(Block().eval()))
    traced = fusion.Traced(fused)
    with torch.no_grad():
        for n in (2, 1, 2):
            x = torch.randn(n, 16, 8, 8).contiguous(memory_format=torch.channels_last)
            assert torch.equal(traced(x), fused(x))
    assert len(traced._traces) == 2
    assert kernels.ops().binconv2d_fused is not None   # torch.ops.bnnbench.*


def test_what_cannot_fuse_stays_and_says_why():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = METHODS.get("xnor")().conv(8, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.conv(x))

    class Untraceable(Odd):
        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x   # data-dependent control flow

    model = deploy.packed_model(Odd().eval())
    fused, (rec,) = fusion.fuse(model)
    assert rec.unfused == "its output goes to pool (MaxPool2d), not to BatchNorm2d/add/Hardtanh/PReLU"
    assert isinstance(fused.get_submodule("conv"), deploy.PackedBinaryConv2d)
    assert fused is model   # nothing fused: the packed model itself, not a graph of it
    model = deploy.packed_model(Untraceable().eval())
    same, (rec,) = fusion.fuse(model)
    assert same is model and rec.unfused.startswith("the model cannot be traced by torch.fx (TraceError")
    assert fusion.summary([rec])["fused"] == 0
