"""Physical removal: build smaller parameters with the kept indices, along the layouts of
each module type's handler (see handlers/base.py). A module without a handler is cut tensor
by tensor, through the roles of :func:`sensiprune.handlers.base.param_role`; a norm class of a
model library that has none is cut as a LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from sensiprune.apply import masks
from sensiprune.handlers.base import handler_for, positions
from sensiprune.handlers.layouts import layout_for


def shrink(module: nn.Module, role: str, keep: torch.Tensor) -> None:
    """Keep only the ``keep`` indices (ascending, int64) of ``module`` in ``role``; dtype,
    device and grad kept."""
    layout = layout_for(module, role)
    n = layout.size(module)
    for cut in layout.cuts(module):
        tensor = getattr(module, cut.attr, None)
        if tensor is None:
            continue
        index = positions(cut, keep, n).to(tensor.device)
        mask = masks.mask_of(module, cut.attr)
        _replace(module, cut.attr, tensor.detach().index_select(cut.dim, index))
        if mask is not None:
            masks.set_mask(module, cut.attr, mask.index_select(cut.dim, index))
    for attr in layout.size_attrs:
        setattr(module, attr, len(keep))
    if layout.after is not None:
        layout.after(module, keep.tolist())


def refresh_loaded(module: nn.Module, kept_heads: list[int] | None) -> None:
    """Run the fix-ups of ``module``'s type after its sizes were restored from a save; a
    head-pruned layer's with the heads it kept."""
    handler = handler_for(module)
    for role, layout in handler.layouts.items() if handler is not None else ():
        keep = kept_heads if role == "head" else []
        if layout.after is not None and keep is not None:
            layout.after(module, keep)


Place = tuple[nn.Module, str]


def tied_parameters(model: nn.Module) -> list[list[Place]]:
    """Where one parameter sits in several modules (a language model's head and embedding)."""
    places: dict[int, list[Place]] = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((module, attr))
    return [found for found in places.values() if len(found) > 1]


def retie(ties: list[list[Place]]) -> None:
    """Tie again what surgery replaced in every place: each place got its own smaller copy of
    the same cut, so the first stands for all."""
    for places in ties:
        params = [getattr(module, attr) for module, attr in places]
        if len({id(p) for p in params}) == len(params):  # every place replaced, separately
            for module, attr in places[1:]:
                module._parameters[attr] = params[0]


def _replace(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = value
