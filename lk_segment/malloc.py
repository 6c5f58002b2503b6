"""glibc malloc told to keep the memory it frees: every training step and prediction reuses it.

On CPU, PyTorch allocates every activation and gradient with ``malloc`` and frees it at the
end of the step. glibc serves a block above its mmap threshold (128 KiB at start, raised as
blocks are freed) with a fresh ``mmap`` and gives it back with ``munmap``, and trims the heap
back to the system whenever more than its trim threshold lies free at the top: the next step
then page-faults the same megabytes in again. PyTorch's and Intel's CPU tuning guides
recommend an allocator that reuses memory (jemalloc, TCMalloc); two ``mallopt`` calls give
glibc that habit without another library:

- ``M_MMAP_THRESHOLD`` 256 MiB: tensors below it come from the heap, not from mmap;
- ``M_TRIM_THRESHOLD`` 1 GiB: the heap is not shrunk while less than that lies free on top.

Both are needed: a trim threshold alone also freezes the mmap threshold at 128 KiB (a 2x
slower step here), an mmap threshold alone lets the trims return the memory every step.
What it saves, measured, is in docs/performance.md ("The allocator").
The ``lk-segment`` command calls ``tune_malloc()`` first thing; ``LK_SEGMENT_MALLOC=default``
leaves glibc as it is (for a before/after measurement). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 2**20
TRIM_THRESHOLD_BYTES = 2**30
OPT_OUT = "LK_SEGMENT_MALLOC"  # =default: glibc's own settings


class MallInfo2(ctypes.Structure):  # glibc 2.33+'s struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache  # find_library runs ldconfig: once per process
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only: musl has no mallopt tunables)
        return libc
    except (OSError, AttributeError):
        return None


def tune_malloc() -> bool:
    """Set both thresholds; True when glibc took them (False: another libc, or the opt-out)."""
    if os.environ.get(OPT_OUT, "").lower() == "default":
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def trim() -> bool:
    """Give the free memory glibc keeps back to the system now (``malloc_trim(0)``), so that the
    process RSS measured next is what is in use, not what earlier work left for reuse."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def mmapped_bytes() -> int | None:
    """Bytes glibc holds in mmapped blocks now (``mallinfo2().hblkhd``); None without glibc 2.33+."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    return int(libc.mallinfo2().hblkhd)
