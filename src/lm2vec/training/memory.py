"""Keep the memory a training step frees inside the process (glibc malloc settings, Linux CPU training).

Every step allocates and frees the same few hundred MB (activations, MNTP's (N, V) logits: 40 MB at
SmolLM2's 49k vocabulary). By default glibc hands large blocks back to the kernel (blocks above its
mmap threshold, at most 32 MB, are unmapped on free; free space at the heap top above 128 kB is
trimmed), so the next step page-faults them in again: 10-40k faults a step here, each ~15 us in this
VM. Serving every block from the heap and never trimming it keeps those pages mapped: the bf16 MNTP
step 8 x 128 went 1.77 -> 1.51 s, float32 2.67 -> 2.60 s (2026-12-04, docs/performance.md). The price is
that the process keeps its peak memory until it exits, as with jemalloc or tcmalloc, which PyTorch's
CPU performance guide recommends for the same reason. `LM2VEC_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>: free heap-top bytes kept before trimming
M_MMAP_MAX = -4  # glibc <malloc.h>: how many blocks may be mmap-ed separately (0: none)
KEEP_UP_TO = 2**30  # heap-top bytes never trimmed (mallopt takes an int)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory mapped for reuse; True if it did. Once per process (the settings
    are process-wide); a no-op returning False off Linux, on a C library without mallopt (musl), or
    with LM2VEC_KEEP_FREED_MEMORY=0."""
    if platform.system() != "Linux" or os.environ.get("LM2VEC_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO) == 1
