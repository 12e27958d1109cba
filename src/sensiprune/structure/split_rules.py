"""Rules for operations on channels a reshape spread over several dimensions (see
split_flow): moving, reducing, indexing, broadcasting and repeating them."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import fx

from sensiprune.structure.channels import Flow, SameForEveryPart, Split, node_shape
from sensiprune.structure.operators import (
    ELEMENTWISE,
    ELEMENTWISE_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    SPLIT_RESHAPES,
    dims_arg,
    name_of,
    order_of,
)
from sensiprune.structure.param_flow import ParamFlow
from sensiprune.structure.sizes import sized
from sensiprune.structure.split_flow import (
    as_axes,
    broadcast_union,
    from_axes,
    permuted,
    reshaped,
    union_all,
    without_axis,
)

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def visit(t: ChannelTracer, node: fx.Node) -> Any:
    """An operation on channels spread over several dimensions (see split_flow)."""
    name, first = name_of(node), node.args[0] if node.args else None
    value, before, after = t.flows.get(first), node_shape(first), node_shape(node)
    moved: Any = None
    if node.target in ELEMENTWISE or node.target in ELEMENTWISE_METHODS:
        moved = _elementwise(t, node)
    elif name in ("cat", "concat"):
        moved = _concat(t, node)
    elif name == "stack":
        moved = _stack(t, node)
    elif not isinstance(value, Split) or before is None:
        moved = None
    elif node.target in PASS_FUNCTIONS or node.target in PASS_METHODS:
        moved = value
    elif name in SPLIT_RESHAPES and after is not None:
        moved = sized(t, node, reshaped(value, before, after))
    elif name in ("permute", "transpose"):
        moved = permuted(value, order_of(node, len(before)))
    elif name == "repeat_interleave":
        moved = repeated(node, value, len(before))
    elif name in ("split", "chunk"):
        moved = _parts(t, node, value, len(before))
    elif name in ("mean", "sum", "amax", "softmax", "log_softmax", "normalize", "unbind",
                  "getitem"):  # fmt: skip
        moved = _over_axis(t, node, value, len(before))
    return moved if moved is not None else t.pinned_output(node, f"{name} of split channels")


def repeated(node: fx.Node, value: Flow | Split, ndim: int) -> Any:
    """``repeat_interleave`` along tracked channels (key/value heads shared by groups of
    query heads): each copy is the channel it copies."""
    repeats = node.args[1] if len(node.args) > 1 else node.kwargs.get("repeats")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    dims, slots = as_axes(value)
    if dim is None:
        return None
    if dim % ndim not in dims:  # along another dimension, by any count (the batch)
        return value
    if not isinstance(repeats, int):
        return None
    return from_axes(dims, np.repeat(slots, repeats, dims.index(dim % ndim)))


def _over_axis(t: ChannelTracer, node: fx.Node, split: Split, ndim: int) -> Any:
    """Reductions, softmax, unbind and indexing across some dimensions of a split."""
    name = name_of(node)
    if name == "getitem":
        index = _index(node.args[1], ndim)
        if index is None:
            return None
        picked = {d: i for d, i in enumerate(index) if isinstance(i, int)}
        split = _sliced(t, node, split, index)
        if split is None:
            return None
    else:
        dims = _one_dim(node, ndim) if name in ("unbind", "normalize") else dims_arg(node, ndim)
        if dims is None:
            return None
        picked = dict.fromkeys(dims, 0)
    dims, slots = split.dims, split.slots
    if name in ("softmax", "log_softmax", "normalize"):  # each output reads the whole axis
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


def _one_dim(node: fx.Node, ndim: int) -> set[int]:
    """The dimension of ``unbind(x, dim=0)`` or ``F.normalize(x, p=2, dim=1)``."""
    at, default = (2, 1) if name_of(node) == "normalize" else (1, 0)
    dim = node.args[at] if len(node.args) > at else node.kwargs.get("dim", default)
    return {dim % ndim}


def _index(index: Any, ndim: int) -> tuple | None:
    """An index as one entry per dimension (``...`` spelled out; slice ends computed in
    forward read as their values); None for indexing this rule does not follow."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1 :]
    resolved = []
    for i in index:
        if isinstance(i, slice):
            ends = [e.meta.get("value", e) if isinstance(e, fx.Node) else e
                    for e in (i.start, i.stop, i.step)]  # fmt: skip
            if any(e is not None and not isinstance(e, int) for e in ends):
                return None  # an end computed in forward whose value was not recorded
            i = slice(*ends)
        elif isinstance(i, (list, tuple)) and all(isinstance(x, int) for x in i):
            i = list(i)  # positions picked by a list keep the dimension
        elif not isinstance(i, int):
            return None
        resolved.append(i)
    return tuple(resolved)


