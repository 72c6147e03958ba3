"""An evaluation's arrays reuse the memory its earlier arrays freed (glibc's malloc; nothing elsewhere).

An evaluation of 1M rows allocates and frees hundreds of arrays of a few MB. glibc's defaults hand most of
them back to the system when they are freed (an allocation above its mmap threshold gets its own mapping;
free memory at the top of the heap above its trim threshold is returned), so the next array's pages are
faulted in and zeroed again: about 20,000 page faults and 50-150 ms of system time per evaluation of 1M rows,
which varied with the machine's load. :func:`keep_freed_memory` raises both thresholds, so freed arrays stay
in the heap for the next ones (the process keeps what it freed until
:func:`workbench.replay.resources.release_free_heap` or its end). Slices (many smaller comparisons on
several threads, each thread with a heap of its own) run inside :func:`return_freed_memory`: kept there,
every thread's heap held its own peak, 80-100 MB more resident memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems: larger allocations keep their own mapping
KEPT_TRIM_THRESHOLD = 1 << 30
DEFAULT_TRIM_THRESHOLD = 128 << 10  # glibc's default


def _mallopt(*settings: tuple[int, int], trim: bool = False) -> None:
    """Set glibc malloc parameters for the whole process, then hand every heap's free memory back when
    ``trim`` (nothing without glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        for param, value in settings:
            libc.mallopt(param, value)
        if trim:
            libc.malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def keep_freed_memory() -> None:
    """Keep the memory freed arrays leave in the heap for the next ones (process-wide)."""
    _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD))


@contextmanager
def return_freed_memory() -> Iterator[None]:
    """What the heaps keep goes back to the system on entering the block, and free memory at a heap's top
    inside it (glibc's default); it is kept again after the block."""
    _mallopt((M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD), trim=True)
    try:
        yield
    finally:
        _mallopt((M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD))
