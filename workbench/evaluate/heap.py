"""An evaluation's arrays reuse the memory its earlier arrays freed (glibc's malloc; nothing elsewhere).

An evaluation of 1M rows allocates and frees hundreds of arrays of a few MB. glibc's defaults hand most of
them back to the system when they are freed (an allocation above its mmap threshold gets its own mapping;
free memory at the top of the heap above its trim threshold is returned), so the next array's pages are
faulted in and zeroed again: about 20,000 page faults and 50-150 ms of system time per evaluation of 1M rows,
which varied with the machine's load. Inside :func:`reusing_freed_memory` both thresholds are raised, so
freed arrays stay in the heap for the next ones; on leaving it the trim threshold is glibc's default again
and the heaps' free memory goes back to the system, so a long-lived process (the app, the job runner) does not
keep an evaluation's peak. The settings are process-wide while the block runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
# glibc's largest mmap threshold on 64-bit systems (the ceiling of its own dynamic threshold): larger
# allocations keep their own mapping; it stays set after the block
MMAP_THRESHOLD = 32 << 20
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


@contextmanager
def reusing_freed_memory() -> Iterator[None]:
    """Freed memory stays in the heap for the next allocations inside the block; it goes back to the system
    when the block ends."""
    _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD))
    try:
        yield
    finally:
        _mallopt((M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD), trim=True)
