"""How functional layers move channel slots: one rule per function, in FUNCTION_RULES.

Model libraries build layers from functions applied to a module's own tensors (timm's
``BatchNormAct2d`` calls ``F.batch_norm``, ``StdConv2d`` calls ``F.conv2d`` on a standardised
weight, a custom block calls ``F.linear(x, self.weight)``). A rule finds which parameter the
weight comes from (see param_flow). Where that module has a type sensiprune knows, the
module's own rule runs, so its size attributes follow the cut; otherwise each tensor is cut
on its own, along the dimension the function uses it on (surgery.param_role).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from sensiprune.handlers.base import param_role, rule_for
from sensiprune.structure import split_flow, tensor_rules
from sensiprune.structure.channels import Flow, Split, node_shape
from sensiprune.structure.param_flow import ParamFlow, Source

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.LayerNorm, nn.RMSNorm)


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _matrix(value: Any, rows: int, cols: int) -> Source | None:
    """The parameter whose two dimensions are the value's dimensions ``rows`` and ``cols``."""
    if not isinstance(value, ParamFlow):
        return None
    return next(
        (s for s in value.sources if s.dims[rows] is not None and s.dims[cols] is not None), None
    )


def _owned(t: ChannelTracer, source: Source, kinds: tuple[type, ...]) -> nn.Module | None:
    """The module owning ``source`` as its weight, when it is one of ``kinds``."""
    module = t.modules.get(source.owner)
    return module if isinstance(module, kinds) and source.attr == "weight" else None


def _produce(
    t: ChannelTracer, source: Source, flow: Flow, in_dim: int, out_dim: int, dim: int
) -> Flow:
    """A weight read as (…, in, …, out): its ``in_dim`` reads ``flow``, its ``out_dim`` makes
    fresh channels along ``dim`` of the output."""
    pin, pout = source.dims[in_dim], source.dims[out_dim]
    t.consumer(source.owner, flow.slots, param_role("in", source.attr, pin))
    made = t.producer(source.owner, source.shape[pout], role=param_role("out", source.attr, pout))
    return Flow(dim, made)


def _conv(t: ChannelTracer, node: fx.Node) -> Any:
    flow = t.flows.get(_arg(node, 0, "input"))
    weight, bias = t.flows.get(_arg(node, 1, "weight")), t.flows.get(_arg(node, 2, "bias"))
    main = _matrix(weight, 0, 1)
    if not isinstance(flow, Flow) or main is None:
        return t.pinned_output(node, "a convolution whose weight is not a parameter")
    module = _owned(t, main, _CONVS)
    if module is not None:
        out = rule_for(module)(t, node, main.owner, module, flow)
        skip = (main, *(bias.sources if isinstance(bias, ParamFlow) else ()))
        skip = tuple(s for s in skip if s.owner == main.owner)
    else:
        groups, channels = _arg(node, 6, "groups", 1), main.shape[main.dims[0]]
        flow = t.along(flow, 1, main.shape[main.dims[1]] * groups)
        if flow is None:
            return t.pinned_output(node, "convolution over a moved channel dimension")
        if groups == 1:
            out = _produce(t, main, flow, 1, 0, 1)
        elif groups == len(flow.slots) == channels:  # depthwise
            t.channelwise(main.owner, flow.slots, param_role("channel", main.attr, main.dims[0]))
            t.fix(node, (groups,), [flow.slots])  # ``groups=self.channels``
            out = flow
        else:
            return t.pinned_output(node, "grouped convolution of a module without a layout")
        skip = (main,)
    if isinstance(out, Flow):
        t.param_entries(weight, 0, out, skip)
        t.param_entries(bias, 0, out, skip)
        if any(s is not main for s, _ in weight.along(1)):
            return t.pinned_output(node, "a convolution weight mixed with another parameter")
    return out


