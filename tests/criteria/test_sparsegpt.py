"""Blocked OBS fills N:M patterns: N of every M removable columns of each row, never the bias,
what was pruned before first, with less output error than magnitude in the same pattern."""

from __future__ import annotations

import pytest
import torch

from sensiprune.criteria.obs import damped_inverse
from sensiprune.criteria.sparsegpt import prune_blocked, upper_factor


@pytest.mark.parametrize(("zeros", "size"), [(2, 4), (1, 3), (4, 8)])
def test_a_pattern_is_filled_group_by_group_with_compensation(zeros, size):
    torch.manual_seed(0)
    rows, inputs = 16, 24 * 12  # 288 inputs: blocks of 128 (or 126 for groups of 3) and a rest
    x = torch.relu(torch.randn(1500, 48, dtype=torch.float64) @ torch.randn(48, inputs).double())
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)  # the bias column
    w = torch.randn(rows, inputs + 1, dtype=torch.float64)
    before = torch.zeros_like(w, dtype=torch.bool)
    before[0, :size] = True  # a whole group pruned before: it stays pruned
    w[before] = 0
    new, kept = prune_blocked(
        w, upper_factor(damped_inverse(x.T @ x / len(x))), 0, 1, before, (zeros, size)
    )
    groups = (~kept[:, :inputs]).reshape(rows, -1, size).sum(-1)
    assert (groups[0, 0] == size) and (groups.flatten()[1:] == zeros).all()
    assert kept[:, -1].all() and (new[~kept] == 0).all()
    magnitude = w.clone()
    scores = w[:, :inputs].abs().masked_fill(before[:, :inputs], -1).reshape(rows, -1, size)
    drop = torch.zeros_like(scores, dtype=torch.bool)
    drop.scatter_(-1, scores.argsort(-1)[..., :zeros], True)
    drop[0, 0] = True
    magnitude[:, :inputs][drop.reshape(rows, inputs)] = 0

    def error(v: torch.Tensor) -> float:
        return ((x @ (w - v).T) ** 2).mean().item()

    assert error(new) < 0.8 * error(magnitude)
