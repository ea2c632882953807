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


@dataclass
class LayerRow:
    """One module of a model summary: a conv or linear layer, or any module holding parameters of its own."""
    name: str
    kind: str                       # binary conv, FP conv, linear, norm, activation, other
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    params: int
    binary_params: int
    macs: int                       # multiply-accumulates (binary ones are the BOPs)

    @property
    def bytes_1bit(self) -> float:
        """Its parameters with binary weights at 1 bit and the rest at 32 bit."""
        return (self.binary_params + 32 * (self.params - self.binary_params)) / 8

    @property
    def bytes_32bit(self) -> int:
        return 4 * self.params


def _kind(m: nn.Module) -> str:
    if is_binary(m):
        return "binary conv"
    if isinstance(m, nn.Conv2d):
        return "FP conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    return "activation" if isinstance(m, (nn.PReLU, nn.Hardtanh, nn.ReLU)) else "other"


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    """MACs of one conv or linear layer for one input (``out``: its output for a batch of one)."""
    if isinstance(m, nn.Conv2d):
        return out[0].numel() * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features * (out[0].numel() // m.out_features)
    return 0


def layer_rows(model: nn.Module, input_size: tuple[int, int, int]) -> list[LayerRow]:
    """Every conv and linear layer and every module with parameters of its own, in module order, with its
    shapes (batch of one), parameters, binary parameters and MACs: the one op counter behind
    :func:`count_ops` (the leaderboard's OPs and size) and ``run_bench.py summary``."""
    shapes: dict[str, tuple] = {}
    picked = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) or any(True for _ in m.parameters(recurse=False))]

    def hook(name):
        def record(m, inp, out):
            shapes[name] = (tuple(inp[0].shape[1:]) if inp else None, tuple(out.shape[1:]), _macs(m, out))
        return record
    handles = [m.register_forward_hook(hook(n)) for n, m in picked]
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
    rows = []
    for n, m in picked:
        own = sum(q.numel() for q in m.parameters(recurse=False))
        inp, out, macs = shapes.get(n, (None, None, 0))
        rows.append(LayerRow(n or "(model)", _kind(m), inp, out, own, m.weight.numel() if is_binary(m) else 0, macs))
    return rows


def count_ops(model: nn.Module, input_size: tuple[int, int, int]) -> OpCounts:
    """Count parameters and MACs of ``model`` for one input of shape ``input_size`` = (C, H, W)."""
    rows = layer_rows(model, input_size)
    return OpCounts(sum(r.params for r in rows), sum(r.binary_params for r in rows),
                    sum(r.macs for r in rows if r.kind == "binary conv"),
                    sum(r.macs for r in rows if r.kind != "binary conv"), tuple(input_size))
