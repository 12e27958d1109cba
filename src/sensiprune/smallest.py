"""The k smallest of many values, as a mask, in linear time.

A stable argsort of one language-model layer (millions of weights) takes seconds and eight
bytes per weight for the order; finding the k-th value and taking the ties in index order
picks exactly the entries the stable sort's first k would.
"""

from __future__ import annotations

import torch

_CHUNK = 1 << 20  # ties are resolved a chunk at a time: no index of every tie held


def smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of ``values``' shape marking its ``k`` smallest entries; of equal values
    the earlier ones go first, as in a stable sort. ``values`` holds no NaN."""
    flat = values.reshape(-1)
    n = flat.numel()
    if k <= 0 or k >= n:
        return torch.full(values.shape, k >= n and n > 0, dtype=torch.bool)
    threshold = flat.kthvalue(k).values
    chosen = flat < threshold
    need = k - int(chosen.sum())
    ties = flat == threshold
    for start in range(0, n, _CHUNK):
        if need <= 0:
            break
        part = ties[start : start + _CHUNK]
        have = int(part.sum())
        if have <= need:
            chosen[start : start + _CHUNK] |= part
        else:
            chosen[part.nonzero().squeeze(1)[:need] + start] = True
        need -= min(have, need)
    return chosen.reshape(values.shape)
