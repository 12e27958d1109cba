"""Returning freed heap memory to the system between the steps of a large prune.

glibc keeps freed chunks for reuse, and a step's work comes in other sizes than the last
one's (a language model's layers differ in shape), so without this the resident memory grows
to the sum of the steps' leftovers rather than the largest step.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _trim() -> ctypes._CFuncPtr | None:
    """glibc's ``malloc_trim``, looked up once (None elsewhere)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def give_back() -> None:
    """Return the heap's free memory to the system (glibc only: elsewhere, nothing)."""
    trim = _trim()
    if trim is not None:
        trim(0)