def _sliced(t: ChannelTracer, node: fx.Node, split: Split, index: tuple) -> Split | None:
    """A slice of a dimension the channels spread over (``x[..., : d // 2]`` of each
    head, as rotary embeddings take), or positions picked by a list: the cut must then keep
    that dimension whole. Positions counted from the end (a multi-query key and value after
    the queries, ``qkv[..., :-2, :]`` and ``qkv[..., [-2], :]``) stay right if the last
    planes stay: those are kept, and the others may be cut."""
    dims, slots = split.dims, split.slots
    whole, changed = set(), False
    for d, i in enumerate(index):
        if isinstance(i, (slice, list)) and d in dims:
            axis, n = dims.index(d), slots.shape[dims.index(d)]
            kept = np.arange(n)[i]
            if len(kept) == n:
                continue
            tail = _from_end(i)
            if tail is None:
                whole.add(d)
            else:
                t.pinned.update(np.take(split.slots, range(n - tail, n), axis).ravel().tolist())
            slots, changed = np.take(slots, kept, axis), True
    if whole:
        t.splits.append((node, split, frozenset(dims) - whole))
    return Split(dims, slots) if changed else split


def _from_end(index: slice | list) -> int | None:
    """How many last positions an index counted only from the end depends on; None if it
    counts from the start."""
    ends = [index.start, index.stop] if isinstance(index, slice) else list(index)
    if isinstance(index, slice) and index.step not in (None, 1):
        return None
    if any(e is not None and e >= 0 for e in ends):
        return None
    return max((-e for e in ends if e is not None), default=0)


