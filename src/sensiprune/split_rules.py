"""Rules for operations on channels a reshape spread over several dimensions (see
split_flow): moving, reducing, indexing, broadcasting and repeating them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import fx

from .channels import Flow, SameForEveryPart, Split, node_shape
from .operators import (
    ELEMENTWISE,
    ELEMENTWISE_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    SPLIT_RESHAPES,
    dims_arg,
    name_of,
    order_of,
)
from .split_flow import as_axes, broadcast_union, from_axes, permuted, reshaped, without_axis

if TYPE_CHECKING:
    from .graph import ChannelTracer


def visit(t: ChannelTracer, node: fx.Node) -> Any:
    """An operation on channels spread over several dimensions (see split_flow)."""
    name, first = name_of(node), node.args[0] if node.args else None
    value, before, after = t.flows.get(first), node_shape(first), node_shape(node)
    moved: Any = None
    if node.target in ELEMENTWISE or node.target in ELEMENTWISE_METHODS:
        moved = _elementwise(t, node)
    elif not isinstance(value, Split) or before is None:
        moved = None
    elif node.target in PASS_FUNCTIONS or node.target in PASS_METHODS:
        moved = value
    elif name in SPLIT_RESHAPES and after is not None:
        moved = t.sized(node, reshaped(value, before, after))
    elif name in ("permute", "transpose"):
        moved = permuted(value, order_of(node, len(before)))
    elif name == "repeat_interleave":
        moved = repeated(node, value, len(before))
    elif name in ("mean", "sum", "amax", "softmax", "log_softmax", "unbind", "getitem"):
        moved = _over_axis(t, node, value, len(before))
    return moved if moved is not None else t.pinned_output(node, f"{name} of split channels")


def repeated(node: fx.Node, value: Flow | Split, ndim: int) -> Any:
    """``repeat_interleave`` along tracked channels (key/value heads shared by groups of
    query heads): each copy is the channel it copies."""
    repeats = node.args[1] if len(node.args) > 1 else node.kwargs.get("repeats")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    dims, slots = as_axes(value)
    if not isinstance(repeats, int) or dim is None:
        return None
    if dim % ndim not in dims:
        return value
    return from_axes(dims, np.repeat(slots, repeats, dims.index(dim % ndim)))


def _over_axis(t: ChannelTracer, node: fx.Node, split: Split, ndim: int) -> Any:
    """Reductions, softmax, unbind and indexing across some dimensions of a split."""
    name = name_of(node)
    if name == "getitem":
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(i is Ellipsis or i is None for i in index):
            return None
        picked = {d: i for d, i in enumerate(index) if isinstance(i, int)}
        if any(not isinstance(i, (int, slice)) or (isinstance(i, slice) and i != slice(None)
               and d in split.dims) for d, i in enumerate(index)):  # fmt: skip
            return None
    else:
        dims = dims_arg(node, ndim) if name != "unbind" else {
            (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % ndim
        }  # fmt: skip
        if dims is None:
            return None
        picked = dict.fromkeys(dims, 0)
    dims, slots = split.dims, split.slots
    if name in ("softmax", "log_softmax"):  # each output reads the whole axis
        for d in set(picked) & set(dims):
            without_axis(t.uf, dims, slots, dims.index(d))
        return split
    if name == "unbind" and set(picked) & set(dims):
        axis = dims.index(next(iter(picked)))
        rest = tuple(x - (x > dims[axis]) for x in dims[:axis] + dims[axis + 1 :])
        return [from_axes(rest, np.take(slots, i, axis)) for i in range(
            slots.shape[axis])]  # fmt: skip
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    for d in sorted(set(picked) & set(dims), reverse=True):
        axis = dims.index(d)
        if name == "getitem":
            dims, slots = dims[:axis] + dims[axis + 1 :], np.take(slots, picked[d], axis)
        else:
            dims, slots = without_axis(t.uf, dims, slots, axis)
    if name != "getitem" and keepdim:
        return from_axes(dims, slots)
    shifted = tuple(d - sum(p < d for p in picked) for d in dims)
    moved = from_axes(shifted, slots)
    return SameForEveryPart(moved) if name == "unbind" else moved


def _elementwise(t: ChannelTracer, node: fx.Node) -> Any:
    out = node_shape(node)
    items = []
    for arg in node.args:
        shape = node_shape(arg)
        if shape is None or out is None:
            continue
        value = t.flows.get(arg)
        if not isinstance(value, (Flow, Split)):
            if math.prod(shape) > 1:
                return None  # an untracked tensor along the split channels
            continue
        dims, slots = as_axes(value)
        offset = len(out) - len(shape)
        for axis in reversed(range(len(dims))):  # broadcast axes carry no channel
            if slots.shape[axis] == 1 and out[dims[axis] + offset] > 1:
                dims, slots = dims[:axis] + dims[axis + 1 :], np.take(slots, 0, axis)
        if dims:
            items.append((tuple(d + offset for d in dims), slots))
    joined = broadcast_union(t.uf, items) if items else None
    return from_axes(*joined) if joined is not None else None
