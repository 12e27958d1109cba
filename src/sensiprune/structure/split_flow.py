"""Channels that a reshape spreads over several dimensions, and back.

Selective-kernel and split attention reshape a layer's 2·C outputs into (paths, C) and
weigh each path; attention reshapes 3·C outputs into (3, heads, head_dim). The walk follows
such a tensor as a :class:`~sensiprune.structure.channels.Split`: one slot per element of the split
dimensions. An operation that lines one index up with every index of another axis (a
broadcast, a reduction over that axis) makes the whole hyperplane one channel. Once the walk
is done, a split whose channels are not whole hyperplanes of one axis could not be cut into a
tensor that the model's reshape accepts, so it is pinned (:func:`plane_axis`).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from sensiprune.structure.channels import Flow, Split, UnionFind


def as_axes(value: Flow | Split) -> tuple[tuple[int, ...], np.ndarray]:
    if isinstance(value, Split):
        return value.dims, value.slots
    return (value.dim,), np.asarray(value.slots, dtype=np.int64)


def from_axes(dims: tuple[int, ...], slots: np.ndarray) -> Flow | Split:
    if len(dims) == 1:
        return Flow(dims[0], slots.reshape(-1).tolist())
    return Split(tuple(dims), slots)


def split_by_reshape(
    flow: Flow, before: tuple[int, ...], after: tuple[int, ...]
) -> Flow | Split | None:
    """The flow after a reshape that splits its dimension into several consecutive ones,
    everything before it unchanged, or that unfolds heads folded into the batch; None for
    any other reshape."""
    d = flow.dim
    if len(set(flow.slots)) < len(flow.slots):  # heads folded into the batch, B * H
        unfolded = _materialized(Split((d,), np.asarray(flow.slots)), before, after)
        return unfolded if isinstance(unfolded, Flow) else None
    if before[:d] != after[:d]:
        return None
    size, end = 1, d
    while end < len(after) and size < before[d]:
        size *= after[end]
        end += 1
    if size != before[d] or end - d < 2 or after[end:] != before[d + 1 :]:
        return None
    sizes = after[d:end]
    split = compact(tuple(range(d, end)), np.asarray(flow.slots, dtype=np.int64).reshape(sizes))
    return split if isinstance(split, Split) else None


def folded(flow: Flow, before: tuple[int, ...], after: tuple[int, ...]) -> Flow | None:
    """Channels folded into the dimensions before them (heads into the batch: (B, H, T, T)
    to (B·H, T, T)): each channel once per leading index, the channels varying fastest."""
    d, rest = flow.dim, before[flow.dim + 1 :]
    j = len(after) - len(rest) - 1
    if j < 0 or tuple(after[j + 1 :]) != tuple(rest) or after[j] % before[d]:
        return None
    if math.prod(after[:j]) * after[j] != math.prod(before[: d + 1]):
        return None
    return Flow(j, flow.slots * (after[j] // before[d]))


def reshaped(split: Split, before: tuple[int, ...], after: tuple[int, ...]) -> Flow | Split | None:
    """A split through a reshape: each dimension kept as it is (same size, same product of
    sizes before it) moves along; any other reshape is done on the slots
    (:func:`_materialized`)."""
    where = {(math.prod(after[:j]), size): j for j, size in enumerate(after)}
    moved = [where.get((math.prod(before[:d]), before[d])) for d in split.dims]
    if None not in moved:
        return Split(tuple(moved), split.slots)
    return _materialized(split, before, after)


def _materialized(
    split: Split, before: tuple[int, ...], after: tuple[int, ...]
) -> Flow | Split | None:
    """Any other reshape, done on the slots themselves: the dimensions are cut into the
    shortest runs whose sizes multiply alike before and after; in a run that holds split
    dimensions the others are spelled out (each slot repeated along them), the run is
    reshaped as the tensor is, and dimensions the slots do not vary along are dropped. So
    rotary pairs flatten into each head's width, and heads fold into the batch
    (``view(B * H, T, d)``, a slot repeated once per sample) and back."""
    ends, bounds = np.cumprod((1, *before)).tolist(), np.cumprod((1, *after)).tolist()
    cuts = sorted(set(ends) & set(bounds))
    if ends[-1] != bounds[-1]:
        return None
    order = np.argsort(split.dims)
    laid = np.transpose(split.slots, order)
    shape = [1] * len(before)
    for axis, d in enumerate(sorted(split.dims)):
        shape[d] = laid.shape[axis]
    laid = laid.reshape(shape)
    last = max(len(cuts) - 2, 0)
    run_in = np.minimum(np.searchsorted(cuts, ends[:-1], side="right") - 1, last)
    run_out = np.minimum(np.searchsorted(cuts, bounds[:-1], side="right") - 1, last)
    tracked = {int(run_in[d]) for d in split.dims}
    for d in range(len(before)):
        if run_in[d] in tracked:
            shape[d] = before[d]
    new_shape = [after[j] if run_out[j] in tracked else 1 for j in range(len(after))]
    return compact(tuple(range(len(after))), np.broadcast_to(laid, shape).reshape(new_shape))


def compact(dims: tuple[int, ...], slots: np.ndarray) -> Flow | Split | None:
    """The channels without the axes they do not vary along (a batch that heads were
    folded into, a dimension of size one)."""
    varying = [axis for axis in range(slots.ndim) if not (slots == slots.take([0], axis)).all()]
    for axis in reversed(range(slots.ndim)):
        if axis not in varying:
            slots = slots.take(0, axis)
    return from_axes(tuple(dims[a] for a in varying), slots) if varying else None


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


def coarsest_cut(roots: np.ndarray, split: Split, prefer: int) -> int:
    """The axis whose planes, each made one channel, merge the fewest channels of ``split``:
    with talking heads (queries and keys one class per head, values another), merging each
    head's plane keeps the heads apart, while merging each width position would make the
    whole split one channel. Ties go to ``prefer``."""
    classes = roots[split.slots]
    found, ids = np.unique(classes, return_inverse=True)
    ids = ids.reshape(classes.shape)
    kept = {}
    for axis in range(ids.ndim):
        if ids.shape[axis] < 2:
            continue
        merged = UnionFind()
        merged.new(len(found))
        for plane in np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1).tolist():
            for other in plane[1:]:
                merged.union(plane[0], other)
        kept[axis] = len({merged.find(i) for i in range(len(found))})
    return max(kept, key=lambda axis: (kept[axis], axis == prefer), default=prefer)
