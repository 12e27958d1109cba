"""How tensor functions and methods move channel slots: reshapes, views, concatenation,
splits, indexing, reductions and element-wise arithmetic. One rule per operation, in
FUNCTIONS (torch functions) and METHODS (tensor methods); layers called as functions have
theirs in function_rules.py."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from sensiprune.structure import counts, entries, param_flow, split_flow, split_rules
from sensiprune.structure.channels import (
    Flow,
    SameForEveryPart,
    index_keeps_dim,
    node_shape,
)
from sensiprune.structure.operators import (
    ELEMENTWISE,
    ELEMENTWISE_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    module_of,
    name_of,
    order_of,
    size_args,
)
from sensiprune.structure.sizes import SizeOf, size_elements, sized, tie

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer

Rule = Callable[["ChannelTracer", fx.Node], Any]


def elementwise(t: ChannelTracer, node: fx.Node) -> Any:
    """Tensors combined element-wise share channels where their tracked dims line up."""
    operands = [(a, t.flows.get(a), node_shape(a)) for a in node.args if isinstance(a, fx.Node)]
    return combined(t, node, operands)


def combined(t: ChannelTracer, node: fx.Node, operands: list[tuple[Any, Any, Any]]) -> Any:
    """The flow of ``node``'s output from operands met element-wise: (node or None, flow,
    shape) each. An operand with an entry per head that is no layer's (ALiBi) goes with the
    heads where the module it entered can slice it (entries.py)."""
    out_shape = node_shape(node)
    tensors = [(a, f, shape) for a, f, shape in operands if shape is not None]
    flows = [(f, len(out_shape) - len(shape)) for _, f, shape in tensors]
    flows = [
        (f.dim + offset, f.slots, t.all_pinned(f)) for f, offset in flows if isinstance(f, Flow)
    ]
    if out_shape is None or not flows:
        return None
    # fixed channels along another dimension (an input's positions) are a constant there
    main = next((d for d, _, fixed in flows if not fixed), flows[0][0])
    tracked = [(d, s) for d, s, fixed in flows if d == main or not fixed]
    constants = {id(s) for d, s, fixed in flows if fixed and d != main}
    # a tensor of size one along the tracked dimension (a mask, a scalar, FocalNet's gate
    # ``gates[:, l:l + 1]``) is broadcast: its one channel stays, or nothing is left
    for d, s in tracked:
        if len(s) == 1 < out_shape[d]:
            t.pinned.update(s)
    tracked = [(d, s) for d, s in tracked if len(s) == out_shape[d]]
    if not tracked:  # the channels come from an operand that does not track them
        return t.pinned_output(node, "element-wise with an untracked tensor")
    dim, slots = tracked[0]
    for other_dim, other in tracked[1:]:
        if other_dim != dim or len(other) != len(slots):
            return t.pinned_output(node, "element-wise across different channels")
        for a, b in zip(slots, other):
            t.uf.union(a, b)
    for arg, value, shape in tensors:
        aligned = dim - (len(out_shape) - len(shape))
        constant = not isinstance(value, Flow) or id(value.slots) in constants
        if not constant or aligned < 0 or shape[aligned] == 1:
            continue
        if isinstance(value, param_flow.ParamFlow) and value.along(aligned):
            t.param_entries(value, aligned, Flow(dim, slots))  # a per-channel scale
            continue
        if isinstance(arg, fx.Node) and entries.sliced_on_entry(t, node, arg, aligned, slots):
            continue
        # a tensor that cannot be sliced along the channels
        return t.pinned_output(node, "element-wise with an untracked tensor")
    return Flow(dim, slots)


def expand(t: ChannelTracer, node: fx.Node) -> Any:
    """``x.expand(B, -1, T, T)`` repeats other dimensions (and may add leading ones); the
    channels stay where the size is -1 or read from them. ``gate.expand_as(x)`` takes
    x's shape: x's channels, where they are others, are tied to the gate's (ties.py)."""
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    sizes = [e for size in size_args(node) for e in size_elements(t, size)]
    if not isinstance(flow, Flow) or shape is None:
        return t.pinned_output(node, "expand of an untracked tensor")
    at = flow.dim + len(sizes) - len(shape)
    size = sizes[at] if 0 <= at < len(sizes) else None
    kept = Flow(at, flow.slots)
    if size == -1 or (isinstance(size, SizeOf) and size.exact and size.slots == flow.slots):
        return kept
    if isinstance(size, SizeOf) and size.exact and tie(t, node, kept, at, size):
        return kept
    return t.pinned_output(node, "expand of the channels")


