"""Count host<->device traffic of a piece of code, on any device: what makes a CUDA step wait for the host.

:class:`TransferCounter` is a ``TorchDispatchMode``: every aten call inside ``with TransferCounter() as t:``
is inspected and

* ``t.h2d``: copies from a CPU tensor to another device (``.to(device)``, ``copy_``); each one of pageable
  memory is a synchronisation on CUDA;
* ``t.d2h``: reads of device values on the host (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``) and
  ops whose output size depends on device values (``nonzero``, ``masked_select``, ...), each a full
  synchronisation on CUDA.

A 0-dim CPU tensor used as an operand of a device op is passed as a scalar (no copy) and is not counted.
It works on the ``meta`` device too, so tests on a CPU-only machine can check that a device loop issues no
per-step transfer; on CUDA ``torch.cuda.set_sync_debug_mode("warn")`` is the complementary check
(``scripts/gpu_check.sh`` runs both).
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_COPIES = {"_to_copy", "copy_", "_copy_from", "_copy_from_and_resize"}
_HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique_dim", "_unique2", "unique_consecutive",
               "repeat_interleave", "masked_scatter_"}


def _devices(obj) -> list[torch.device]:
    return [t.device for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


class TransferCounter(TorchDispatchMode):
    """Counts host-to-device copies (``h2d``) and device-to-host reads (``d2h``); ``ops`` names them."""

    def __init__(self):
        super().__init__()
        self.h2d = 0
        self.d2h = 0
        self.ops: Counter[str] = Counter()

    def _count(self, kind: str, name: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.ops[f"{kind}:{name}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in _COPIES:
            src, dst = (args[0], out) if name == "_to_copy" else (args[1], args[0])
            s, d = src.device.type, dst.device.type
            if s == "cpu" and d != "cpu":
                self._count("h2d", name)
            elif s != "cpu" and d == "cpu":
                self._count("d2h", name)
        elif name in _HOST_READS and any(d.type != "cpu" for d in _devices(args)):
            self._count("d2h", name)
        return out
