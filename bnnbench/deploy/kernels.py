"""Bit-packed XNOR-popcount kernels for 1-bit inference on the CPU (C++ source: ``bnnbench/deploy/csrc/binconv.cpp``).

For a binary convolution with input signs a in {-1, +1} and weight signs w in {-1, +1}, over the n input
taps that lie inside the (zero-padded) input:

    dot(o, y, x) = sum a * w = n - 2 * popcount(bits(a) XOR bits(w))

with one bit per value (1 = negative) packed 64 to a word along the input channels. Taps in the zero
padding contribute 0 (the trained model binarises before it pads) and are skipped, so ``n`` counts only
taps inside the input. ``sign(0)``: the packed form maps an activation of exactly 0 to +1 (its bit is 0),
where the trained model's ``torch.sign`` gives 0; outputs agree exactly wherever no input tap is 0
(:func:`bnnbench.deploy.packed.check_exact` counts such positions).

The extension is compiled on first use with ``torch.utils.cpp_extension`` (g++ and ninja) into the
virtual environment (``<sys.prefix>/bnnbench-kernels``; ``BNNBENCH_KERNEL_DIR`` overrides); the set-up
scripts build it ahead. Instruction set, chosen at run time from the CPU's features: AVX-512 with
VPOPCNTDQ, AVX2, or portable C++ (``isa=`` forces one, for tests and measurements). When no compiler is
available, :func:`unavailable_reason` says why and the rest of the suite runs without it.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

ISAS = ("portable", "avx2", "avx512")  # indices match the C++ enum
LANES = 32                             # output channels per packed weight block (csrc/binconv.cpp kLanes),
SMALL_LANES = 16                       # or 16 for a layer of at most 16 output channels
SOURCE = Path(__file__).with_name("csrc") / "binconv.cpp"


def build_dir() -> Path:
    return Path(os.environ.get("BNNBENCH_KERNEL_DIR") or Path(sys.prefix) / "bnnbench-kernels")


@functools.lru_cache(maxsize=1)
def _load():
    """The compiled extension module, or the exception that stopped it (cached for the process)."""
    try:
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime": CPU only
        from torch.utils.cpp_extension import load  # deferred: start-up: the builder loads only with the kernels
        path = build_dir()
        path.mkdir(parents=True, exist_ok=True)
        return load(name="bnnbench_binconv", sources=[str(SOURCE)], build_directory=str(path),
                    extra_cflags=["-O3", "-ffp-contract=off", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # a missing compiler/ninja or a build error: reported, never hidden
        return e


def unavailable_reason() -> str | None:
    """None when the kernels are usable, else why not (the build error's first line)."""
    mod = _load()
    if isinstance(mod, Exception):
        first = (str(mod).strip().splitlines() or [type(mod).__name__])[0]
        return f"1-bit kernels unavailable ({type(mod).__name__}: {first[:300]})"
    return None


def ext():
    """The extension module; raises RuntimeError with the build problem when it cannot be built."""
    mod = _load()
    if isinstance(mod, Exception):
        raise RuntimeError(f"{unavailable_reason()}; install g++ and ninja (pip install ninja), or see "
                           f"the build output with: python -m bnnbench.deploy.kernels") from mod
    return mod


def ops():
    """The kernels as torch operators (``torch.ops.bnnbench``: ``pack_activations``, ``binconv2d_fused``), which
    a traced graph can call; registered when the extension loads."""
    ext()
    return torch.ops.bnnbench


def best_isa() -> str:
    """The fastest instruction set this CPU supports for the kernels."""
    return ISAS[ext().cpu_isa()]


def isa_index(isa: str | None) -> int:
    if isa is None or isa == "auto":
        return -1
    if isa not in ISAS:
        raise ValueError(f"isa = {isa!r} is not allowed; use 'auto' or one of {', '.join(ISAS)}")
    if ISAS.index(isa) > ext().cpu_isa():
        raise ValueError(f"isa = {isa!r} is not supported by this CPU (best: {best_isa()})")
    return ISAS.index(isa)


def pack_signs_along_channels(signs: Tensor) -> Tensor:
    """uint64 words of the sign bits (1 = negative) of ``signs`` (..., C) packed along the last dimension."""
    c = signs.shape[-1]
    words = -(-c // 64)
    bits = torch.zeros(*signs.shape[:-1], words * 64, dtype=torch.int64)
    bits[..., :c] = (signs < 0).to(torch.int64)
    bits = bits.reshape(*signs.shape[:-1], words, 64)
    shifts = torch.arange(64, dtype=torch.int64)
    packed = (bits << shifts).sum(dim=-1)  # 64 distinct bits: the int64 sum is the bit pattern (wraps at bit 63)
    return packed.view(torch.uint64)


def pack_weights(signs: Tensor) -> Tensor:
    """Packed weight operand [ceil(C_out / L), KH * KW, ceil(C_in / 64), L] of a (C_out, C_in, KH, KW) sign
    tensor (values +1/-1), L = 32 lanes, or 16 when C_out <= 16 (output channels past C_out are zero bits and
    never stored)."""
    c_out, c_in, kh, kw = signs.shape
    lanes = SMALL_LANES if c_out <= SMALL_LANES else LANES
    blocks = -(-c_out // lanes)
    padded = torch.ones(blocks * lanes, c_in, kh, kw, dtype=signs.dtype)
    padded[:c_out] = signs
    per_tap = pack_signs_along_channels(padded.permute(0, 2, 3, 1).reshape(blocks * lanes, kh * kw, c_in))
    words = per_tap.shape[-1]  # (O, taps, words) -> (blocks, taps, words, lanes)
    return per_tap.view(torch.int64).reshape(blocks, lanes, kh * kw, words).permute(0, 2, 3, 1).contiguous() \
        .view(torch.uint64)


def pack_activations(x: Tensor, isa: str | None = None) -> Tensor:
    """uint64 [N, H, W, ceil(C / 64)] sign bits (1 where x < 0) of a float32 NCHW tensor (made channels_last)."""
    return ext().pack_activations(x.contiguous(memory_format=torch.channels_last), isa_index(isa))


def binconv2d_float(x: Tensor, packed_w: Tensor, in_channels: int, out_channels: int, kernel: tuple[int, int],
                    stride: int, padding: int, scale: Tensor, isa: int = -1) -> Tensor:
    """Sign-pack the float32 channels_last input and convolve in one call; ``scale``: float32 (C_out,)
    contiguous; ``isa``: an index into :data:`ISAS` or -1 for the CPU's best. Returns NCHW (channels_last)."""
    out = ext().binconv2d_float(x, packed_w, scale, in_channels, out_channels, kernel[0], kernel[1], stride,
                                padding, isa)
    return out.permute(0, 3, 1, 2)


def binconv2d(packed_x: Tensor, packed_w: Tensor, in_channels: int, out_channels: int, kernel: tuple[int, int],
              stride: int, padding: int, scale: Tensor | None = None, isa: str | None = None) -> Tensor:
    """XNOR-popcount convolution of packed operands. Returns NCHW (channels_last memory): float32
    ``scale[o] * dot`` when ``scale`` is given, else the int32 dot products themselves."""
    s = torch.empty(0) if scale is None else scale.detach().to(torch.float32).contiguous()
    out = ext().binconv2d(packed_x, packed_w, s, in_channels, out_channels, kernel[0], kernel[1], stride, padding,
                          isa_index(isa))
    return out.permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: channels_last


def binconv2d_fused(packed_x: Tensor, packed_w: Tensor, in_channels: int, out_channels: int,
                    kernel: tuple[int, int], stride: int, padding: int, epilogue: dict[str, Tensor | float | int],
                    residual: Tensor | None, emit_packed: bool, isa: int = -1) -> tuple[Tensor, Tensor | None]:
    """The fused binary block (``bnnbench/deploy/fusion.py``): ``y = act(scale * dot + bias + residual) + post``
    in one kernel call, and when ``emit_packed`` also the packed signs of ``y`` (the next binary conv's input).
    ``epilogue``: float32 contiguous (C_out,) tensors ``scale``, ``bias``, ``slope``, ``post`` (empty when
    absent), ``act`` (0 none, 1 clamp, 2 PReLU), ``lo``/``hi``; ``residual``: NCHW channels_last float32 or
    None. Returns ``y`` NCHW (channels_last) and the packed signs [N, OH, OW, words] or None. Calls the torch
    operator, so a traced graph records it."""
    e = epilogue
    res = e["scale"].new_empty(0) if residual is None else residual.permute(0, 2, 3, 1)
    y, bits = ops().binconv2d_fused(packed_x, packed_w, e["scale"], e["bias"], res, e["act"], e["lo"], e["hi"],
                                    e["slope"], e["post"], emit_packed, in_channels, out_channels, kernel[0],
                                    kernel[1], stride, padding, isa)
    return y.permute(0, 3, 1, 2), (bits if emit_packed else None)


if __name__ == "__main__":  # python -m bnnbench.deploy.kernels: build now and say what this CPU gets
    reason = unavailable_reason()
    if reason:
        print(reason)
        ext()
    print(f"1-bit kernels built in {build_dir()}; this CPU runs the {best_isa()} path")
