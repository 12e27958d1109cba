"""Returning freed heap memory to the system between the steps of a large prune.

glibc keeps freed chunks for reuse, and a step's work comes in other sizes than the last
one's (a language model's layers differ in shape), so without this the resident memory grows
to the sum of the steps' leftovers rather than the largest step.
"""

from __future__ import annotations

import ctypes
from contextlib import suppress


def give_back() -> None:
    """Return the heap's free memory to the system (glibc only: elsewhere, nothing)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
