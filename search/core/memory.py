"""Process-wide allocator settings for training workers."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
_MMAP_THRESHOLD = 32 << 20  # glibc's documented maximum on 64-bit systems
_TRIM_THRESHOLD = 2 * _MMAP_THRESHOLD  # the ratio glibc keeps when it adapts them itself


def retain_freed_memory() -> bool:
    """Keep freed blocks below 32 MiB in the heap for reuse (glibc only; True if applied).

    Every training step allocates and frees the same few batch-sized tensors. By default glibc
    serves blocks of a few MiB with a fresh `mmap` and gives them back on `free`, or trims the
    heap, so the next step touches new pages: minor page faults were 35–46 % of the CPU time
    of the batched augmentation. With these thresholds the blocks are reused; resident memory
    stays at the peak of one step plus at most 64 MiB of free heap.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
