"""Blocked OBS for wide layers (Frantar & Alistarh 2023, SparseGPT).

Exact greedy OBS keeps one running inverse per row: rows x removed x columns² work, which is
hours for a 3072-column layer. SparseGPT visits the columns left to right in blocks; within a
block it chooses which weights to drop by w² / [U]_cc² (U the upper Cholesky factor of H⁻¹, the
OBS saliency given the columns already fixed) and pushes each column's error onto the columns
still to come. One Cholesky factor serves every row: columns³ + rows x columns² work.
"""

from __future__ import annotations

import torch

BLOCK = 128


def prune_blocked(
    weight: torch.Tensor,
    hessian_inverse: torch.Tensor,
    count: int,
    frozen: int = 0,
    pruned_before: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove ``count`` weights of the layer (rows x columns, float64), compensating.

    The last ``frozen`` columns (the bias) absorb error but are never removed; weights in
    ``pruned_before`` are removed first. Returns the new weights and the kept mask.
    """
    w = weight.clone()
    rows, cols = w.shape
    upper = torch.linalg.cholesky(hessian_inverse, upper=True)
    removable = cols - frozen
    before = torch.zeros(rows, cols, dtype=torch.bool) if pruned_before is None else pruned_before
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    done = 0
    for start in range(0, cols, BLOCK):
        stop = min(start + BLOCK, cols)
        block = w[:, start:stop].clone()
        factor = upper[start:stop, start:stop]
        # this block's share of the count, rounded so the total comes out exact
        share = round(count * min(stop, removable) / removable) - done if removable else 0
        chosen = _choose(block, factor, before[:, start:stop], max(share, 0), start, removable)
        done += int(chosen.sum())
        errors = torch.zeros_like(block)
        for i in range(stop - start):
            column = block[:, i]
            kept = torch.where(chosen[:, i], torch.zeros_like(column), column)
            error = (column - kept) / factor[i, i]
            block[:, i:] -= error.unsqueeze(1) * factor[i, i:].unsqueeze(0)
            block[:, i] = kept
            errors[:, i] = error
        w[:, start:stop] = block
        w[:, stop:] -= errors @ upper[start:stop, stop:]
        pruned[:, start:stop] = chosen
    return w, ~pruned


def _choose(
    block: torch.Tensor,
    factor: torch.Tensor,
    before: torch.Tensor,
    share: int,
    offset: int,
    removable: int,
) -> torch.Tensor:
    """The ``share`` cheapest weights of the block (earlier-pruned ones first, bias never)."""
    saliency = block.pow(2) / factor.diagonal().pow(2)
    saliency = saliency.masked_fill(before, -torch.inf)
    columns = torch.arange(offset, offset + block.shape[1])
    saliency[:, columns >= removable] = torch.inf
    share = max(share, int(before.sum()))
    share = min(share, int(torch.isfinite(saliency).sum() + before.sum()))
    chosen = torch.zeros_like(block, dtype=torch.bool)
    if share:
        order = torch.argsort(saliency.reshape(-1), stable=True)[:share]
        chosen.view(-1)[order] = True
    return chosen