def _concat(t: ChannelTracer, node: fx.Node) -> Any:
    """Concatenation of split channels: along one of their dimensions (the halves of
    rotary embeddings put back in another order), or along another one, where the parts'
    channels at each place are one. A legacy empty operand (shape (0,)) is skipped."""
    tensors = [a for a in node.args[0] if node_shape(a) != (0,)]
    out = node_shape(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    values = [t.flows.get(a) for a in tensors]
    if out is None or not all(isinstance(v, (Flow, Split)) for v in values):
        return None
    axes = [as_axes(v) for v in values]
    dims, first = axes[0]
    if any(d != dims for d, _ in axes):
        return None
    dim %= len(out)
    if dim in dims:
        axis = dims.index(dim)
        rest = [np.delete(np.asarray(s.shape), axis).tolist() for _, s in axes]
        if any(r != rest[0] for r in rest):
            return None
        return from_axes(dims, np.concatenate([s for _, s in axes], axis))
    if any(s.shape != first.shape for _, s in axes):
        return None
    for _, slots in axes[1:]:
        union_all(t.uf, first, slots)
    return from_axes(dims, first)


def _stack(t: ChannelTracer, node: fx.Node) -> Any:
    """Split channels stacked along a new dimension (rotary pairs ``stack((-x2, x1), -1)``):
    the new dimension is one more that the channels spread over."""
    tensors, out = node.args[0], node_shape(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    values = [t.flows.get(a) for a in tensors]
    if out is None or not all(isinstance(v, (Flow, Split)) for v in values):
        return None
    axes = [as_axes(v) for v in values]
    if any(d != axes[0][0] or s.shape != axes[0][1].shape for d, s in axes):
        return None
    dim %= len(out)
    dims = (*tuple(d + (d >= dim) for d in axes[0][0]), dim)
    return Split(dims, np.stack([s for _, s in axes], axis=-1))


def _parts(t: ChannelTracer, node: fx.Node, split: Split, ndim: int) -> Any:
    """``split`` / ``chunk`` of split channels: along one of their dimensions (query, key
    and value side by side in each head), each part takes its slice, and the cut must keep
    that dimension whole; along another, every part has the same channels."""
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
    size = size if size is not None else node.kwargs.get("chunks")
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % ndim
    if dim not in split.dims:
        return SameForEveryPart(split)
    axis = split.dims.index(dim)
    n = split.slots.shape[axis]
    if name_of(node) == "chunk":
        if not isinstance(size, int) or n % size:
            return None
        size = n // size
    if isinstance(size, int):
        size = [size] * (n // size) + ([n % size] if n % size else [])
    if not isinstance(size, (list, tuple)) or sum(size) != n:
        return None
    t.splits.append((node, split, frozenset(split.dims) - {dim}))
    starts = np.cumsum([0, *size]).tolist()
    return [
        Split(split.dims, np.take(split.slots, range(a, b), axis))
        for a, b in itertools.pairwise(starts)
    ]


def _elementwise(t: ChannelTracer, node: fx.Node) -> Any:
    """Operands meet element by element. An untracked operand along the split channels
    (rotary ``cos`` / ``sin`` tables over each head's width) holds if the cut removes whole
    planes of a dimension it is broadcast along (the heads). A parameter along one dimension
    of the split (XCiT's temperature per head) may also be cut with the planes of that
    dimension, where those are what the cut removes (graph.ChannelTracer.run)."""
    out = node_shape(node)
    items = []
    allowed: set[int] | None = None
    per_plane = []  # parameters with one entry per index of one dimension (a scale per head)
    for arg in node.args:
        shape = node_shape(arg)
        if shape is None or out is None:
            continue
        value = t.flows.get(arg)
        at = _one_axis(value, shape, len(out))
        if at is not None:
            per_plane.append((value, at, len(out) - len(shape)))
        fixed = isinstance(value, (Flow, Split)) and t.all_pinned(value)
        if fixed or not isinstance(value, (Flow, Split)):  # (an input's positions: fixed)
            if math.prod(shape) > 1:
                offset = len(out) - len(shape)
                broadcast = {d for d in range(len(out)) if d < offset or shape[d - offset] == 1}
                allowed = broadcast if allowed is None else allowed & broadcast
            continue
        dims, slots = as_axes(value)
        offset = len(out) - len(shape)
        for axis in reversed(range(len(dims))):  # broadcast axes carry no channel
            if slots.shape[axis] == 1 and out[dims[axis] + offset] > 1:
                dims, slots = dims[:axis] + dims[axis + 1 :], np.take(slots, 0, axis)
        if dims:
            items.append((tuple(d + offset for d in dims), slots))
    joined = broadcast_union(t.uf, items) if items else None
    if joined is None:
        return None
    result = from_axes(*joined)
    for value, at, offset in per_plane:  # or cut along its dimension, and it with it
        if isinstance(result, Split) and at in result.dims and allowed is not None:
            t.plane_params.append((value, at - offset, result, at))
            allowed.add(at)
    if allowed is not None:
        if not isinstance(result, Split) or not allowed & set(result.dims):
            return None
        t.splits.append((node, result, frozenset(allowed)))
    return result


def _one_axis(value: Any, shape: tuple[int, ...], ndim: int) -> int | None:
    """The output dimension along which a parameter operand has more than one entry, where
    it has exactly one such (XCiT's temperature per head, (heads, 1, 1)); else None."""
    if not isinstance(value, ParamFlow):
        return None
    offset = ndim - len(shape)
    spread = [d for d, size in enumerate(shape) if size > 1]
    if len(spread) != 1 or not value.along(spread[0]):
        return None
    return spread[0] + offset