def repeat(t: ChannelTracer, node: fx.Node) -> Any:
    """``x.repeat(B, 1, 1, 1)`` tiles dimensions (and may add leading ones): tiled
    channels are each channel again, as flatten's are."""
    flow, before, after = reshaping(t, node)
    if not isinstance(flow, Flow) or before is None or after is None:
        return t.pinned_output(node, "repeat of an untracked tensor")
    at = flow.dim + len(after) - len(before)
    return Flow(at, flow.slots * (after[at] // before[flow.dim]))


def reshaping(t: ChannelTracer, node: fx.Node) -> tuple[Any, tuple | None, tuple | None]:
    """The flow and shape of the tensor ``node`` reshapes, and the shape it gives."""
    return t.flows.get(node.args[0]), node_shape(node.args[0]), node_shape(node)


def flatten(t: ChannelTracer, node: fx.Node, start: int, end: int) -> Any:
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    if not isinstance(flow, Flow) or shape is None:
        return t.pinned_output(node, "flatten of an untracked tensor")
    start, end = start % len(shape), end % len(shape)
    if flow.dim < start:
        return flow
    if flow.dim > end:
        return Flow(flow.dim - (end - start), flow.slots)
    if len(flow.slots) != shape[flow.dim]:
        return t.pinned_output(node, "flatten of channels tracked with another size")
    # the merged dimension holds each channel at every position of the others (in
    # row-major order): the layer reading it has that many columns per channel
    sizes = [1] * (end - start + 1)
    sizes[flow.dim - start] = len(flow.slots)
    laid = np.asarray(flow.slots, dtype=np.int64).reshape(sizes)
    return Flow(start, np.broadcast_to(laid, shape[start : end + 1]).reshape(-1).tolist())


def reshape(t: ChannelTracer, node: fx.Node) -> Any:
    return sized(t, node, reshaped(t, node))


def reshaped(t: ChannelTracer, node: fx.Node) -> Any:
    flow, before, after = reshaping(t, node)
    if not isinstance(flow, Flow) or before is None or after is None:
        return t.pinned_output(node, "reshape of an untracked tensor")
    d = flow.dim
    if before[: d + 1] == after[: d + 1]:
        return flow
    # the channel dimension kept whole: same size, same product of sizes before it
    moved = [j for j in range(len(after)) if after[j] == before[d]
             and math.prod(after[:j]) == math.prod(before[:d])]  # fmt: skip
    if moved:
        return Flow(moved[0], flow.slots)
    if before[:d] == after[:d] and len(after) == d + 1:
        return flatten(t, node, d, -1)
    split = split_flow.split_by_reshape(flow, before, after) or split_flow.folded(
        flow, before, after
    )
    if isinstance(split, Flow):
        return split
    if split is not None and not t.pin_fixed:
        t.splits.append((node, split, None))
        return split
    return t.pinned_output(node, "reshape that moves the channels")


def permute(t: ChannelTracer, node: fx.Node) -> Any:
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    if not isinstance(flow, Flow) or shape is None:
        return t.pinned_output(node, "permute of an untracked tensor")
    return Flow(order_of(node, len(shape)).index(flow.dim), flow.slots)


def squeeze(t: ChannelTracer, node: fx.Node) -> Any:
    """Dimensions of size one come and go; the channels keep their place among the rest."""
    flow, before, after = reshaping(t, node)
    if not isinstance(flow, Flow) or before is None or after is None:
        return t.pinned_output(node, "squeeze of an untracked tensor")
    name = getattr(node.target, "__name__", node.target)
    if name == "unsqueeze":
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs["dim"]) % len(after)
        return Flow(flow.dim + (dim <= flow.dim), flow.slots)
    dims = node.args[1:] or tuple(node.kwargs.values())
    dims = dims[0] if dims and isinstance(dims[0], (tuple, list)) else dims
    removed = (
        {d % len(before) for d in dims}
        if dims
        else {i for i, size in enumerate(before) if size == 1}
    )
    removed = {d for d in removed if before[d] == 1}
    if flow.dim in removed:
        return t.pinned_output(node, "squeeze of the channel dimension")
    return Flow(flow.dim - sum(d < flow.dim for d in removed), flow.slots)


def reduce(t: ChannelTracer, node: fx.Node) -> Any:
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    if not isinstance(flow, Flow) or shape is None or dims is None:
        return t.pinned_output(node, "reduction over every dimension")
    dims = {int(x) % len(shape) for x in (dims if isinstance(dims, (list, tuple)) else [dims])}
    if flow.dim in dims and keepdim and name_of(node) == "mean":
        # a norm's statistic (RMSNorm's mean of squares, kept as one value to broadcast):
        # it is taken over the channels that are left, as a LayerNorm's is
        return None
    if flow.dim in dims:
        return t.pinned_output(node, "reduction over the channels")
    return Flow(flow.dim if keepdim else flow.dim - sum(d < flow.dim for d in dims), flow.slots)


def concat(t: ChannelTracer, node: fx.Node) -> Any:
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    flows = [t.flows.get(tensor) for tensor in tensors]
    shape = node_shape(node)
    across = concat_across(t, node, tensors, dim % len(shape)) if shape else None
    if across is not None:
        return across
    if shape is None or not all(isinstance(f, Flow) for f in flows):
        return t.pinned_output(node, "concatenation with an untracked tensor")
    dim %= len(shape)
    if all(f.dim == dim for f in flows):
        return Flow(dim, [s for f in flows for s in f.slots])
    return t.pinned_output(node, "concatenation along another dimension")


def concat_across(t: ChannelTracer, node: fx.Node, tensors: list, dim: int) -> Any:
    """Concatenation along a dimension that is not the channels (a class token before
    the patch tokens): every part has the same channels, which are one."""
    found = [t.flows.get(tensor) for tensor in tensors]
    flows = [f for f in found if isinstance(f, Flow)]
    if not flows or any(f.dim == dim or f.dim != flows[0].dim for f in flows):
        return None
    out = Flow(flows[0].dim, flows[0].slots)
    for f in flows[1:]:
        if len(f.slots) != len(out.slots):
            return None
        for a, b in zip(out.slots, f.slots):
            t.uf.union(a, b)
    for value in found:
        if not isinstance(value, Flow):
            if not isinstance(value, param_flow.ParamFlow) or not value.along(out.dim):
                return None
            t.param_entries(value, out.dim, out)
    return out


def split(t: ChannelTracer, node: fx.Node) -> Any:
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    if not isinstance(flow, Flow) or shape is None:
        return t.pinned_output(node, "split of an untracked tensor")
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if dim % len(shape) != flow.dim:
        return SameForEveryPart(flow)  # a split along another dimension keeps the channels
    n = len(flow.slots)
    chunk = name_of(node) == "chunk"
    if chunk and n % size:
        return t.pinned_output(node, "chunks of unequal sizes")
    if chunk or (isinstance(size, int) and n % size == 0):
        # equal parts stay equal after a cut only if every part loses the same positions:
        # position i of each part is one channel
        step = n // size if chunk else size
        parts = [flow.slots[i : i + step] for i in range(0, n, step)]
        for part in parts[1:]:
            for a, b in zip(parts[0], part):
                t.uf.union(a, b)
        if not chunk:  # the size is a constant of the model's code
            t.fix(node, (size,), [parts[0]])
        return [Flow(flow.dim, part) for part in parts]
    if not isinstance(size, (list, tuple)) or not all(isinstance(x, int) for x in size):
        return t.pinned_output(node, "split into parts of unequal sizes")
    parts, start = [], 0
    for part_size in size:
        parts.append(flow.slots[start : start + part_size])
        start += part_size
    if counts.held(t.modules[module_of(node)], tuple(size)):  # a list attribute
        t.fix(node, tuple(size), parts)
    else:  # or one attribute per part
        for part_size, part in zip(size, parts):
            t.fix(node, (part_size,), [part])
    return [Flow(flow.dim, part) for part in parts]


def unbind(t: ChannelTracer, node: fx.Node) -> Any:
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if isinstance(flow, Flow) and shape is not None and dim % len(shape) != flow.dim:
        return SameForEveryPart(Flow(flow.dim - (dim % len(shape) < flow.dim), flow.slots))
    return t.pinned_output(node, "unbind of the channels")


def stack(t: ChannelTracer, node: fx.Node) -> Any:
    """Stacked tensors line up channel by channel, as in an element-wise operation."""
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    flows = [t.flows.get(tensor) for tensor in tensors]
    shape = node_shape(node)
    if shape is None or not flows or not all(isinstance(f, Flow) for f in flows):
        return t.pinned_output(node, "stack with an untracked tensor")
    if any(f.dim != flows[0].dim or len(f.slots) != len(flows[0].slots) for f in flows):
        return t.pinned_output(node, "stack of different channels")
    for f in flows[1:]:
        for a, b in zip(flows[0].slots, f.slots):
            t.uf.union(a, b)
    dim %= len(shape)
    return Flow(flows[0].dim + (dim <= flows[0].dim), flows[0].slots)


def roll(t: ChannelTracer, node: fx.Node) -> Any:
    """Shifting along other dimensions (Swin's shifted windows) keeps the channels."""
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dims")
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    if (
        isinstance(flow, Flow)
        and shape
        and None not in dims
        and flow.dim not in {d % len(shape) for d in dims}
    ):
        return flow
    return t.pinned_output(node, "roll along the channels")


def softmax(t: ChannelTracer, node: fx.Node) -> Any:
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(flow, Flow) and shape and dim is not None and dim % len(shape) != flow.dim:
        return flow
    return t.pinned_output(node, "softmax over the channels")


def getitem(t: ChannelTracer, node: fx.Node) -> Any:
    source, index = t.flows.get(node.args[0]), node.args[1]
    if isinstance(source, SameForEveryPart):
        return source.flow
    if isinstance(source, list) and isinstance(index, int):
        return source[index]
    shape = node_shape(node.args[0])
    if isinstance(source, Flow) and shape is not None:
        moved = index_keeps_dim(source.dim, len(shape), index)
        if moved is not None:
            return Flow(moved, source.slots)
        part = channel_slice(t, node, source, index)
        if part is not None:
            return part
    return t.pinned_output(node, "indexing into the channels")


def channel_slice(t: ChannelTracer, node: fx.Node, flow: Flow, index: Any) -> Flow | None:
    """``x[:, a:b]`` keeps channels a to b (GhostNet's ``[:, :t.out_chs]``, DPN's and
    ReXNet's ``[:, :n]`` and ``[:, n:]``): a and b count the channels before them, and
    follow the cut like any size kept in code; slicing keeps the order, so the channels
    on either side may be cut too."""
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items or None in items or len(items) <= flow.dim:
        return None
    item = items[flow.dim]
    before = [i for i in items[: flow.dim] if not isinstance(i, slice)]
    if before or not isinstance(item, slice) or item.step not in (None, 1):
        return None
    ends = (item.start, item.stop)
    if any(e is not None and (not isinstance(e, int) or e < 0) for e in ends):
        return None
    rest = (*items[: flow.dim], slice(None), *items[flow.dim + 1 :])
    moved = index_keeps_dim(flow.dim, len(node_shape(node.args[0])), rest)
    if moved is None:
        return None
    start, stop = ((e if e is not None else d) for e, d in zip(ends, (0, len(flow.slots))))
    for end in {start, stop} - {0, len(flow.slots)}:
        if end < len(flow.slots):
            t.fix(node, (end,), [flow.slots[:end]])
    return Flow(moved, flow.slots[start:stop])


def _flatten_dims(node: fx.Node) -> tuple[int, int]:
    args = list(node.args[1:])
    start = args[0] if args else node.kwargs.get("start_dim", 0)
    end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
    return int(start), int(end)


def _passes(t: ChannelTracer, node: fx.Node) -> Any:
    return t.flows.get(node.args[0])


def _flattened(t: ChannelTracer, node: fx.Node) -> Any:
    return flatten(t, node, *_flatten_dims(node))


def _no_channels(t: ChannelTracer, node: fx.Node) -> Any:
    return None


def _repeat_interleave(t: ChannelTracer, node: fx.Node) -> Any:
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    if not isinstance(flow, Flow):
        return t.pinned_output(node, "tensor.repeat_interleave is not understood")
    moved = split_rules.repeated(node, flow, len(shape)) if shape else None
    return moved if moved is not None else t.pinned_output(node, "repeat of channels")


FUNCTIONS: dict[Any, Rule] = {
    **dict.fromkeys(ELEMENTWISE, elementwise),
    **dict.fromkeys(PASS_FUNCTIONS, _passes),  # wins where a function is in both
    torch.flatten: _flattened,
    torch.cat: concat,
    torch.concat: concat,
    operator.getitem: getitem,
    torch.split: split,
    torch.chunk: split,
    torch.squeeze: squeeze,
    torch.unsqueeze: squeeze,
    torch.mean: reduce,
    torch.sum: reduce,
    torch.amax: reduce,
    torch.softmax: softmax,
    F.softmax: softmax,
    torch.log_softmax: softmax,
    F.log_softmax: softmax,
    F.normalize: _passes,  # over the channels, a statistic as in a norm layer
    torch.roll: roll,
    torch.stack: stack,
    torch.unbind: unbind,
    torch.permute: permute,
    torch.transpose: permute,
    torch.reshape: reshape,
}
METHODS: dict[str, Rule] = {
    "flatten": _flattened,
    **dict.fromkeys(("view", "reshape", "view_as", "reshape_as"), reshape),
    "repeat": repeat,
    **dict.fromkeys(("permute", "transpose"), permute),
    **dict.fromkeys(("mean", "sum", "amax"), reduce),
    **dict.fromkeys(("split", "chunk"), split),
    **dict.fromkeys(("squeeze", "unsqueeze"), squeeze),
    **dict.fromkeys(("softmax", "log_softmax"), softmax),
    "repeat_interleave": _repeat_interleave,
    "unbind": unbind,
    "roll": roll,
    **dict.fromkeys(("expand", "expand_as"), expand),
    **dict.fromkeys(("size", "dim", "numel"), _no_channels),
    **dict.fromkeys(ELEMENTWISE_METHODS, elementwise),
    **dict.fromkeys(PASS_METHODS, _passes),  # checked first, as the walk always did
}
