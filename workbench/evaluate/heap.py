"""The evaluation's arrays reuse the memory the evaluation freed (glibc's malloc; nothing elsewhere).

An evaluation of 1M rows allocates and frees hundreds of arrays of a few MB. glibc's defaults hand most of
them to the system when they are freed (an allocation above its mmap threshold gets its own mapping; free
memory at the top of the heap above its trim threshold is returned), so the next array's pages are faulted in
and zeroed again: about 20,000 page faults and 50-150 ms of system time per evaluation of 1M rows, which
varied with the machine's load. With both thresholds raised, freed arrays stay in the heap for the next ones
(the peak resident memory is the same; after an evaluation the process keeps it until
:func:`workbench.replay.resources.release_free_heap` or its end).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems: larger allocations keep their own mapping
TRIM_THRESHOLD = 1 << 30

_guard = threading.Lock()
_set = False


def retain_freed_memory() -> None:
    """Raise glibc's mmap and trim thresholds for this process, once (process-wide; a no-op without glibc)."""
    global _set
    with _guard:
        if _set:
            return
        _set = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        except (OSError, AttributeError, TypeError):
            pass
