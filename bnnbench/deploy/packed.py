"""1-bit deployment: a trained model with its binary convs run by the XNOR-popcount kernels.

:func:`packed_model` copies a trained model and replaces every :class:`~bnnbench.nn.layers.BinaryConv2d` by a
:class:`PackedBinaryConv2d` built from the layer's :meth:`~bnnbench.nn.layers.BinaryConv2d.inference_form`
(the plugin API: no method is named here), its weight signs packed 64 to a word. Everything else (stem,
BatchNorm, activations, shortcuts, head) stays a torch op. :func:`float_model` is the same network with
full-precision ``nn.Conv2d`` in place of the binary ones (the FP32 baseline of the speed-ups).

:func:`check_exact` proves the packed form computes what the trained model computes: for each binary conv,
on the input the trained model gives it, the kernel's integer outputs equal the float conv of the +-1
values exactly at every output position with no input tap exactly 0 (``torch.sign(0) = 0`` in the
trained model, +1 in the packed form: such positions are counted, not compared); logits agree to float
tolerance and top-1 predictions are compared one for one.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.deploy import kernels
from bnnbench.nn.layers import BinaryConv2d, binary_layers


def _pair(v, what: str, where: str) -> int:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    if a != b:
        raise ValueError(f"{where}: {what} = {v!r} is not supported by the 1-bit kernels (square only)")
    return int(a)


class PackedBinaryConv2d(nn.Module):
    """``y = scale[o] * (n - 2 popcount(bits(x) XOR bits(W)))`` over the taps inside the input
    (``bnnbench/deploy/kernels.py``); float32 output in channels_last memory. A form with offsets
    (:class:`~bnnbench.nn.layers.InferenceForm`: threshold, box sum, border terms) packs sign(x - threshold),
    gets the box sum of the input signs from one extra all-ones filter in the same kernel call (an integer,
    exact), adds the input-independent border map (cached per input size) and combines the parts with the
    form's own float ops, as the trained model's evaluation does."""

    def __init__(self, layer: BinaryConv2d, name: str, isa: str | None = None):
        super().__init__()
        where = f"binary conv {name!r} ({type(layer).__name__})"
        if layer.groups != 1 or _pair(layer.dilation, "dilation", where) != 1 or layer.padding_mode != "zeros" \
                or layer.bias is not None or isinstance(layer.padding, str):
            raise ValueError(f"{where}: groups={layer.groups}, dilation={layer.dilation}, padding={layer.padding!r},"
                             f" padding_mode={layer.padding_mode!r}, bias={layer.bias is not None}: the 1-bit kernels"
                             f" take groups 1, dilation 1, integer zero padding and no bias")
        form = layer.inference_form()
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size = tuple(layer.kernel_size)
        self.stride = _pair(layer.stride, "stride", where)
        self.padding = _pair(layer.padding, "padding", where)
        self.isa, self._isa = isa, kernels.isa_index(isa)
        self.form = form
        self.rows = self.out_channels + (form.act_sum is not None)  # + the all-ones filter of the box sum
        signs = form.signs if self.rows == self.out_channels else \
            torch.cat([form.signs, torch.ones_like(form.signs[:1])])
        packed = kernels.pack_weights(signs)
        self.packed_shape = tuple(packed.shape)  # kept flat: .to(memory_format=...) must not permute it
        self.register_buffer("packed_weight", packed.reshape(-1))
        self.register_buffer("scale", form.scale.to(torch.float32).contiguous())
        self._borders: dict[tuple[int, int], Tensor | None] = {}

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding)

    def _shifted(self, x: Tensor) -> Tensor:
        return x.float() if self.form.threshold is None else x.float() - self.form.threshold

    def _integers(self, x: Tensor) -> Tensor:
        packed_x = kernels.pack_activations(self._shifted(x), self.isa)
        return kernels.binconv2d(packed_x, self.packed_weight.view(self.packed_shape), self.in_channels,
                                 self.rows, self.kernel_size, self.stride, self.padding, None, self.isa)

    def dot(self, x: Tensor) -> Tensor:
        """The integer conv outputs (int32) of the signs before any float term."""
        return self._integers(x)[:, :self.out_channels]

    def forward(self, x: Tensor) -> Tensor:
        x = x.float().contiguous(memory_format=torch.channels_last)
        if self.form.plain:
            return kernels.binconv2d_float(x, self.packed_weight.view(self.packed_shape), self.in_channels,
                                           self.out_channels, self.kernel_size, self.stride, self.padding,
                                           self.scale, self._isa)
        ints = self._integers(x).float()
        key = tuple(x.shape[-2:])
        if key not in self._borders:
            self._borders[key] = self.form.border(self._conv, x[:1].contiguous())
        box = ints[:, self.out_channels:] if self.rows > self.out_channels else None
        return self.form.combine(ints[:, :self.out_channels], box, self._borders[key])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, packed={self.packed_shape}" + ("" if self.form.plain else ", offsets"))


def replace_layers(model: nn.Module, make) -> nn.Module:
    """A deep copy of ``model`` (eval mode, channels_last) with every binary conv replaced by ``make(layer, name)``."""
    out = copy.deepcopy(model).eval()
    for name, layer in binary_layers(out):
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, make(layer, name))
    return out.to(memory_format=torch.channels_last)


def packed_model(model: nn.Module, isa: str | None = None) -> nn.Module:
    """The model with every binary conv run by the XNOR-popcount kernel (``isa``: None for the CPU's best)."""
    kernels.ext()  # a missing build is one clear error here, not one per layer
    return replace_layers(model, lambda layer, name: PackedBinaryConv2d(layer, name, isa))


def float_model(model: nn.Module) -> nn.Module:
    """The same topology with full-precision ``nn.Conv2d`` (the latent float weights) in place of binary convs."""
    def plain(layer: BinaryConv2d, name: str) -> nn.Conv2d:
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
        conv.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
        return conv
    return replace_layers(model, plain)


def binary_inputs(model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The model's eval-mode logits on ``x`` and the input each binary conv received (by layer name)."""
    seen: dict[str, Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
             for name, layer in binary_layers(model)]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(x)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


@dataclass
class LayerCheck:
    name: str
    outputs: int          # output values compared
    mismatches: int       # of those, how many differ (0 for an exact kernel)
    zero_inputs: int      # input values exactly at the threshold (sign 0 in the trained model, +1 packed)
    skipped_outputs: int  # output values with a zero input in their window: not compared


@dataclass
class ExactReport:
    layers: list[LayerCheck] = field(default_factory=list)
    samples: int = 0
    max_logit_diff: float = 0.0
    max_logit: float = 0.0
    top1_same: int = 0

    @property
    def exact(self) -> bool:
        return all(c.mismatches == 0 for c in self.layers)

    def to_dict(self) -> dict:
        return {**asdict(self), "exact": self.exact}


def check_layer(name: str, trained: BinaryConv2d, packed: PackedBinaryConv2d, x: Tensor) -> LayerCheck:
    """Integer outputs of the packed conv against the trained conv's float conv of +-1 values, on input ``x``."""
    form = trained.inference_form()
    signs = form.input_signs(x.float())
    ref = trained._conv_forward(signs, form.signs.float(), None)  # exact integers in fp32
    got = packed.dot(x).to(torch.float32)
    zeros = (signs == 0).float()
    window = torch.ones(1, trained.in_channels, *trained.kernel_size)  # every channel, every tap
    touched = (F.conv2d(zeros, window, stride=trained.stride, padding=trained.padding) > 0).expand_as(ref)
    mism = int(((ref != got) & ~touched).sum())
    return LayerCheck(name, int((~touched).sum()), mism, int(zeros.sum()), int(touched.sum()))


def check_exact(model: nn.Module, packed: nn.Module, x: Tensor) -> ExactReport:
    """Compare ``packed`` (from :func:`packed_model`) with the trained ``model`` on the batch ``x``."""
    logits, inputs = binary_inputs(model, x)
    report = ExactReport(samples=x.shape[0])
    packed_layers = dict(packed.named_modules())
    for name, layer in binary_layers(model):
        if name in inputs:
            report.layers.append(check_layer(name, layer, packed_layers[name], inputs[name]))
    with torch.no_grad():
        out = packed(x.contiguous(memory_format=torch.channels_last))
    report.max_logit_diff = float((out - logits).abs().max())
    report.max_logit = float(logits.abs().max())
    report.top1_same = int((out.argmax(1) == logits.argmax(1)).sum())
    return report
