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

from .errors import ConfigError

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
