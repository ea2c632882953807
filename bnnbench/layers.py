"""The binary convolution every method builds on.

:class:`BinaryConv2d` is an ``nn.Conv2d`` (stride, padding, dilation, groups and padding mode are kept) whose
forward is::

    y = conv(binarize_input(x), binarize_weight(W)) * output_scale()

A method plugin subclasses it and supplies the three pieces (and ``effective_sign``, the sign its forward
pass really uses, for flip tracking). The input is binarised *before* the convolution pads it, so border
taps see zeros, as in every reference implementation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .surrogates import sign_ste

FILTER_DIMS = (1, 2, 3)  # the dimensions spanning one output filter of a (C_out, C_in, kh, kw) weight


class BinaryConv2d(nn.Conv2d):
    """Conv2d with binarised weight and input; subclasses define the binarizers and the scale."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, padding_mode: str = "zeros", hparams=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode)
        #: the method's resolved hyperparameters (every key present, values of the declared types)
        self.hparams = dict(hparams or {})

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

    # --- flip tracking ------------------------------------------------------------------------------------
    def effective_sign(self) -> Tensor:
        """The sign pattern the forward pass uses (positive scales and clamps do not change it)."""
        return torch.sign(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        wb = self.binarize_weight(self.weight)
        scale = self.output_scale()
        if scale is not None:  # conv(x, W) * a_c == conv(x, a_c W): scaling the small weight is cheaper
            wb = wb * scale.reshape(-1, *([1] * (wb.dim() - 1)))
        return self._conv_forward(self.binarize_input(x), wb, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary={type(self).__name__}"


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    """All binary convolutions of ``model`` in module order, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]
