"""How a run's arithmetic is set up on its device, and the ``deterministic`` mode that makes GPU runs repeat.

A binary network turns rounding differences into different activation signs, which the next layers
amplify, so everything that changes rounding changes the run. On CUDA four things do, and by default
bnnbench lets all of them be fast:

=========================  ===========================  ==============================================
choice                     default (fast)               ``deterministic: true`` (recipe, or CLI flag)
=========================  ===========================  ==============================================
cuDNN autotuning           on (``cudnn.benchmark``)     off; ``cudnn.deterministic`` on
TF32 convs / matmuls       torch's defaults (convs on)  off: true FP32 (slower on Ampere and later)
algorithms                 any                          ``torch.use_deterministic_algorithms(True)``
                                                        (``CUBLAS_WORKSPACE_CONFIG=:4096:8``)
``torch.compile``          as the recipe's ``compile``  off (its generated kernels are outside the
                                                        deterministic-algorithms guarantee)
=========================  ===========================  ==============================================

Mixed precision (``amp``) stays as the recipe says in both modes; it is repeatable but not FP32, so a
"true FP32" run is ``amp: false`` plus ``deterministic: true``. On the CPU the mode changes nothing that
matters (CPU runs already repeat bit for bit). :func:`configure` sets the process-wide flags before each
run (a sweep can mix both modes) and returns what it set, which ``result.json`` records as ``numerics``.
"""
from __future__ import annotations

import os
from typing import Any

import torch

CUBLAS_WORKSPACE = ":4096:8"
#: the process's TF32 choices before the first run changed them (restored for runs in the fast mode)
_TF32_DEFAULTS: tuple[bool, bool] | None = None


def configure(device: torch.device, deterministic: bool, amp: bool, compile: bool) -> dict[str, Any]:
    """Set cuDNN/TF32/determinism flags for one run on ``device``; returns the record of them."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    global _TF32_DEFAULTS
    cuda = device.type == "cuda"
    if cuda:
        if _TF32_DEFAULTS is None:
            _TF32_DEFAULTS = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        conv, matmul = (False, False) if deterministic else _TF32_DEFAULTS
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cuda.matmul.allow_tf32 = matmul
    return record(device, deterministic, amp=amp and cuda, compile=compile and cuda and not deterministic)


def record(device: torch.device, deterministic: bool, amp: bool, compile: bool) -> dict[str, Any]:
    """What governs this process's rounding on ``device`` now (``result.json``'s ``numerics``)."""
    cuda = device.type == "cuda"
    return {
        "deterministic": deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic) if cuda else None,
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "amp": "float16" if amp else None,
        "compile": compile,
    }
