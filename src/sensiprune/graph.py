"""Which output channels of which layers must be removed together: the dependency graph.

The model is traced with torch.fx and run once on example inputs for shapes. Every tensor
carries, along one tracked dimension, a list of *channel slots*. A layer that creates channels
(Conv, Linear) gives its outputs fresh slots; channel-preserving operations pass slots on;
element-wise operations between tensors (residual adds, gating) merge the slots they line up;
concatenation joins slot lists and flatten repeats each slot over the positions it expands to.
Slots that reach the model's inputs or outputs, or that pass through anything not understood,
are *pinned*. A group is one class of merged slots with no pinned member: removing it removes
the matching output channel of every producer, input column of every consumer and entry of every
per-channel layer (BatchNorm, depthwise conv) in it, and nothing else changes meaning.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from . import param_flow
from .channels import (
    DependencyGraph,
    Flow,
    Group,
    Member,
    MemberTable,
    UnionFind,
    flows_in,
    index_keeps_dim,
    is_producing,
    node_args,
    node_shape,
    tensor_shapes,
)
from .errors import SensipruneError, first_line
from .function_rules import FUNCTION_RULES
from .layer_rules import rule_for
from .measure import TotalFlops, countable_by_shape, layer_flops
from .modes import eval_mode
from .surgery import param_role
from .tracing import trace

__all__ = ["DependencyGraph", "Flow", "Group", "Member", "build_graph", "tensor_shapes"]

_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)  # fmt: skip
_PASS_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.softplus, F.dropout, F.dropout2d, torch.clamp, torch.abs, torch.exp, torch.neg,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate, operator.neg,
}  # fmt: skip
_PASS_METHODS = {
    "relu", "sigmoid", "tanh", "clamp", "abs", "exp", "neg", "contiguous", "clone", "detach",
    "float", "to", "type_as", "relu_", "sigmoid_",
}  # fmt: skip
_ELEMENTWISE = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_RESHAPING_FUNCTIONS = {
    torch.flatten, torch.cat, torch.concat, operator.getitem, torch.split, torch.chunk,
    torch.squeeze, torch.unsqueeze,
}  # fmt: skip
_RESHAPING_METHODS = {
    "size", "dim", "numel", "flatten", "view", "reshape", "permute", "transpose", "mean", "sum",
    "amax", "split", "chunk", "squeeze", "unsqueeze",
}  # fmt: skip
# what the walk understands moves channels without multiplying them: it has no FLOPs to count
_FLOP_FREE_FUNCTIONS = _PASS_FUNCTIONS | _ELEMENTWISE | _RESHAPING_FUNCTIONS
_FLOP_FREE_METHODS = _PASS_METHODS | _ELEMENTWISE_METHODS | _RESHAPING_METHODS


def build_graph(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> DependencyGraph:
    """Trace ``model`` and return its removable channel groups; the model is not changed."""
    traced, opaque = trace(model, example_inputs)
    recorder = ShapeRecorder(model, traced)
    try:
        with eval_mode(model), torch.enable_grad():
            output = recorder.run(*example_inputs)
    except Exception as exc:
        raise SensipruneError(
            f"the model does not run on example_inputs: {first_line(exc)}"
        ) from exc
    graph = ChannelTracer(model, traced).run()
    for layer, why in opaque.items():
        graph.untouched[layer] = f"could not be traced ({why}), so it is left as it is"
    graph.flops = recorder.flops + recorder.counter.total
    graph.flops_in_layers_only = recorder.counter.counted_ops == 0
    graph.output_shapes = tensor_shapes(output)
    return graph


class ShapeRecorder(fx.Interpreter):
    """Runs the traced graph, noting each tensor's shape on its node (all the channel walk
    reads, at a fraction of the cost of fx's ShapeProp metadata), and counts its FLOPs as
    FlopCounterMode would: layers of known types from their shapes, what the walk understands
    as free, everything else op by op under :class:`TotalFlops` with grad on (as in
    ``counting_flops``: fused inference fast paths would hide their FLOPs)."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        super().__init__(model, graph=graph)
        self.counter = TotalFlops()
        self.flops = 0  # of the layers counted from shapes

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            node.meta["shape"] = tuple(result.shape)
        elif not _holds_tensor(result):
            node.meta["no_tensor"] = True  # a shape read, a flag, an assert: no channels
        return result

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        module = self.submodules[target]
        if not kwargs and countable_by_shape(module, args):
            with torch.no_grad():  # no fused fast path to avoid here, and no graph to record
                output = module(*args)
            self.flops += layer_flops(module, args, output)
            return output
        with self.counter:
            return module(*args, **kwargs)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target in _FLOP_FREE_FUNCTIONS:
            return target(*args, **kwargs)
        with self.counter:
            return target(*args, **kwargs)

    def call_method(self, target: str, args: tuple, kwargs: dict) -> Any:
        if target in _FLOP_FREE_METHODS:
            return getattr(args[0], target)(*args[1:], **kwargs)
        with self.counter:
            return getattr(args[0], target)(*args[1:], **kwargs)


