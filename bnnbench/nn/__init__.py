"""What a plugin author builds with: the binary convolution, the sign surrogates, op counting.

* :mod:`~bnnbench.nn.layers`: :class:`BinaryConv2d` (``y = conv(binarize_input(x), binarize_weight(W)) *
  output_scale()``), its :class:`InferenceForm`, ``shift`` (a learnable threshold in the activation's
  dtype) and the ``Shift`` module (a learnable per-channel bias), the sign(0) counters;
* :mod:`~bnnbench.nn.surrogates`: ``torch.sign`` with the backward surrogates of the literature (STE,
  clipped, ApproxSign, EDE, per-sample ApproxSign);
* :mod:`~bnnbench.nn.ops`: parameters, BOPs/FLOPs/OPs and the bit-packed size of a built model.

Layering: the bottom of the house; imports only torch (and nothing of the suite but its leaves).
"""
from bnnbench.nn.layers import (
    FILTER_DIMS,
    BinaryConv2d,
    InferenceForm,
    Shift,
    binary_layers,
    shift,
    take_sign0_counts,
)
from bnnbench.nn.ops import OpCounts, count_ops, is_binary
from bnnbench.nn.surrogates import (
    SURROGATES,
    amp_backward,
    amp_forward,
    sample_moments,
    sample_rows,
    sign_approx,
    sign_approx_per_sample,
    sign_clipped,
    sign_ede,
    sign_ste,
)

__all__ = ["FILTER_DIMS", "SURROGATES", "BinaryConv2d", "InferenceForm", "OpCounts", "Shift", "amp_backward",
           "amp_forward",
           "binary_layers", "count_ops", "is_binary", "sample_moments", "sample_rows", "shift", "sign_approx",
           "sign_approx_per_sample", "sign_clipped", "sign_ede", "sign_ste", "take_sign0_counts"]