def _linear(t: ChannelTracer, node: fx.Node) -> Any:
    flow, shape = t.flows.get(_arg(node, 0, "input")), node_shape(_arg(node, 0, "input"))
    weight, bias = t.flows.get(_arg(node, 1, "weight")), t.flows.get(_arg(node, 2, "bias"))
    main = _matrix(weight, 0, 1)
    if not isinstance(flow, Flow) or main is None or shape is None:
        return t.pinned_output(node, "a linear layer whose weight is not a parameter")
    module = _owned(t, main, (nn.Linear,))
    if module is not None and main.dims[:2] == (0, 1):
        out = rule_for(module)(t, node, main.owner, module, flow)
        if out is flow:  # over another dimension (handlers/linear.py): no bias per channel
            return out
        skip = (main, *(s for s in getattr(bias, "sources", ()) if s.owner == main.owner))
    else:
        last = t.along(flow, len(shape) - 1, shape[-1])
        if last is None:  # over another dimension: every channel alike, they pass
            return flow
        out, skip = _produce(t, main, last, 1, 0, last.dim), (main,)
    if isinstance(out, Flow):
        t.param_entries(bias, 0, out, skip)
    return out


def _heads(
    value: Any, shape: tuple[int, ...] | None, widths: tuple[int, ...] = (-1,)
) -> np.ndarray | None:
    """The slots of an attention operand (…, heads, …, tokens, width) as one row per head,
    with the slots of a width dimension (one of ``widths``) along the row where one is
    tracked; None unless its heads are tracked. The heads are the one tracked dimension
    before the last two (NesT's (B, heads, blocks, tokens, width) as well)."""
    head = _head_dim(value, shape)
    if head is None:
        return None
    dims, slots = split_flow.as_axes(value)
    if not set(dims) <= {head} | {len(shape) + w for w in widths}:
        return None
    order = [dims.index(head)] + [dims.index(d) for d in dims if d != head]
    return np.transpose(slots, order).reshape(shape[head], -1)


def _head_dim(value: Any, shape: tuple[int, ...] | None) -> int | None:
    if not isinstance(value, (Flow, Split)) or shape is None or len(shape) < 3:
        return None
    leading = [d for d in split_flow.as_axes(value)[0] if d < len(shape) - 2]
    return leading[0] if len(leading) == 1 else None


