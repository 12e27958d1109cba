"""Steady malloc for timing: set once on glibc, left alone when the user says so."""

from __future__ import annotations

import platform

import pytest

from sensiprune import allocator


@pytest.fixture
def fresh_cache():
    allocator.steady_allocator.cache_clear()
    yield
    allocator.steady_allocator.cache_clear()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_malloc_is_set_to_keep_freed_memory_once(fresh_cache, monkeypatch):
    calls = []
    real = allocator.ctypes.CDLL

    class Recording:
        def __init__(self, path):
            self.library = real(path)

        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return self.library.mallopt(parameter, value)

    monkeypatch.delenv("SENSIPRUNE_MALLOC", raising=False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", Recording)
    assert allocator.steady_allocator() is True
    assert allocator.steady_allocator() is True  # once a process
    assert calls == [
        (allocator.M_TRIM_THRESHOLD, allocator.KEEP_FREED),
        (allocator.M_MMAP_THRESHOLD, allocator.HEAP_BLOCKS_UP_TO),
    ]


def test_the_user_can_keep_malloc_as_it_is(fresh_cache, monkeypatch):
    monkeypatch.setenv("SENSIPRUNE_MALLOC", "default")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda path: pytest.fail("malloc was set"))
    assert allocator.steady_allocator() is False
