"""Channel groups zeroed for a measurement and restored exactly: what a removal would do, with
no surgery."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sensiprune.handlers.base import positions
from sensiprune.handlers.layouts import layout_for
from sensiprune.structure.channels import Group, indices_by_slice, role_kind


@contextlib.contextmanager
def zeroed(groups: Sequence[Group], modules: dict[str, nn.Module]) -> Iterator[None]:
    """Zero everything that produces the groups' channels (output rows and biases, BatchNorm
    scale and shift, every gate block of a hidden unit), then restore it exactly.

    Zeroed groups behave as removed ones (the equivalence tests hold the library to that),
    so this measures a removal without doing surgery."""
    saved = []
    try:
        with torch.no_grad():
            for (layer, role), indices in indices_by_slice(groups).items():
                if role_kind(role) == "in":  # consumers read zeros once the producers are zero
                    continue
                module = modules[layer]
                layout = layout_for(module, role)
                chosen = torch.from_numpy(indices)
                for cut in layout.cuts(module):
                    tensor = getattr(module, cut.attr, None)
                    if tensor is None:
                        continue
                    where = positions(cut, chosen, layout.size(module)).to(tensor.device)
                    saved.append((tensor, cut.dim, where, tensor.index_select(cut.dim, where)))
                    tensor.index_fill_(cut.dim, where, 0.0)
        yield
    finally:
        with torch.no_grad():
            for tensor, dim, where, values in reversed(saved):
                tensor.index_copy_(dim, where, values)
