"""The binarizers in low precision: fp16/bf16 forward values and gradients against float32 on the same inputs.

Under autocast a binary conv's input arrives in fp16 or bf16. :func:`compare` runs every surrogate of
``bnnbench/nn/surrogates.py`` and every registered method's ``binarize_input`` once on low-precision inputs
and once on the same values in float32, and reports per case:

* ``sign_mismatch``: forward values that differ (must be 0: sign is exact in any dtype);
* ``grad_rel_err``: ||g_low - g_fp32|| / ||g_fp32||, with g_fp32 rounded to the low dtype first;
* ``grad_kept``: of the gradient entries that are nonzero in float32 (and representable in the low dtype),
  the fraction still nonzero in low precision (EDE's tail late in training is the case that loses them);
* ``finite``: every output and gradient is finite (the per-sample statistics of ReCU/OvSW overflow fp16
  unless computed in float32).

The test suite runs it on the CPU (``tests/test_surrogates.py``), ``scripts/gpu_check.sh`` on CUDA.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from bnnbench.nn import surrogates as S
from bnnbench.plugins import METHODS

#: limits a case must meet to pass
MAX_REL_ERR = 2e-2
MIN_KEPT = 0.995


@dataclass
class PrecisionCase:
    name: str
    dtype: str
    sign_mismatch: int
    grad_rel_err: float
    grad_kept: float
    finite: bool

    @property
    def ok(self) -> bool:
        return (self.finite and self.sign_mismatch == 0 and self.grad_rel_err <= MAX_REL_ERR
                and self.grad_kept >= MIN_KEPT)

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def cases() -> dict[str, tuple[Callable[[Tensor], Tensor], float]]:
    """name -> (function of one activation tensor, input scale). Scale 40 for the per-sample forms makes
    sum x^2 over one sample exceed fp16's range; EDE is taken at IR-Net's final t = 10, k = 1."""
    out = {
        "sign_ste": (S.sign_ste, 1.0), "sign_clipped": (S.sign_clipped, 1.0), "sign_approx": (S.sign_approx, 1.0),
        "sign_ede[t=10]": (lambda u: S.sign_ede(u, 10.0, 1.0), 1.0),
        "sign_ede[t=1]": (lambda u: S.sign_ede(u, 1.0, 1.0), 1.0),
        "sign_approx_per_sample": (S.sign_approx_per_sample, 40.0),
        "sign_approx_per_sample[no_std_grad]": (lambda x: S.sign_approx_per_sample(x, through_std=False), 40.0),
    }
    for name in METHODS.names():
        layer = METHODS.get(name)(family="cifar").conv(16, 16, 3, padding=1)
        out[f"{name}.binarize_input"] = (layer.binarize_input, 1.0)
    return out


def _run(fn: Callable[[Tensor], Tensor], x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad.detach()


def compare(device: torch.device | str = "cpu", dtypes=(torch.float16, torch.bfloat16), seed: int = 0,
            shape=(4, 16, 16, 16)) -> list[PrecisionCase]:
    """Every case of :func:`cases` in each of ``dtypes`` against float32 on ``device``."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for name, (fn, scale) in cases().items():
        base = (torch.randn(shape, generator=gen) * scale).to(device)
        grad = torch.randn(shape, generator=gen).to(device)
        for dt in dtypes:
            x, g = base.to(dt), grad.to(dt)
            y_lo, gx_lo = _run(fn, x, g)
            y_hi, gx_hi = _run(fn, x.float(), g.float())
            ref = gx_hi.to(dt).float()
            low = gx_lo.float()
            nz = ref != 0
            kept = float((low[nz] != 0).float().mean()) if bool(nz.any()) else 1.0
            err = float((low - ref).norm() / ref.norm().clamp_min(1e-30))
            results.append(PrecisionCase(
                name=name, dtype=str(dt).removeprefix("torch."),
                sign_mismatch=int((y_lo.float() != y_hi).sum()), grad_rel_err=err, grad_kept=kept,
                finite=bool(torch.isfinite(y_lo).all() and torch.isfinite(gx_lo).all())))
    return results
