"""The layout of a module's role: from its type's handler, from the parameter a role names
(a module without a handler), or a LayerNorm's for a norm class of a model library."""

from __future__ import annotations

import functools

from torch import nn

from sensiprune.handlers import input_slices
from sensiprune.handlers.base import Cut, Layout, fixed, handler_for
from sensiprune.handlers.norm import NORM_LAYOUT, is_norm


@functools.cache
def _param_layout(role: str) -> Layout:
    attr, _, dim = role.partition("@")[2].rpartition(":")
    if input_slices.is_slice(attr):
        return input_slices.layout(attr)
    return Layout(
        fixed(Cut(attr, int(dim))), (), count=lambda module: getattr(module, attr).shape[int(dim)]
    )


def layout_for(module: nn.Module, role: str) -> Layout:
    if "@" in role:
        return _param_layout(role)
    handler = handler_for(module)
    if handler is not None and role in handler.layouts:
        return handler.layouts[role]
    if role == "channel" and is_norm(module):
        return NORM_LAYOUT
    raise TypeError(f"no surgery for the {role} indices of {type(module).__name__}")


def size_of(module: nn.Module, role: str) -> int | None:
    """How many indices ``module`` has in ``role`` (a projection's output rows for "out", its
    input columns for "in"); None when surgery has no such layout for it."""
    try:
        return layout_for(module, role).size(module)
    except TypeError:
        return None
