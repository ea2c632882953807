"""CPU training: keep freed tensor memory in the process instead of handing it back to the kernel.

glibc serves allocations above its mmap threshold (dynamic, starting at 128 KiB) with fresh ``mmap``
pages and unmaps them on free, so every large activation of every step page-faults again (the kernel
zeroes each 4 KiB page on first touch). On a 2-core machine a cresnet20 batch-256 step took ~25,000
minor faults and 15-25% of its time there, and the share varied from step to step. PyTorch's CPU tuning
guide answers this with jemalloc or tcmalloc through ``LD_PRELOAD``; the same effect is had from glibc
itself with two ``mallopt`` settings made at run time:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's upper limit): blocks up to that size come from the heap;
* ``M_TRIM_THRESHOLD`` = 2 GiB - 1: freed heap memory stays with the process for the next step.

Memory use then stays at the peak of one step (what a caching allocator does on a GPU). Set
``BNNBENCH_KEEP_MEMORY=0`` to leave glibc's defaults (or when preloading another allocator).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import resource

import torch

from bnnbench.errors import ConfigError

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**31 - 1

@functools.cache
def keep_freed_memory() -> bool:
    """Apply the two ``mallopt`` settings once per process; True when they are in effect.

    Returns False (and changes nothing) when ``BNNBENCH_KEEP_MEMORY=0`` or the C library is not glibc.
    """
    env = os.environ.get("BNNBENCH_KEEP_MEMORY", "1")
    if env not in ("0", "1"):
        raise ConfigError(f"BNNBENCH_KEEP_MEMORY={env!r} (environment) is not allowed; use 1 (default) or 0")
    applied = False
    if env == "1":
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None and hasattr(libc, "gnu_get_libc_version"):
            applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                        TRIM_THRESHOLD))
    return applied


# --- peak memory of one run ---------------------------------------------------------------------------------

def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def reset_peak_memory(device) -> str:
    """Start measuring a run's peak memory on ``device``; returns the scope the later
    :func:`peak_memory` reading will have: ``"run"``, or ``"process"`` where the peak cannot be reset.

    CUDA: ``torch.cuda.reset_peak_memory_stats``. CPU (Linux): freed heap memory kept from earlier runs is
    returned to the kernel (``malloc_trim``) and the resident-set high-water mark is reset (writing 5 to
    ``/proc/self/clear_refs``), so the reading is this run's peak resident memory, not the sweep's.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "run"
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "run"
    except OSError:
        return "process"


def peak_memory(device) -> int:
    """Peak bytes since :func:`reset_peak_memory`: CUDA allocated memory, or the CPU resident set (VmHWM;
    ``getrusage``'s lifetime maximum where /proc is absent)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024))
