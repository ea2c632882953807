"""The binary convolution every method builds on.

:class:`BinaryConv2d` is an ``nn.Conv2d`` (stride, padding, dilation, groups and padding mode are kept) whose
forward is::

    y = conv(binarize_input(x), binarize_weight(W)) * output_scale()

A method plugin subclasses it and supplies the three pieces (and ``effective_sign``, the sign its forward
pass really uses, for flip tracking). The input is binarised *before* the convolution pads it, so border
taps see zeros, as in every reference implementation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnnbench.nn.surrogates import sign_ste

FILTER_DIMS = (1, 2, 3)  # the dimensions spanning one output filter of a (C_out, C_in, kh, kw) weight


@dataclass(frozen=True)
class InferenceForm:
    """A binary conv at evaluation: ``y[o] = scale[o] * sum over taps inside the input of sign(x) * signs[o]``.

    ``signs``: int8 (C_out, C_in, kh, kw), every value -1 or +1; ``scale``: float32 (C_out,). Padding,
    stride and the rest of the geometry are the conv's own. This is what ``bnnbench/deploy/packed.py`` packs
    into bits for the XNOR-popcount kernels.
    """

    signs: Tensor
    scale: Tensor


class BinaryConv2d(nn.Conv2d):
    """Conv2d with binarised weight and input; subclasses define the binarizers and the scale.

    ``binary_inputs`` / ``binary_weights`` (both True unless the run's ``binarize`` setting says otherwise,
    see :meth:`bnnbench.plugins.method.Method.set_binarize`): with real weights the conv uses
    :meth:`real_weight` (default the latent weight W itself: no weight binarizer, no output scale), with real
    inputs it convolves x itself.
    """

    binary_inputs = True
    binary_weights = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, padding_mode: str = "zeros", hparams=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode)
        #: the method's resolved hyperparameters (every key present, values of the declared types)
        self.hparams = dict(hparams or {})
        #: [binary inputs exactly 0, binary inputs seen] since the last :func:`take_sign0_counts`; sign(0) = 0
        #: is a third value a 1-bit kernel cannot represent (rare in fp32, common under bf16 autocast)
        self.register_buffer("sign0", torch.zeros(2, dtype=torch.int64), persistent=False)

    # --- the three pieces a method supplies -------------------------------------------------------------
    def binarize_input(self, x: Tensor) -> Tensor:
        """Binary activation (forward value and surrogate backward). Default: sign with identity STE."""
        return sign_ste(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        """Binary weight, including any per-filter scale folded into it. Default: sign with identity STE."""
        return sign_ste(w)

    def output_scale(self) -> Tensor | None:
        """Per-output-channel factor multiplied onto the conv output, shape (1, C_out, 1, 1), or None."""
        return None

    def real_weight(self, w: Tensor) -> Tensor:
        """The weight a stage with real-valued weights convolves (``binarize: activations``, stage 1 of
        two-stage training; or a full-precision teacher). Default: the latent weight W itself, no scale.
        BiPer's stage 1 convolves sin(omega W) * alpha (``methods/biper.py``)."""
        return w

    # --- flip tracking ------------------------------------------------------------------------------------
    def effective_sign(self) -> Tensor:
        """The sign pattern the forward pass uses (positive scales and clamps do not change it)."""
        return torch.sign(self.weight)

    # --- deployment -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def signs_and_scale(self) -> tuple[Tensor, Tensor] | None:
        """(signs, scale) with ``binarize_weight(W) * output_scale() == signs * scale[o]`` exactly, signs in
        {-1, +1} and one positive magnitude per output filter o; None when the effective weight has a zero
        or a second magnitude in some filter (such a layer cannot be deployed as 1-bit weights)."""
        w = self.binarize_weight(self.weight.detach())
        scale = self.output_scale()
        if scale is not None:
            w = w * scale.detach().to(w.dtype).reshape(-1, *([1] * (w.dim() - 1)))
        mag = w.abs().amax(dim=FILTER_DIMS)
        if not (torch.equal(w.abs(), mag.view(-1, 1, 1, 1).expand_as(w)) and bool((mag > 0).all())):
            return None
        return torch.sign(w), mag

    def inference_form(self) -> InferenceForm:
        """This conv at evaluation as ``y = scale[o] * conv(sign(x), signs)`` (see :class:`InferenceForm`).

        Default: from :meth:`signs_and_scale` (a negative learnt scale folds into the signs), provided the
        eval-mode input binarizer is ``torch.sign`` (checked on a probe tensor that includes 0). A method
        whose deployed form differs overrides this.
        """
        where = f"{type(self).__name__} ({type(self).__module__})"
        if not (self.binary_inputs and self.binary_weights):
            raise ValueError(f"{where}: this run binarises {'activations only' if self.binary_inputs else 'nothing'}"
                             f" (binarize setting), so the layer has no 1-bit form")
        form = self.signs_and_scale()
        if form is None:
            zeros = int((self.effective_sign() == 0).sum())
            raise ValueError(f"{where}: the effective weight binarize_weight(W) * output_scale() is not +-a_o "
                             f"within each output filter" + (f": {zeros} weights have sign 0 (exactly 0), which "
                             f"1-bit weights cannot represent" if zeros else "; override inference_form"))
        probe = torch.linspace(-2.0, 2.0, 41).view(1, 1, 41, 1).expand(1, self.in_channels, 41, 1).contiguous()
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                probe_out = self.binarize_input(probe.clone().to(self.weight.device))
        finally:
            self.train(was_training)
        if not torch.equal(probe_out.cpu(), torch.sign(probe)):
            raise ValueError(f"{where}: the eval-mode input binarizer is not torch.sign(x); "
                             f"override inference_form to give the layer's deployed form")
        signs, scale = form
        return InferenceForm(signs=signs.to(torch.int8).cpu(), scale=scale.float().cpu().contiguous())

    def _eval_weights(self) -> tuple[Tensor, Tensor] | None:
        """:meth:`signs_and_scale`, cached until a parameter or buffer of this layer changes."""
        state = (*self.parameters(), *(b for n, b in self.named_buffers() if n != "sign0"))
        key = tuple((t.data_ptr(), t._version) for t in state)
        cache = self.__dict__.get("_eval_cache")
        if cache is None or cache[0] != key:
            cache = (key, self.signs_and_scale())
            self.__dict__["_eval_cache"] = cache
        return cache[1]

    def forward(self, x: Tensor) -> Tensor:
        if not (self.binary_inputs and self.binary_weights):  # a stage of two-stage training, or a teacher
            xb = self._counted(self.binarize_input(x)) if self.binary_inputs else x
            return self._conv_forward(xb, self.real_weight(self.weight), self.bias)
        if not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # evaluation computes what the 1-bit kernels compute: exact integer conv of +-1, then the scale
            # (eager only: the cache and the representability check are host logic; a compiled model
            # evaluates with the training formula below, equal to float rounding)
            form = self._eval_weights()
            if form is not None:
                out = self._conv_forward(self._counted(self.binarize_input(x)), form[0].to(x.dtype), None)
                out = out * form[1].to(out.dtype).view(1, -1, 1, 1)
                return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)
        wb = self.binarize_weight(self.weight)
        scale = self.output_scale()
        if scale is not None:  # conv(x, W) * a_c == conv(x, a_c W): scaling the small weight is cheaper
            wb = wb * scale.reshape(-1, *([1] * (wb.dim() - 1)))
        return self._conv_forward(self._counted(self.binarize_input(x)), wb, self.bias)

    def _counted(self, xb: Tensor) -> Tensor:
        """``xb``, after adding its exact zeros and its size to :attr:`sign0` (on the device, no sync)."""
        self.sign0[0] += xb.numel() - torch.count_nonzero(xb)
        self.sign0[1] += xb.numel()
        return xb

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary={type(self).__name__}"


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    """All binary convolutions of ``model`` in module order, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]


def take_sign0_counts(model: nn.Module, reduce: Callable[[Tensor], Tensor] = lambda t: t) -> tuple[int, int]:
    """(exact zeros, elements) among the binary convs' binarised inputs since the last call, summed over
    the layers and by ``reduce`` (the engine passes the all-ranks sum under DDP); the counters restart at 0.
    One host read."""
    layers = [m for _, m in binary_layers(model)]
    if not layers:
        return 0, 0
    total = torch.stack([m.sign0 for m in layers]).sum(dim=0)
    for m in layers:
        m.sign0.zero_()
    zeros, seen = reduce(total).tolist()
    return int(zeros), int(seen)


def shift(x: Tensor, beta: Tensor) -> Tensor:
    """``x - beta`` in ``x``'s dtype: a learnable threshold (an fp32 parameter) applied to a bf16/fp16
    activation under autocast would otherwise promote the activation to fp32 and double its memory; the
    gradient still reaches ``beta`` in fp32."""
    return x - beta.to(x.dtype)
