"""The k smallest by k-th value pick what a stable sort's first k pick, ties included."""

from __future__ import annotations

import pytest
import torch

from sensiprune import smallest as module
from sensiprune.smallest import smallest


@pytest.mark.parametrize("chunk", [1 << 20, 7])  # ties resolved across chunk boundaries too
def test_the_k_smallest_are_the_stable_sorts_first_k(monkeypatch, chunk):
    monkeypatch.setattr(module, "_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (6, 9), generator=generator).float()  # many ties
    values[0, :3] = -torch.inf  # pruned before: first in any order
    for k in range(values.numel() + 2):
        expected = torch.zeros(values.numel(), dtype=torch.bool)
        expected[torch.argsort(values.reshape(-1), stable=True)[:k]] = True
        assert torch.equal(smallest(values, k), expected.reshape(values.shape)), k
    assert not smallest(torch.empty(0), 1).numel()