class ChannelTracer:
    def __init__(self, model: nn.Module, traced: fx.Graph) -> None:
        self.traced = traced
        self.modules = dict(model.named_modules())
        self.uf = UnionFind()
        self.pinned: set[int] = set()
        self.flows: dict[fx.Node, Any] = {}
        self.blocks: list[tuple[str, str, list[int]]] = []  # (layer, role, slot per index)
        self.out_slots: dict[tuple[str, str], list[int]] = {}  # per (layer, role) produced
        self.member_slots: dict[tuple[str, str], list[int]] = {}  # per other slice: slot per index
        self.untouched: dict[str, str] = {}

    # -- slot helpers -------------------------------------------------------------------
    def fresh(self, n: int, pinned: bool = False) -> list[int]:
        slots = self.uf.new(n)
        if pinned:
            self.pinned.update(slots)
        return slots

    def pin(self, flow: Any) -> None:
        for f in flows_in(flow):
            self.pinned.update(f.slots)

    def along(self, flow: Flow, dim: int, size: int) -> Flow | None:
        """``flow`` tracked along ``dim``; fully pinned slots can be re-tracked along any dim."""
        if flow.dim == dim:
            return flow
        if all(s in self.pinned for s in flow.slots):
            return Flow(dim, self.fresh(size, pinned=True))
        return None

    def pinned_output(self, node: fx.Node, why: str) -> Any:
        for arg in node_args(node):
            self.pin(self.flows.get(arg))
        self.untouched.setdefault(_describe(node), why)
        shape = node_shape(node)
        return Flow(1, self.fresh(shape[1], pinned=True)) if shape and len(shape) > 1 else None

    # -- the walk -----------------------------------------------------------------------
    def run(self) -> DependencyGraph:
        for node in self.traced.nodes:
            self.flows[node] = self.visit(node)
        return DependencyGraph(self.groups(), self.untouched)

    def groups(self) -> list[Group]:
        """One group per class of merged slots that is not pinned and has a producer, in the
        order their first members were recorded; computed column-wise, as a table."""
        roots = self.uf.roots()
        pinned = np.zeros(len(roots), dtype=bool)
        pinned[roots[list(self.pinned)]] = True
        root_of, key_of, index_of = [], [], []
        for key, (_, _, slots) in enumerate(self.blocks):
            slot_roots = roots[slots]
            free = np.flatnonzero(~pinned[slot_roots])
            root_of.append(slot_roots[free])
            key_of.append(np.full(len(free), key))
            index_of.append(free)
        if not self.blocks:
            return []
        root, key, index = np.concatenate(root_of), np.concatenate(key_of), np.concatenate(index_of)
        classes, first, group = np.unique(root, return_index=True, return_inverse=True)
        rank = np.empty(len(classes), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(classes))
        group = rank[group]  # numbered in order of appearance
        producing = np.asarray([is_producing(role) for _, role, _ in self.blocks])
        has_producer = np.zeros(len(classes), dtype=bool)
        has_producer[group[producing[key]]] = True
        number = np.cumsum(has_producer) - 1  # groups without a producer are dropped
        rows = has_producer[group]
        group, key, index = number[group[rows]], key[rows], index[rows]
        order = np.argsort(group, kind="stable")
        group, key, index = group[order], key[order], index[order]
        count = int(has_producer.sum())
        start = np.searchsorted(group, np.arange(count + 1))
        table = MemberTable([(layer, role) for layer, role, _ in self.blocks], key, index, start)
        producers = self.producers(group[producing[key]], key[producing[key]], count)
        return [Group.in_table(table, g, p) for g, p in enumerate(producers)]

    def producers(self, group: np.ndarray, key: np.ndarray, count: int) -> list[frozenset[str]]:
        """The producing layers of each group, from its producing members: one frozenset per
        family, and the common case of a single producer without a set per group."""
        single = {k: frozenset({self.blocks[k][0]}) for k in set(key.tolist())}
        some_key = np.empty(count, dtype=np.int64)
        some_key[group] = key  # right wherever a group has one producer; the rest are merged
        producers = [single[k] for k in some_key.tolist()]
        several = (np.bincount(group, minlength=count) > 1)[group]
        merged: dict[int, set[str]] = {}
        for g, k in zip(group[several].tolist(), key[several].tolist()):
            merged.setdefault(g, set()).add(self.blocks[k][0])
        shared: dict[frozenset[str], frozenset[str]] = {}  # one object per family
        for g, layers in merged.items():
            family = frozenset(layers)
            producers[g] = shared.setdefault(family, family)
        return producers

    def visit(self, node: fx.Node) -> Any:
        shape = node_shape(node)
        if node.op == "placeholder":
            return Flow(1, self.fresh(shape[1], pinned=True)) if shape and len(shape) > 1 else None
        if node.op == "get_attr":
            owner, _, attr = str(node.target).rpartition(".")
            module = self.modules.get(owner)
            held = module is not None and (attr in module._parameters or attr in module._buffers)
            return param_flow.read(str(node.target), shape) if held and shape else None
        if node.meta.get("no_tensor"):
            return None
        if node.op == "output":
            for arg in node_args(node):
                self.pin(self.flows.get(arg))
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if node.op == "call_function":
            return self.visit_function(node)
        return self.visit_method(node)

    def visit_module(self, node: fx.Node, module: nn.Module) -> Any:
        flow = self.flows.get(node.args[0]) if node.args else None
        if isinstance(module, _PASS_MODULES):
            return flow
        handler = rule_for(module)
        if handler is None or not isinstance(flow, Flow):
            return self.pinned_output(node, f"{type(module).__name__} is not understood")
        return handler(self, node, str(node.target), module, flow)

    def derived(self, node: fx.Node) -> Any:
        """The flow of an operation on parameters alone (a weight reshaped, scaled, expanded),
        or None when the operation also reads activations."""
        args = node_args(node)
        if any(flows_in(self.flows.get(a)) for a in args):
            return None
        inputs = [(f, node_shape(a)) for a in args for f in param_flow.flows_of(self.flows.get(a))]
        out = node_shape(node)
        if not inputs or out is None or any(shape is None for _, shape in inputs):
            return None
        return param_flow.derive(_name(node), node.args, inputs, out)

    def visit_function(self, node: fx.Node) -> Any:
        target = node.target
        rule = FUNCTION_RULES.get(target)
        if rule is not None:
            return rule(self, node)
        derived = self.derived(node)
        if derived is not None:
            return derived
        if target in _PASS_FUNCTIONS:
            return self.flows.get(node.args[0])
        if target in _ELEMENTWISE:
            return self.elementwise(node)
        if target is torch.flatten:
            return self.flatten(node, *_flatten_dims(node))
        if target in (torch.cat, torch.concat):
            return self.concat(node)
        if target is operator.getitem:
            return self.getitem(node)
        if target in (torch.split, torch.chunk):
            return self.split(node)
        if target in (torch.squeeze, torch.unsqueeze):
            return self.squeeze(node)
        if target in (torch.mean, torch.sum, torch.amax):
            return self.reduce(node)
        if target in (torch.permute, torch.transpose):
            return self.permute(node)
        if target is torch.reshape:
            return self.reshape(node)
        return self.pinned_output(node, f"{getattr(target, '__name__', target)} is not understood")

    def visit_method(self, node: fx.Node) -> Any:
        name = node.target
        rule = FUNCTION_RULES.get(name)
        if rule is not None:
            return rule(self, node)
        derived = self.derived(node)
        if derived is not None:
            return derived
        if name in _PASS_METHODS:
            return self.flows.get(node.args[0])
        if name in _ELEMENTWISE_METHODS:
            return self.elementwise(node)
        if name in ("size", "dim", "numel"):
            return None
        if name == "flatten":
            return self.flatten(node, *_flatten_dims(node))
        if name in ("view", "reshape"):
            return self.reshape(node)
        if name in ("permute", "transpose"):
            return self.permute(node)
        if name in ("mean", "sum", "amax"):
            return self.reduce(node)
        if name in ("split", "chunk"):
            return self.split(node)
        if name in ("squeeze", "unsqueeze"):
            return self.squeeze(node)
        return self.pinned_output(node, f"tensor.{name} is not understood")

    # -- rules --------------------------------------------------------------------------
    def elementwise(self, node: fx.Node) -> Any:
        """Tensors combined element-wise share channels where their tracked dims line up."""
        out_shape = node_shape(node)
        tensors = [(a, node_shape(a)) for a in node.args if isinstance(a, fx.Node)]
        tensors = [(a, shape) for a, shape in tensors if shape is not None]
        tracked = [(self.flows.get(a), len(out_shape) - len(shape)) for a, shape in tensors]
        tracked = [(f.dim + offset, f.slots) for f, offset in tracked if isinstance(f, Flow)]
        if out_shape is None or not tracked:
            return None
        # a tensor of size one along the tracked dimension (a mask, a scalar) is broadcast
        tracked = [(d, s) for d, s in tracked if len(s) == out_shape[d]] or tracked
        dim, slots = tracked[0]
        for other_dim, other in tracked[1:]:
            if other_dim != dim or len(other) != len(slots):
                return self.pinned_output(node, "element-wise across different channels")
            for a, b in zip(slots, other):
                self.uf.union(a, b)
        for arg, shape in tensors:
            aligned = dim - (len(out_shape) - len(shape))
            value = self.flows.get(arg)
            if isinstance(value, Flow) or aligned < 0 or shape[aligned] == 1:
                continue
            if isinstance(value, param_flow.ParamFlow) and value.along(aligned):
                self.param_entries(value, aligned, Flow(dim, slots))  # a per-channel scale
                continue
            # a tensor that cannot be sliced along the channels
            return self.pinned_output(node, "element-wise with an untracked tensor")
        return Flow(dim, slots)

    def flatten(self, node: fx.Node, start: int, end: int) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        if not isinstance(flow, Flow) or shape is None:
            return self.pinned_output(node, "flatten of an untracked tensor")
        start, end = start % len(shape), end % len(shape)
        if flow.dim < start:
            return flow
        if flow.dim > end:
            return Flow(flow.dim - (end - start), flow.slots)
        if flow.dim == start:
            repeat = math.prod(shape[start + 1 : end + 1])
            return Flow(start, [s for s in flow.slots for _ in range(repeat)])
        return self.pinned_output(node, "flatten that interleaves the channels")

    def reshape(self, node: fx.Node) -> Any:
        flow, before, after = (
            self.flows.get(node.args[0]),
            node_shape(node.args[0]),
            node_shape(node),
        )
        if not isinstance(flow, Flow) or before is None or after is None:
            return self.pinned_output(node, "reshape of an untracked tensor")
        d = flow.dim
        if before[: d + 1] == after[: d + 1]:
            return flow
        if before[:d] == after[:d] and len(after) == d + 1:
            return self.flatten(node, d, -1)
        return self.pinned_output(node, "reshape that moves the channels")

    def permute(self, node: fx.Node) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        if not isinstance(flow, Flow) or shape is None:
            return self.pinned_output(node, "permute of an untracked tensor")
        dims = [a for a in node.args[1:]] or list(node.kwargs.values())
        if _name(node) == "transpose":
            a, b = (int(x) % len(shape) for x in dims[:2])
            order = list(range(len(shape)))
            order[a], order[b] = order[b], order[a]
        else:
            order = [
                int(x) % len(shape)
                for x in (dims[0] if isinstance(dims[0], (list, tuple)) else dims)
            ]
        return Flow(order.index(flow.dim), flow.slots)

    def squeeze(self, node: fx.Node) -> Any:
        """Dimensions of size one come and go; the channels keep their place among the rest."""
        flow, before, after = (
            self.flows.get(node.args[0]),
            node_shape(node.args[0]),
            node_shape(node),
        )
        if not isinstance(flow, Flow) or before is None or after is None:
            return self.pinned_output(node, "squeeze of an untracked tensor")
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
            return self.pinned_output(node, "squeeze of the channel dimension")
        return Flow(flow.dim - sum(d < flow.dim for d in removed), flow.slots)

    def reduce(self, node: fx.Node) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if not isinstance(flow, Flow) or shape is None or dims is None:
            return self.pinned_output(node, "reduction over every dimension")
        dims = {int(x) % len(shape) for x in (dims if isinstance(dims, (list, tuple)) else [dims])}
        if flow.dim in dims:
            return self.pinned_output(node, "reduction over the channels")
        return Flow(flow.dim if keepdim else flow.dim - sum(d < flow.dim for d in dims), flow.slots)

    def concat(self, node: fx.Node) -> Any:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        flows = [self.flows.get(t) for t in tensors]
        shape = node_shape(node)
        across = self.concat_across(node, tensors, dim % len(shape)) if shape else None
        if across is not None:
            return across
        if shape is None or not all(isinstance(f, Flow) for f in flows):
            return self.pinned_output(node, "concatenation with an untracked tensor")
        dim %= len(shape)
        if all(f.dim == dim for f in flows):
            return Flow(dim, [s for f in flows for s in f.slots])
        return self.pinned_output(node, "concatenation along another dimension")

    def concat_across(self, node: fx.Node, tensors: list, dim: int) -> Any:
        """Concatenation along a dimension that is not the channels (a class token before
        the patch tokens): every part has the same channels, which are one."""
        found = [self.flows.get(t) for t in tensors]
        flows = [f for f in found if isinstance(f, Flow)]
        if not flows or any(f.dim == dim or f.dim != flows[0].dim for f in flows):
            return None
        out = Flow(flows[0].dim, flows[0].slots)
        for f in flows[1:]:
            if len(f.slots) != len(out.slots):
                return None
            for a, b in zip(out.slots, f.slots):
                self.uf.union(a, b)
        for value in found:
            if not isinstance(value, Flow):
                if not isinstance(value, param_flow.ParamFlow) or not value.along(out.dim):
                    return None
                self.param_entries(value, out.dim, out)
        return out

    def split(self, node: fx.Node) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        if not isinstance(flow, Flow) or shape is None:
            return self.pinned_output(node, "split of an untracked tensor")
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if dim % len(shape) != flow.dim:
            return _SameForEveryPart(flow)  # a split along another dimension keeps the channels
        n = len(flow.slots)
        if node.target in (torch.chunk, "chunk"):
            step = math.ceil(n / size)
            sizes = [min(step, n - i) for i in range(0, n, step)]
        else:
            sizes = list(size) if isinstance(size, (list, tuple)) else [size] * math.ceil(n / size)
        parts, start = [], 0
        for s in sizes:
            parts.append(Flow(flow.dim, flow.slots[start : start + s]))
            start += s
        return parts

    def getitem(self, node: fx.Node) -> Any:
        source, index = self.flows.get(node.args[0]), node.args[1]
        if isinstance(source, _SameForEveryPart):
            return source.flow
        if isinstance(source, list) and isinstance(index, int):
            return source[index]
        shape = node_shape(node.args[0])
        if isinstance(source, Flow) and shape is not None:
            moved = index_keeps_dim(source.dim, len(shape), index)
            if moved is not None:
                return Flow(moved, source.slots)
        return self.pinned_output(node, "indexing into the channels")

    # -- members ------------------------------------------------------------------------
    def producer(self, layer: str, n: int, pinned: bool = False, role: str = "out") -> list[int]:
        if (layer, role) not in self.out_slots:  # called twice, a module makes the same channels
            self.out_slots[layer, role] = self.fresh(n, pinned)
            self.blocks.append((layer, role, self.out_slots[layer, role]))
        return self.out_slots[layer, role]

    def consumer(self, layer: str, slots: list[int], role: str = "in") -> None:
        self.member(layer, role, slots)

    def channelwise(self, layer: str, slots: list[int], role: str = "channel") -> None:
        self.member(layer, role, slots)

    def member(self, layer: str, role: str, slots: list[int]) -> None:
        """Index k of ``layer``'s ``role`` goes with ``slots[k]``; a layer used twice has one
        index k, so the slots it meets on each use are one channel."""
        seen = self.member_slots.get((layer, role))
        if seen is None:
            self.member_slots[layer, role] = list(slots)
            self.blocks.append((layer, role, self.member_slots[layer, role]))
            return
        for earlier, slot in zip(seen, slots):
            self.uf.union(earlier, slot)
        seen += slots[len(seen) :]

    def param_entries(
        self, value: Any, dim: int, flow: Flow, skip: Sequence[param_flow.Source] = ()
    ) -> None:
        """Every parameter entry at ``dim`` of ``value`` goes with ``flow``'s channels."""
        for source, pdim in getattr(value, "along", lambda _: [])(dim):
            if source not in skip:
                self.channelwise(source.owner, flow.slots, param_role("channel", source.attr, pdim))

    def whole_groups(self, layer: str, blocks: list[list[int]]) -> None:
        """The channels of each block are one unit: group k of a grouped conv or GroupNorm."""
        for block in blocks:
            for slot in block[1:]:
                self.uf.union(block[0], slot)
        self.blocks.append((layer, "group", [block[0] for block in blocks]))


@dataclass(frozen=True)
class _SameForEveryPart:
    flow: Flow


def _flatten_dims(node: fx.Node) -> tuple[int, int]:
    args = list(node.args[1:])
    start = args[0] if args else node.kwargs.get("start_dim", 0)
    end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
    return int(start), int(end)


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return f"{node.op}:{getattr(node.target, '__name__', node.target)}"
