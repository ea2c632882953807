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
    """A binary conv at evaluation, with s = sign(x - threshold) (sign(x) when ``threshold`` is None)::

        y[o, p] = scale[o]      * sum_{taps inside the input} s * signs[o]      (the XNOR-popcount dot)
                + act_sum[o]    * sum_{taps inside the input} s                 (box sum of the input signs)
                + weight_sum[o] * sum_{taps inside the input} signs[o]          (border map of the weight signs)
                + count[o]      * number of (channel, tap) pairs inside the input

    ``signs``: int8 (C_out, C_in, kh, kw), every value -1 or +1; ``scale``: float32 (C_out,); the optional
    terms are float32 (C_out,) (``threshold`` a float32 scalar), None when absent: the common form is the
    first line alone. Padding, stride and the rest of the geometry are the conv's own; padded taps
    contribute nothing (zero padding after binarisation, as every reference does). AdaBin's affine binary
    sets need all four terms (``methods/adabin.py``). ``bnnbench/deploy/packed.py`` runs the dot and the box
    sum on the XNOR-popcount kernels (integers, exact) and :meth:`apply` is the float evaluation that the
    trained model's eval forward, the export (``bnnbench/deploy/export.py``) and the kernels' float epilogue
    share.
    """

    signs: Tensor
    scale: Tensor
    threshold: Tensor | None = None
    act_sum: Tensor | None = None
    weight_sum: Tensor | None = None
    count: Tensor | None = None

    @property
    def plain(self) -> bool:
        """Only the first term: ``y = scale[o] * conv(sign(x), signs)``."""
        return self.threshold is None and self.act_sum is None and self.weight_sum is None and self.count is None

    def input_signs(self, x: Tensor) -> Tensor:
        """s = sign(x - threshold) (torch.sign: 0 where exactly at the threshold)."""
        return torch.sign(x if self.threshold is None else x - self.threshold.to(x.dtype))

    def border(self, conv: Callable[[Tensor, Tensor], Tensor], like: Tensor) -> Tensor | None:
        """weight_sum[o] * conv(1, signs) + count[o] * conv(1, 1): the input-independent part, (1, C_out, Ho, Wo)."""
        if self.weight_sum is None and self.count is None:
            return None
        ones = like.new_ones(1, *like.shape[1:])
        out = 0
        if self.weight_sum is not None:
            out = out + conv(ones, self.signs.to(like.dtype)) * self.weight_sum.to(like.dtype).view(1, -1, 1, 1)
        if self.count is not None:
            taps = conv(ones, like.new_ones(1, *self.signs.shape[1:]))
            out = out + taps * self.count.to(like.dtype).view(1, -1, 1, 1)
        return out

    def combine(self, dot: Tensor, box: Tensor | None, border: Tensor | None) -> Tensor:
        """The form from its integer parts: ``dot`` (N, C_out, Ho, Wo), ``box`` (N, 1, Ho, Wo) or None."""
        out = dot * self.scale.to(dot.dtype).view(1, -1, 1, 1)
        if self.act_sum is not None:
            out = out + box * self.act_sum.to(dot.dtype).view(1, -1, 1, 1)
        return out if border is None else out + border

    def apply(self, s: Tensor, conv: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """The form on the input signs ``s``, with ``conv(input, weight)`` the layer's geometry (float)."""
        dot = conv(s, self.signs.to(s.dtype))
        box = conv(s, s.new_ones(1, *self.signs.shape[1:])) if self.act_sum is not None else None
        return self.combine(dot, box, self.border(conv, s))

    def tensors(self) -> dict[str, Tensor | None]:
        """The optional terms by name (what an export stores besides the signs and the scale)."""
        return {k: getattr(self, k) for k in OPTIONAL_TERMS}


OPTIONAL_TERMS = ("threshold", "act_sum", "weight_sum", "count")


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

    def deployed_form(self) -> InferenceForm | None:
        """This conv at evaluation as an :class:`InferenceForm` in the weight's dtype, or None where it has
        none (then evaluation uses the training formula and the export refuses the layer). Default: the
        plain form from :meth:`signs_and_scale`. A method whose binary sets carry offsets overrides this
        (AdaBin)."""
        form = self.signs_and_scale()
        return None if form is None else InferenceForm(*form)

    def inference_form(self) -> InferenceForm:
        """This conv at evaluation for the export and the 1-bit kernels (see :class:`InferenceForm`): signs
        int8, the rest float32, on the CPU.

        From :meth:`deployed_form` (a negative learnt scale folds into the signs); a plain form also needs
        the eval-mode input binarizer to be ``torch.sign`` (checked on a probe tensor that includes 0).
        """
        where = f"{type(self).__name__} ({type(self).__module__})"
        if not (self.binary_inputs and self.binary_weights):
            raise ValueError(f"{where}: this run binarises {'activations only' if self.binary_inputs else 'nothing'}"
                             f" (binarize setting), so the layer has no 1-bit form")
        with torch.no_grad():
            form = self.deployed_form()
        if form is None:
            zeros = int((self.effective_sign() == 0).sum())
            raise ValueError(f"{where}: the effective weight binarize_weight(W) * output_scale() is not +-a_o "
                             f"within each output filter" + (f": {zeros} weights have sign 0 (exactly 0), which "
                             f"1-bit weights cannot represent" if zeros else "; override deployed_form"))
        if form.plain:
            self._check_sign_input(where)
        extra = {k: None if v is None else v.detach().float().cpu().contiguous() for k, v in form.tensors().items()}
        return InferenceForm(signs=form.signs.to(torch.int8).cpu(), scale=form.scale.float().cpu().contiguous(),
                             **extra)

    def _check_sign_input(self, where: str) -> None:
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
                             f"override deployed_form to give the layer's deployed form")

    def _eval_form(self) -> InferenceForm | None:
        """:meth:`deployed_form`, cached until a parameter or buffer of this layer changes."""
        state = (*self.parameters(), *(b for n, b in self.named_buffers() if n != "sign0"))
        key = tuple((t.data_ptr(), t._version) for t in state)
        cache = self.__dict__.get("_eval_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, self.deployed_form())
            self.__dict__["_eval_cache"] = cache
        return cache[1]

    def forward(self, x: Tensor) -> Tensor:
        if not (self.binary_inputs and self.binary_weights):  # a stage of two-stage training, or a teacher
            xb = self._counted(self.binarize_input(x)) if self.binary_inputs else x
            return self._conv_forward(xb, self.real_weight(self.weight), self.bias)
        if not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # evaluation computes what the 1-bit kernels compute: exact integer conv of +-1, then the form's
            # float terms (eager only: the cache and the representability check are host logic; a compiled
            # model evaluates with the training formula below, equal to float rounding)
            form = self._eval_form()
            if form is not None:
                s = self.binarize_input(x) if form.threshold is None else form.input_signs(x)
                out = form.apply(self._counted(s), lambda i, w: self._conv_forward(i, w, None))
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


class Shift(nn.Module):
    """x + b_c with a learnable per-channel b (zero init), applied in x's dtype: ReActNet's "move" bias
    (``architectures/reactnet.py``; ReBNN's RPReLU in ``methods/rebnn.py``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return shift(x, -self.bias)