def _whole_heads(t: ChannelTracer, node: fx.Node, *operands: np.ndarray) -> int | None:
    """A head is one channel in every operand: the query heads that share a key/value head
    (grouped-query attention) go with it. One key/value head broadcast to every query head
    (multi-query attention) stays, and the query heads are cut one by one. Returns how many
    query heads share one key/value head."""
    rows = [len(op) for op in operands]
    if any(r == 0 or rows[0] % r for r in rows):
        return None
    shared = [op for op in operands if len(op) == 1 < rows[0]]
    for op in shared:
        t.pinned.update(op.ravel().tolist())
    for i in range(rows[0]):
        first = int(operands[0][i, 0])
        for op in operands:
            if len(op) > 1 or rows[0] == 1:
                for slot in op[i * len(op) // rows[0]].tolist():
                    t.uf.union(first, slot)
    for op in operands:
        t.heads(node, op[:, 0].tolist())
    return rows[0] // min(rows)


def _attended(
    t: ChannelTracer,
    node: fx.Node,
    queries: np.ndarray,
    values: np.ndarray,
    repeat: int,
    width: int = -1,
    query: Any = None,
) -> Flow | Split:
    """The output (…, heads, …, tokens, width) reads its value operand head by head, its
    heads where the query's are (``query``, else ``node``'s first argument); where one value
    head serves every query head, output head i is query head i's. ``values`` are the slots
    of the output's dimension ``width``."""
    out, query = node_shape(node), _arg(node, 0, "query") if query is None else query
    head = _head_dim(t.flows.get(query), node_shape(query))
    if len(values) == 1 < len(queries):
        values = np.array([t.fresh(values.shape[1]) for _ in range(len(queries))])
        for row, query in zip(values.tolist(), queries[:, 0].tolist()):
            for slot in row:
                t.uf.union(query, slot)
    else:
        values = np.repeat(values, repeat, axis=0)
    width %= len(out)
    if values.shape[1] == 1:
        return Flow(head, values[:, 0].tolist())
    return Split((head, width), values)


def _attention(t: ChannelTracer, node: fx.Node) -> Any:
    """Scaled dot-product attention removes whole heads: the rows of a head in the query, key
    and value, and the output columns that carry it."""
    args = [_arg(node, i, name) for i, name in enumerate(("query", "key", "value"))]
    q, k, v = (_heads(t.flows.get(a), node_shape(a), (-2, -1)) for a in args)
    if q is None or k is None or v is None:
        by_width = _by_width(t, node, args)
        if by_width is None:
            return t.pinned_output(node, "attention whose heads are not tracked")
        return by_width
    repeat = _whole_heads(t, node, q, k, v)
    if repeat is None:
        return t.pinned_output(node, "attention with head counts that do not divide")
    if not _mask_follows(t, node, _arg(node, 3, "attn_mask"), q):
        return t.pinned_output(node, "attention with a mask per head that is not tracked")
    value_dims = split_flow.as_axes(t.flows[args[2]])[0]
    if len(v[0]) > 1 and len(node_shape(node)) - 1 not in value_dims:
        # channels in place of the tokens (XCiT's attention across channels): the output's
        # rows are the query's, whole heads as everything in the head is
        return _attended(t, node, q, q, 1, width=-2)
    return _attended(t, node, q, v, repeat)


def _by_width(t: ChannelTracer, node: fx.Node, args: list) -> Flow | None:
    """Attention whose widths are tracked but no heads: one head (Twins' first stage), or
    every head with the same channels. As in ``softmax(q @ k.T) @ v`` written out (see
    :func:`_product`), a query width and its key width are one channel, and the value widths
    carry over to the output; None where that is not the case, or a mask differs per head."""
    flows = [t.flows.get(a) for a in args]
    shapes = [node_shape(a) for a in args]
    if any(not isinstance(f, Flow) or s is None or f.dim != len(s) - 1
           for f, s in zip(flows, shapes)):  # fmt: skip
        return None
    mask = node_shape(_arg(node, 3, "attn_mask"))
    if mask is not None and len(mask) >= 3 and mask[-3] > 1:
        return None
    query, key, value = flows
    if len(query.slots) != len(key.slots):
        return None
    for a, b in zip(query.slots, key.slots):
        t.uf.union(a, b)
    return Flow(len(node_shape(node)) - 1, value.slots)


def _mask_follows(t: ChannelTracer, node: fx.Node, mask: Any, q: np.ndarray) -> bool:
    """An additive mask or bias per head (T5's relative positions) is cut with the heads;
    one broadcast over the heads needs nothing. One made in forward with the same values for
    every head (zeros for each of ``self.n_heads``) is taken as made again with the kept
    count: the pruned model's run checks that, and the ``pin_fixed`` retry does not assume
    it."""
    shape = node_shape(mask)
    if shape is None or len(shape) < 3 or shape[-3] == 1:
        return True
    flow, head = t.flows.get(mask), len(shape) - 3
    fixed = not isinstance(flow, ParamFlow) and t.all_pinned(flow)
    if fixed and node.meta.get("same_mask_per_head") and not t.pin_fixed:
        t.assumed += 1
        return True
    if isinstance(flow, ParamFlow) and flow.along(head):  # a table of biases per head
        t.param_entries(flow, head, Flow(head, q[:, 0].tolist()))
        return True
    if not isinstance(flow, Flow) or flow.dim != head or len(flow.slots) != len(q):
        return False
    for first, slot in zip(q[:, 0].tolist(), flow.slots):  # a slot of each head
        t.uf.union(first, slot)
    return True


def _matmul(t: ChannelTracer, node: fx.Node, left: Any = None, right: Any = None) -> Any:
    """``x @ W`` with a parameter ``W`` of two dimensions is a linear layer read (in, out);
    ``q @ k.transpose(-2, -1)`` and ``weights @ v`` with heads tracked are attention. The
    operands are ``node``'s first two arguments unless given."""
    left, right = (node.args[0], node.args[1]) if left is None else (left, right)
    flow, shape = t.flows.get(left), node_shape(left)
    other, other_shape = t.flows.get(right), node_shape(right)
    a, b = _heads(flow, shape, (-2, -1)), _heads(other, other_shape, (-2, -1))
    if a is not None and b is not None:
        repeat = _whole_heads(t, node, a, b)
        if repeat is None:
            return t.pinned_output(node, "attention with head counts that do not divide")
        if len(other_shape) - 1 in split_flow.as_axes(other)[0]:  # weights @ v
            return _attended(t, node, a, b, repeat, query=left)
        return _attended(t, node, a, a[:, :1], 1, query=left)  # q @ k.T: each query head's scores
    main = _matrix(other, 0, 1)
    if main is None and not isinstance(other, ParamFlow):
        return _product(t, node, (flow, shape), (other, other_shape))
    if not isinstance(flow, Flow) or main is None or shape is None or len(main.dims) != 2:
        return t.pinned_output(node, "matmul of two activations")
    last = t.along(flow, len(shape) - 1, shape[-1])
    if last is None:  # over another dimension: every channel alike, they pass
        return flow
    return _produce(t, main, last, 0, 1, last.dim)


def _baddbmm(t: ChannelTracer, node: fx.Node) -> Any:
    """``input + batch1 @ batch2`` (BLOOM's scores with their ALiBi bias): the product as
    :func:`_matmul` has it, added to the input element-wise."""
    bias = _arg(node, 0, "input")
    product = _matmul(t, node, _arg(node, 1, "batch1"), _arg(node, 2, "batch2"))
    operands = [(bias, t.flows.get(bias), node_shape(bias)), (None, product, node_shape(node))]
    return tensor_rules.combined(t, node, operands)


def _product(t: ChannelTracer, node: fx.Node, left: tuple, right: tuple) -> Any:
    """A product of two activations with one tracked dimension each (single-head attention
    over channels, EfficientViT's ``q.transpose(-2, -1) @ k`` and ``v @ attn.T``): channels
    summed over are one channel in both operands, and the product keeps none; channels of
    the rows of the left, or of the columns of the right, carry over to the output."""
    (a, a_shape), (b, b_shape), out = left, right, node_shape(node)
    if a_shape is None or b_shape is None or out is None or min(len(a_shape), len(b_shape)) < 2:
        return t.pinned_output(node, "matmul of two activations")
    a_dim = a.dim - len(a_shape) if isinstance(a, Flow) and not t.all_pinned(a) else None
    b_dim = b.dim - len(b_shape) if isinstance(b, Flow) and not t.all_pinned(b) else None
    if a_dim == -1 and b_dim == -2 and len(a.slots) == len(b.slots):
        for x, y in zip(a.slots, b.slots):
            t.uf.union(x, y)
        return None
    if a_dim == -2 and b_dim is None:
        return Flow(len(out) - 2, a.slots)
    if b_dim == -1 and a_dim is None:
        return Flow(len(out) - 1, b.slots)
    if a is None and b is None:
        return None
    return t.pinned_output(node, "matmul of two activations")


def _per_channel_params(t: ChannelTracer, node: fx.Node, names: list[tuple[int, str]]) -> list:
    return [t.flows.get(_arg(node, i, name)) for i, name in names]


def _channel_norm(
    t: ChannelTracer, node: fx.Node, dim: int, params: list, kinds: tuple[type, ...]
) -> Any:
    """A norm whose parameters hold one entry per channel along ``dim`` of its input."""
    value, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    found = [p for p in params if isinstance(p, ParamFlow)]
    if isinstance(value, ParamFlow) and shape is not None:  # a weight being standardised
        placed = [
            s.mapped(tuple(s.dims[0] if j == dim % len(shape) else None for j in range(len(shape))))
            for p in found
            for s in p.sources
        ]
        return ParamFlow(value.sources + tuple(placed))
    if not isinstance(value, Flow) or shape is None:
        return t.pinned_output(node, "a norm of an untracked tensor")
    flow = t.along(value, dim % len(shape), shape[dim])
    if flow is None:
        return t.pinned_output(node, "a norm over a moved channel dimension")
    owners = {s.owner for p in found for s in p.sources}
    module = t.modules.get(next(iter(owners))) if len(owners) == 1 else None
    if isinstance(module, kinds) and owners:
        return rule_for(module)(t, node, next(iter(owners)), module, flow)
    for p in found:
        t.param_entries(p, 0, flow)
    return flow


def _batch_norm(t: ChannelTracer, node: fx.Node) -> Any:
    names = [(1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")]
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return _channel_norm(t, node, 1, _per_channel_params(t, node, names), bn)


def _layer_norm(t: ChannelTracer, node: fx.Node) -> Any:
    """Over the last dimension: see handlers/norm.py; over several, pinned."""
    normalized = _arg(node, 1, "normalized_shape")
    count = len(normalized) if isinstance(normalized, (list, tuple)) else 1
    flow, shape = t.flows.get(node.args[0]), node_shape(node.args[0])
    if isinstance(flow, Flow) and shape is not None and flow.dim < len(shape) - count:
        return flow
    if count != 1:
        return t.pinned_output(node, "a norm over several dimensions")
    names = [(2, "weight"), (3, "bias")] if node.target is F.layer_norm else [(2, "weight")]
    return _channel_norm(t, node, -1, _per_channel_params(t, node, names), _NORMS)


def _group_norm(t: ChannelTracer, node: fx.Node) -> Any:
    flow, weight = t.flows.get(node.args[0]), t.flows.get(_arg(node, 2, "weight"))
    main = weight.sources[0] if isinstance(weight, ParamFlow) else None
    module = _owned(t, main, (nn.GroupNorm,)) if main is not None else None
    if not isinstance(flow, Flow) or module is None:
        return t.pinned_output(node, "group norm of a module that is not a GroupNorm")
    return rule_for(module)(t, node, main.owner, module, flow)


def _embedding(t: ChannelTracer, node: fx.Node) -> Any:
    main = _matrix(t.flows.get(_arg(node, 1, "weight")), 0, 1)
    shape = node_shape(node)
    if main is None or shape is None:
        return t.pinned_output(node, "an embedding whose table is not a parameter")
    module = _owned(t, main, (nn.Embedding,))
    if module is not None and main.dims == (0, 1):
        return rule_for(module)(t, node, main.owner, module, None)
    role = param_role("out", main.attr, main.dims[1])
    return Flow(len(shape) - 1, t.producer(main.owner, main.shape[main.dims[1]], role=role))


def _pad(t: ChannelTracer, node: fx.Node) -> Any:
    """Padding leaves the channels alone when it adds nothing along them."""
    flow, shape, pad = t.flows.get(node.args[0]), node_shape(node.args[0]), _arg(node, 1, "pad")
    if isinstance(flow, Flow) and shape is not None and isinstance(pad, (list, tuple)):
        at = 2 * (len(shape) - 1 - flow.dim)  # pad lists the last dimension first
        if tuple(pad[at : at + 2]) in ((), (0, 0)):
            return flow
    return t.pinned_output(node, "padding of the channels")


FUNCTION_RULES: dict[Any, Callable[[ChannelTracer, fx.Node], Any]] = {
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), _conv),
    F.linear: _linear,
    **dict.fromkeys((torch.matmul, operator.matmul, "matmul", torch.bmm, "bmm"), _matmul),
    **dict.fromkeys((torch.baddbmm, "baddbmm"), _baddbmm),
    F.scaled_dot_product_attention: _attention,
    F.batch_norm: _batch_norm,
    F.layer_norm: _layer_norm,
    F.rms_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.embedding: _embedding,
    F.pad: _pad,
}
