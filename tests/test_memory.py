"""Freed heap memory goes back to the system when asked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sensiprune import memory


def _resident() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) << 10


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or memory._trim() is None, reason="glibc only"
)
def test_freed_heap_memory_is_given_back():
    large = torch.ones(8 << 20)
    del large  # freeing a 32 MiB block raises glibc's mmap threshold past 1 MiB
    chunks = [torch.ones(1 << 18) for _ in range(200)]  # 200 MiB on the heap, pages touched
    last = chunks.pop()  # held at the top: the heap cannot shrink by itself
    del chunks
    before = _resident()
    memory.give_back()
    assert before - _resident() > 100 << 20
    del last
