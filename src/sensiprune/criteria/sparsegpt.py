"""Blocked OBS for wide layers (Frantar & Alistarh 2023, SparseGPT).

Exact greedy OBS keeps one running inverse per row: rows x removed x columns² work, which is
hours for a 3072-column layer. SparseGPT visits the columns left to right in blocks; within a
block it chooses which weights to drop by w² / [U]_cc² (U the upper Cholesky factor of H⁻¹, the
OBS saliency given the columns already fixed) and pushes each column's error onto the columns
still to come. One Cholesky factor serves every row: columns³ + rows x columns² work.

N:M patterns are chosen the same way, one group at a time: when the column walk reaches the
first column of a group of M, the N weights of each row with the least saliency among those M
(with the error of every column before already pushed onto them) go.
"""

from __future__ import annotations

import torch

from sensiprune.errors import SensipruneError
from sensiprune.smallest import smallest

BLOCK = 128


def prune_blocked(
    weight: torch.Tensor,
    upper: torch.Tensor,
    count: int,
    frozen: int = 0,
    pruned_before: torch.Tensor | None = None,
    pattern: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove ``count`` weights of the layer (rows x columns), compensating; with an N:M
    ``pattern``, N of every M consecutive removable columns of each row instead. ``upper``
    is :func:`upper_factor` of the inverse Hessian (layers that read one input share it).

    The last ``frozen`` columns (the bias) absorb error but are never removed; weights in
    ``pruned_before`` are removed first. Returns the new weights and the kept mask.
    ``overwrite`` works in ``weight`` itself (one copy held, not two).
    """
    w = weight if overwrite else weight.clone()
    rows, cols = w.shape
    removable = cols - frozen
    before = torch.zeros(rows, cols, dtype=torch.bool) if pruned_before is None else pruned_before
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    width = BLOCK if pattern is None else max(BLOCK // pattern[1], 1) * pattern[1]
    done = 0
    for start in range(0, cols, width):
        stop = min(start + width, cols)
        block = w[:, start:stop].clone()
        factor = upper[start:stop, start:stop]
        if pattern is None:
            # this block's share of the count, rounded so the total comes out exact
            share = round(count * min(stop, removable) / removable) - done if removable else 0
            chosen = _choose(block, factor, before[:, start:stop], max(share, 0), start, removable)
            done += int(chosen.sum())
        else:
            chosen = before[:, start:stop].clone()
        errors = torch.zeros_like(block)
        for i in range(stop - start):
            if pattern is not None and (start + i) % pattern[1] == 0 and start + i < removable:
                _choose_group(block, factor, chosen, i, *pattern)
            column = block[:, i]
            kept = torch.where(chosen[:, i], torch.zeros_like(column), column)
            error = (column - kept) / factor[i, i]
            block[:, i:] -= error.unsqueeze(1) * factor[i, i:].unsqueeze(0)
            block[:, i] = kept
            errors[:, i] = error
        w[:, start:stop] = block
        w[:, stop:].addmm_(errors, upper[start:stop, stop:], alpha=-1)  # no temporary
        pruned[:, start:stop] = chosen
    return w, ~pruned


def upper_factor(hessian_inverse: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """The upper Cholesky factor of H⁻¹ (in place with ``overwrite``); where float32 rounding
    left H⁻¹ not quite positive definite, of H⁻¹ with a little more on its diagonal."""
    info = torch.empty((), dtype=torch.int32)
    if overwrite:  # in the symmetric H⁻¹'s column-major transpose: torch copies no matrix
        columns = hessian_inverse.mT
        torch.linalg.cholesky_ex(columns, upper=True, out=(columns, info))
        if int(info) == 0:
            return columns
        raise SensipruneError(
            "a layer's inverse Hessian is not positive definite in float32: use more "
            "calibration data, or criterion='activation'"
        )
    damp = 1e-6 * hessian_inverse.diagonal().mean()
    for attempt in range(4):
        matrix = hessian_inverse
        if attempt:
            matrix = hessian_inverse.clone()
            matrix.diagonal().add_(damp * 10**attempt)
        upper, info = torch.linalg.cholesky_ex(matrix, upper=True)
        if int(info) == 0:
            return upper
    raise SensipruneError(
        "the layer's input second moments are too ill-conditioned for OBS even with extra "
        "damping: use more calibration data, or criterion='activation'"
    )


def _choose_group(
    block: torch.Tensor, factor: torch.Tensor, chosen: torch.Tensor, at: int, zeros: int, size: int
) -> None:
    """Mark in ``chosen`` the ``zeros`` cheapest of columns ``at`` to ``at + size`` in every
    row, by the OBS saliency of the block as it is now; weights marked before go first."""
    columns = slice(at, at + size)
    saliency = block[:, columns].pow(2) / factor.diagonal()[columns].pow(2)
    saliency = saliency.masked_fill(chosen[:, columns], -torch.inf)
    order = torch.argsort(saliency, dim=1, stable=True)[:, :zeros]
    chosen[:, columns] |= torch.zeros_like(saliency, dtype=torch.bool).scatter_(1, order, True)


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
    return smallest(saliency, share)
