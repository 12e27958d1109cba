"""Host memory: freed heap returned to the system between the steps of a large prune, and
malloc kept steady while timing.

glibc keeps freed chunks for reuse, and a step's work comes in other sizes than the last
one's (a language model's layers differ in shape), so without ``give_back`` the resident
memory grows to the sum of the steps' leftovers rather than the largest step.

While timing, the opposite: by default glibc hands freed memory at the top of the heap back
to the system and moves its mmap threshold with the blocks freed before, so a forward pass
pays page faults for its activations in one state of the process and not in another. One
pruned MobileNetV2-style model timed 1.16x-2.08x against its dense model as the process's
history changed, and 1.25-1.30x in every state once freed memory was kept, as jemalloc and
tcmalloc keep it (``steady_allocator``; ``SENSIPRUNE_MALLOC=default`` leaves malloc alone).
"""

from __future__ import annotations

import ctypes
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
KEEP_FREED = 512 << 20  # free memory at the top of the heap kept up to this many bytes
HEAP_BLOCKS_UP_TO = 32 << 20  # blocks up to this size come from the heap (glibc's largest)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, loaded once (None elsewhere)."""
    try:
        library = ctypes.CDLL("libc.so.6")
        library.malloc_trim, library.mallopt  # noqa: B018 (both are glibc's)
    except (OSError, AttributeError):
        return None
    return library


def _trim() -> ctypes._CFuncPtr | None:
    """glibc's ``malloc_trim`` (None elsewhere)."""
    library = _glibc()
    return None if library is None else library.malloc_trim


@functools.cache
def steady_allocator() -> bool:
    """Once per process, on glibc: keep freed memory and serve blocks up to 32 MiB from the
    heap, for the rest of the process (glibc cannot read its settings back to restore them;
    ``give_back`` still trims when asked). Whether malloc is now set so."""
    library = _glibc()
    if library is None or os.environ.get("SENSIPRUNE_MALLOC") == "default":
        return False
    return bool(
        library.mallopt(M_TRIM_THRESHOLD, KEEP_FREED)
        and library.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)
    )


def give_back() -> None:
    """Return the heap's free memory to the system (glibc only: elsewhere, nothing)."""
    trim = _trim()
    if trim is not None:
        trim(0)
