"""Channels that a reshape spreads over several dimensions, and back.

Selective-kernel and split attention reshape a layer's 2·C outputs into (paths, C) and
weigh each path; attention reshapes 3·C outputs into (3, heads, head_dim). The walk follows
such a tensor as a :class:`~sensiprune.channels.Split`: one slot per element of the split
dimensions. An operation that lines one index up with every index of another axis (a
broadcast, a reduction over that axis) makes the whole hyperplane one channel. Once the walk
is done, a split whose channels are not whole hyperplanes of one axis could not be cut into a
tensor that the model's reshape accepts, so it is pinned (:func:`plane_axis`).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from .channels import Flow, Split, UnionFind


def as_axes(value: Flow | Split) -> tuple[tuple[int, ...], np.ndarray]:
    if isinstance(value, Split):
        return value.dims, value.slots
    return (value.dim,), np.asarray(value.slots, dtype=np.int64)


def from_axes(dims: tuple[int, ...], slots: np.ndarray) -> Flow | Split:
    if len(dims) == 1:
        return Flow(dims[0], slots.reshape(-1).tolist())
    return Split(tuple(dims), slots)


def split_by_reshape(flow: Flow, before: tuple[int, ...], after: tuple[int, ...]) -> Split | None:
    """The flow after a reshape that splits its dimension into several consecutive ones,
    everything before it unchanged; None for any other reshape."""
    d = flow.dim
    if before[:d] != after[:d]:
        return None
    size, end = 1, d
    while end < len(after) and size < before[d]:
        size *= after[end]
        end += 1
    if size != before[d] or end - d < 2 or after[end:] != before[d + 1 :]:
        return None
    sizes = after[d:end]
    return Split(tuple(range(d, end)), np.asarray(flow.slots, dtype=np.int64).reshape(sizes))


def reshaped(split: Split, before: tuple[int, ...], after: tuple[int, ...]) -> Flow | Split | None:
    """A split through a reshape: each dimension kept as it is (same size, same product of
    sizes before it) moves along; split dimensions that sit together in order and merge into
    one become one flow again. None when the reshape mixes them with other dimensions."""
    where = {(math.prod(after[:j]), size): j for j, size in enumerate(after)}
    moved = [where.get((math.prod(before[:d]), before[d])) for d in split.dims]
    if None not in moved:
        return Split(tuple(moved), split.slots)
    return _merged(split, before, after)


def _merged(split: Split, before: tuple[int, ...], after: tuple[int, ...]) -> Flow | Split | None:
    """A reshape that only merges runs of neighbouring dimensions (``flatten(-2)`` of a
    rotary pair axis into each head's width): split dimensions in one run become one, in
    order; None if a run also holds an untracked dimension longer than one."""
    ends = np.cumprod((1, *before)).tolist()
    bounds = [1, *np.cumprod(after).tolist()] if after else [1]
    if not set(bounds) <= set(ends) or ends[-1] != bounds[-1]:
        return None
    into = {}  # before dimension -> after dimension
    for j in range(len(after)):
        start = ends.index(bounds[j])
        stop = len(ends) - 1 - ends[::-1].index(bounds[j + 1])
        into.update(dict.fromkeys(range(start, stop), j))
    order = np.argsort(split.dims)
    dims = [split.dims[o] for o in order]
    slots = np.transpose(split.slots, order)
    runs: dict[int, list[int]] = {}
    for d in dims:
        runs.setdefault(into[d], []).append(d)
    for j, run in runs.items():
        span = [d for d, k in into.items() if k == j and (before[d] > 1 or d in run)]
        if run != span:
            return None
    shape = [math.prod(slots.shape[dims.index(d)] for d in run) for run in runs.values()]
    return from_axes(tuple(runs), slots.reshape(shape))


def permuted(split: Split, order: list[int]) -> Split:
    return Split(tuple(order.index(d) for d in split.dims), split.slots)


def without_axis(uf: UnionFind, dims: tuple[int, ...], slots: np.ndarray, axis: int):
    """Reduce over one split axis: its whole hyperplanes become one channel each."""
    first = np.take(slots, 0, axis=axis)
    for i in range(1, slots.shape[axis]):
        union_all(uf, first, np.take(slots, i, axis=axis))
    return dims[:axis] + dims[axis + 1 :], first


def union_all(uf: UnionFind, a: np.ndarray, b: np.ndarray) -> None:
    for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()):
        uf.union(x, y)


def broadcast_union(
    uf: UnionFind, items: list[tuple[tuple[int, ...], np.ndarray]]
) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Operands of an element-wise operation, each tracked along some output dimensions:
    slots that meet at one output element are one channel. The operand tracked along the
    most dimensions gives the result; None when no operand's dimensions hold all others'."""
    widest_dims, widest = max(items, key=lambda item: len(item[0]))
    for dims, slots in items:
        if not set(dims) <= set(widest_dims):
            return None
        # lay this operand out along the widest operand's axes, broadcasting the rest
        axes = [widest_dims.index(d) for d in dims]
        shape = [1] * len(widest_dims)
        for axis, size in zip(axes, slots.shape):
            shape[axis] = size
        laid = np.transpose(slots, np.argsort(axes)).reshape(shape)
        union_all(uf, widest, np.broadcast_to(laid, widest.shape))
    return widest_dims, widest


def plane_axis(roots: np.ndarray, split: Split, dims: Collection[int] | None = None) -> int | None:
    """The axis whose whole hyperplanes every channel of ``split`` is made of, so that
    removing channels leaves a box that a reshape of the model accepts; None if none is
    (among the axes of tensor dimensions ``dims``, where given). Of several, the first axis
    longer than one."""
    classes = roots[split.slots]
    whole = [
        axis
        for axis in range(classes.ndim)
        if (dims is None or split.dims[axis] in dims)
        and (lambda planes: (planes == planes[:, :1]).all())(
            np.moveaxis(classes, axis, 0).reshape(classes.shape[axis], -1)
        )
    ]
    longer = [axis for axis in whole if classes.shape[axis] > 1]
    return (longer or whole or [None])[0]
