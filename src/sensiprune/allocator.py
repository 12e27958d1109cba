"""Steady host memory while timing. By default glibc's malloc hands freed memory back to the
system and moves its mmap threshold with the blocks freed before, so a forward pass pays page
faults for its activations in one state of the process and not in another. One pruned
MobileNetV2-style model timed 1.16x-2.08x against its dense model as the process's history
changed, and 1.25-1.30x in every state once freed memory was kept, as jemalloc and tcmalloc
keep it. ``SENSIPRUNE_MALLOC=default`` leaves malloc as it is."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
KEEP_FREED = 512 << 20  # free memory at the top of the heap kept up to this many bytes
HEAP_BLOCKS_UP_TO = 32 << 20  # blocks up to this size come from the heap (glibc's largest)


@functools.cache
def steady_allocator() -> bool:
    """Once per process, on glibc: keep freed memory and serve blocks up to 32 MiB from the
    heap, for the rest of the process (glibc cannot read its settings back to restore them).
    Whether malloc is now set so."""
    if os.environ.get("SENSIPRUNE_MALLOC") == "default" or platform.libc_ver()[0] != "glibc":
        return False
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    mallopt = ctypes.CDLL(path).mallopt
    return bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_FREED) and mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)
    )
