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


class _RecordingLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def fake_glibc(monkeypatch):
    library = _RecordingLibc()
    monkeypatch.setattr(memory, "_glibc", lambda: library)
    monkeypatch.delenv("SENSIPRUNE_MALLOC", raising=False)
    memory.steady_allocator.cache_clear()
    yield library
    memory.steady_allocator.cache_clear()


def test_malloc_is_set_to_keep_freed_memory_once_a_process(fake_glibc):
    assert memory.steady_allocator() is True
    assert memory.steady_allocator() is True
    assert fake_glibc.calls == [
        (memory.M_TRIM_THRESHOLD, memory.KEEP_FREED),
        (memory.M_MMAP_THRESHOLD, memory.HEAP_BLOCKS_UP_TO),
    ]


def test_the_user_can_keep_malloc_as_it_is(fake_glibc, monkeypatch):
    monkeypatch.setenv("SENSIPRUNE_MALLOC", "default")
    assert memory.steady_allocator() is False and not fake_glibc.calls


@pytest.mark.skipif(memory._glibc() is None, reason="glibc only")
def test_glibc_takes_the_settings(monkeypatch):
    """The real call, as timing makes it: glibc accepts both values."""
    monkeypatch.delenv("SENSIPRUNE_MALLOC", raising=False)
    memory.steady_allocator.cache_clear()
    assert memory.steady_allocator() is True
