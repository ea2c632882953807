"""Parameter, operation and model-size counts for a built model.

Convention (the one Bi-Real Net and the BNN literature tabulate, e.g. Bi-Real Net ECCV 2018 Table 4):

* a MAC is one multiply-accumulate of a conv or linear layer: conv = C_out * H_out * W_out * (C_in / groups)
  * k_h * k_w, linear = in_features * out_features. BN, activations, pooling and residual additions
  are not counted;
* BOPs = MACs of binary convolutions (1-bit x 1-bit, an XNOR + popcount each);
* FLOPs = MACs of full-precision convolutions and linear layers;
* OPs = FLOPs + BOPs / 64 (a 64-bit CPU does 64 binary operations per instruction);
* packed size = binary conv weights at 1 bit + every other parameter at 32 bit (parameters only:
  BN running statistics fold into the BN affine transform at inference), in bytes.

For ImageNet ResNet-18 1W1A at 224x224 this gives 1.676e9 BOPs and 1.378e8 FLOPs (Bi-Real Net reports
1.68e9 and 1.39e8 for the same split).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from bnnbench.nn.layers import BinaryConv2d


@dataclass
class OpCounts:
    params: int
    binary_params: int
    binary_macs: int
    fp_macs: int
    input_size: tuple[int, int, int]

    @property
    def bops(self) -> int:
        return self.binary_macs

    @property
    def flops(self) -> int:
        return self.fp_macs

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64

    @property
    def binary_param_ratio(self) -> float:
        return self.binary_params / max(self.params, 1)

    @property
    def binary_mac_ratio(self) -> float:
        return self.binary_macs / max(self.binary_macs + self.fp_macs, 1)

    @property
    def packed_bytes(self) -> float:
        return (self.binary_params + 32 * (self.params - self.binary_params)) / 8

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(bops=self.bops, flops=self.flops, ops=self.ops, binary_param_ratio=self.binary_param_ratio,
                 binary_mac_ratio=self.binary_mac_ratio, packed_bytes=self.packed_bytes)
        d["input_size"] = list(self.input_size)
        return d


def is_binary(m: nn.Module) -> bool:
    """A conv with 1-bit weights and 1-bit inputs (a BinaryConv2d in a run with ``binarize: all``)."""
    return isinstance(m, BinaryConv2d) and m.binary_inputs and m.binary_weights


def count_ops(model: nn.Module, input_size: tuple[int, int, int]) -> OpCounts:
    """Count parameters and MACs of ``model`` for one input of shape ``input_size`` = (C, H, W)."""
    macs = {"binary": 0, "fp": 0}

    def conv_hook(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs["binary" if is_binary(m) else "fp"] += out[0].numel() * k

    def linear_hook(m: nn.Linear, inp, out):
        macs["fp"] += m.in_features * m.out_features * (out[0].numel() // m.out_features)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    binary = sum(m.weight.numel() for m in model.modules() if is_binary(m))
    return OpCounts(params, binary, macs["binary"], macs["fp"], tuple(input_size))
