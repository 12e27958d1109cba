"""Sizes a model's code reads off tensors (``x.shape``, ``C // heads``) and hands to a reshape:
where such a size counts another tensor's channels, the two are tied (ties.py), so they
shrink together; where the code fixes a size, its channels are held."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import fx

from sensiprune.structure.channels import (
    Flow,
    Split,
    describe,
    folded_period,
    node_args,
    node_shape,
)
from sensiprune.structure.operators import name_of, size_args

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def size_read(t: ChannelTracer, node: fx.Node) -> Any:
    """``x.shape``, ``x.size(d)`` and their items: a size read from the channels is a
    :class:`SizeOf` them, so that a reshape to that size keeps the count in step."""
    name, args = name_of(node), node.args
    source = t.flows.get(args[0]) if args and isinstance(args[0], fx.Node) else None
    if isinstance(source, Flow) and t.all_pinned(source):
        source = None  # fixed channels (an input's positions): a size that never changes
    if (name == "getattr" and args[1:] == ("shape",)) or (name == "size" and len(args) == 1):
        return _Sizes(source) if isinstance(source, Flow) else None
    if name == "size" and len(args) == 2 and isinstance(source, Flow):
        shape = node_shape(args[0])
        return SizeOf(source.slots) if shape and args[1] % len(shape) == source.dim else None
    if name == "getitem" and isinstance(source, _Sizes) and isinstance(args[1], int):
        shape = node_shape(args[0].args[0])
        at = args[1] % len(shape) if shape else None
        return SizeOf(source.flow.slots) if at == source.flow.dim else None
    reads = [t.flows.get(a) for a in node_args(node)]
    reads = [r for r in reads if isinstance(r, SizeOf)]
    if reads:  # arithmetic on a size read (C // heads): it still depends on the channels
        return SizeOf([slot for r in reads for slot in r.slots], exact=False)
    return None


def sized(t: ChannelTracer, node: fx.Node, result: Any) -> Any:
    """A reshape to sizes read from channels elsewhere (``reshape(B, N, C)`` with
    ``C = x.shape[2]``): the output's dimension must keep as many channels as those, so
    they are one channel position by position; where it does not track channels, the
    channels read must stay."""
    sizes = [e for size in size_args(node) for e in size_elements(t, size)]
    source = t.flows.get(node.args[0])
    source_slots = source.slots if isinstance(source, Flow) else None
    for at, size in enumerate(sizes):
        if isinstance(size, int) and size >= 0:  # a constant: an attribute may hold it
            if isinstance(result, Flow) and result.dim == at:
                # heads folded into the batch (B·H): the code counts the heads
                heads = folded_period(result.slots) or size
                t.fix(node, (heads,), [result.slots[:heads]])
            elif isinstance(result, Split) and at in result.dims:
                axis = result.dims.index(at)
                planes = np.moveaxis(result.slots, axis, 0).reshape(size, -1)
                heads = folded_period([tuple(p) for p in planes.tolist()]) or size
                first = np.take(result.slots, np.arange(heads), axis=axis)
                t.fix(node, (heads,), [(Split(result.dims, first), axis)])
            continue
        if not isinstance(size, SizeOf) or size.slots == source_slots:
            continue  # a size computed from the reshaped tensor's own channels follows them
        if tie(t, node, result, at, size):
            continue
        kept = isinstance(result, Flow) and result.dim == at and size.exact
        if kept and len(result.slots) == len(size.slots):
            for a, b in zip(size.slots, result.slots):
                t.uf.union(a, b)
        else:
            t.pinned.update(size.slots)
            t.untouched.setdefault(describe(node), "a reshape to a size computed from "
                                      "the channels of another tensor")  # fmt: skip
    return result


def tie(t: ChannelTracer, node: fx.Node, result: Any, at: int, size: SizeOf) -> bool:
    """Keep ``result``'s channels along ``at`` in step with the other tensor's that
    ``size`` was read or computed from (ties.py); False where they cannot be, or where
    sizes the model fixes are kept (``pin_fixed``)."""
    side = None if t.pin_fixed else _tied_side(node, result, at, size)
    if side is not None:
        t.ties.append((size.slots, side, node, at))
    return side is not None


def size_elements(t: ChannelTracer, size: Any) -> list:
    """The sizes one argument of a reshape stands for, each an int, a :class:`SizeOf`
    channels, or None where unknown: ``x.size()[:2] + (t.inner,)`` is three."""
    if isinstance(size, (list, tuple)):
        return [e for item in size for e in size_elements(t, item)]
    if not isinstance(size, fx.Node):
        return [size]
    read, value = t.flows.get(size), size.meta.get("value")
    if isinstance(read, SizeOf):
        return [read]
    if isinstance(read, Flow) and "shape" in size.meta:  # view_as(other): other's shape
        shape, fixed = size.meta["shape"], t.all_pinned(read)
        return [SizeOf(read.slots) if d == read.dim and not fixed else n
                for d, n in enumerate(shape)]  # fmt: skip
    if isinstance(read, _Sizes):
        shape = node_shape(size.args[0]) or ()
        slots = read.flow.slots
        return [SizeOf(slots) if d == read.flow.dim else n for d, n in enumerate(shape)]
    if not isinstance(value, tuple):
        return [value]  # a size computed from no channels: a constant (or None)
    name, args = name_of(size), size.args
    if name == "getitem" and isinstance(args[1], slice):
        return size_elements(t, args[0])[args[1]]
    if name in ("add", "iadd") and len(args) == 2:
        return size_elements(t, args[0]) + size_elements(t, args[1])
    return list(value)


def _tied_side(node: fx.Node, result: Any, at: int, size: SizeOf) -> list[int] | Split | None:
    """What a reshape's size read from another tensor's channels counts, where the two can
    shrink together (ties.py): the output's channels of that size, or those of a dimension
    computed from them (``C // heads``, a split into heads or one head's width); None where
    they cannot."""
    if size.exact and isinstance(result, Flow) and result.dim == at:
        return result.slots if len(result.slots) == len(size.slots) else None
    shape = node_shape(node)
    if size.exact or not shape or len(size.slots) % shape[at]:
        return None
    if isinstance(result, Split) and at in result.dims:
        return result
    return result.slots if isinstance(result, Flow) and result.dim == at else None


@dataclass(frozen=True)
class _Sizes:
    """``x.shape`` of a tensor whose channels are ``flow``."""

    flow: Flow


@dataclass(frozen=True)
class SizeOf:
    """An int read from the size of a dimension that holds these channel slots (``exact``),
    or computed from such sizes."""

    slots: list[int]
    exact: bool = True
