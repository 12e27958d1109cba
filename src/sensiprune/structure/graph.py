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

from sensiprune.errors import SensipruneError, first_line
from sensiprune.handlers.base import countable_by_shape, handler_for, layer_flops, param_role
from sensiprune.measure import TotalFlops
from sensiprune.modes import eval_mode
from sensiprune.structure import counts, param_flow, split_flow, split_rules, ties
from sensiprune.structure.channels import (
    DependencyGraph,
    Flow,
    Group,
    Member,
    MemberTable,
    SameForEveryPart,
    Split,
    UnionFind,
    flows_in,
    index_keeps_dim,
    is_producing,
    node_args,
    node_shape,
    tensor_shapes,
)
from sensiprune.structure.counts import Count
from sensiprune.structure.function_rules import FUNCTION_RULES
from sensiprune.structure.operators import (
    ELEMENTWISE,
    ELEMENTWISE_METHODS,
    FLOP_FREE_FUNCTIONS,
    FLOP_FREE_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    module_of,
    name_of,
    order_of,
    size_args,
)
from sensiprune.structure.tracing import trace

__all__ = ["DependencyGraph", "Flow", "Group", "Member", "build_graph", "tensor_shapes"]


def build_graph(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], pin_fixed: bool = False
) -> DependencyGraph:
    """Trace ``model`` and return its removable channel groups; the model is not changed.
    ``pin_fixed`` keeps every channel whose count the model's code fixes (a split into sizes,
    a reshape into heads, a ``groups`` argument) instead of following it in the module's
    attributes (counts.py): the fallback when following them did not work."""
    traced, opaque = trace(model, example_inputs)
    recorder = ShapeRecorder(model, traced)
    try:
        with eval_mode(model), torch.enable_grad():
            output = recorder.run(*example_inputs)
    except Exception as exc:
        raise SensipruneError(
            f"the model does not run on example_inputs: {first_line(exc)}"
        ) from exc
    graph = ChannelTracer(model, traced, pin_fixed).run()
    for layer, why in opaque.items():
        graph.untouched[layer] = f"{why}, so it is left as it is"
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
        if node.target is F.scaled_dot_product_attention:
            node.meta["same_mask_per_head"] = _same_per_head(self.env, node)
        if isinstance(result, torch.Tensor):
            node.meta["shape"] = tuple(result.shape)
        elif not _holds_tensor(result):
            node.meta["no_tensor"] = True  # a shape read, a flag, an assert: no channels
            if isinstance(result, int) or (
                isinstance(result, tuple) and all(isinstance(x, int) for x in result)
            ):
                node.meta["value"] = result  # a size computed in forward (a slice's end)
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
        if target in FLOP_FREE_FUNCTIONS:
            return target(*args, **kwargs)
        with self.counter:
            return target(*args, **kwargs)

    def call_method(self, target: str, args: tuple, kwargs: dict) -> Any:
        if target in FLOP_FREE_METHODS:
            return getattr(args[0], target)(*args[1:], **kwargs)
        with self.counter:
            return getattr(args[0], target)(*args[1:], **kwargs)


class ChannelTracer:
    def __init__(self, model: nn.Module, traced: fx.Graph, pin_fixed: bool = False) -> None:
        self.traced = traced
        self.pin_fixed = pin_fixed
        self.fixed: list[tuple[str, tuple[int, ...], list]] = []  # see fix()
        self.group_of_root = np.zeros(0, dtype=np.int64)
        # a parameter dimension reshaped with constant sizes: (node, sizes, position)
        self.param_shapes: dict[tuple[str, str, int], list[tuple[fx.Node, tuple, int]]] = {}
        self.modules = dict(model.named_modules())
        self.uf = UnionFind()
        self.pinned: set[int] = set()
        self.flows: dict[fx.Node, Any] = {}
        self.blocks: list[tuple[str, str, list[int]]] = []  # (layer, role, slot per index)
        self.out_slots: dict[tuple[str, str], list[int]] = {}  # per (layer, role) produced
        self.member_slots: dict[tuple[str, str], list[int]] = {}  # per other slice: slot per index
        self.untouched: dict[str, str] = {}
        # where a reshape spread channels out, and where an operation on such channels holds
        # only if the cut removes whole planes of some dimensions (None: any)
        self.splits: list[tuple[fx.Node, Split, frozenset[int] | None]] = []
        self.head_slots: list[int] = []  # a slot of each attention head the walk found
        # a parameter (value, its dimension) that follows a split's dimension if cut along it
        self.plane_params: list[tuple[Any, int, Split, int]] = []
        # slot lists (or a split) whose counts a reshape needs in step (see ties.py)
        self.ties: list[tuple[list[int], list[int] | Split, fx.Node, int]] = []
        self.constants: dict[tuple[str, int], list[int]] = {}  # first slots each counts
        self.assumed = 0  # masks taken as made again per head (see function_rules)

    # -- slot helpers -------------------------------------------------------------------
    def fresh(self, n: int, pinned: bool = False) -> list[int]:
        slots = self.uf.new(n)
        if pinned:
            self.pinned.update(slots)
        return slots

    def pin(self, flow: Any) -> None:
        self.pinned.update(self.slots_of(flow))

    def all_pinned(self, flow: Any) -> bool:
        """Whether no cut can remove any channel of ``flow`` (a constant's, an input's)."""
        return all(s in self.pinned for s in self.slots_of(flow))

    @staticmethod
    def slots_of(flow: Any) -> list[int]:
        return [
            s for f in flows_in(flow) for s in (f.all_slots() if isinstance(f, Split) else f.slots)
        ]

    def along(self, flow: Flow, dim: int, size: int) -> Flow | None:
        """``flow`` tracked along ``dim``; fully pinned slots can be re-tracked along any dim."""
        if flow.dim == dim:
            return flow
        if self.all_pinned(flow):
            return Flow(dim, self.fresh(size, pinned=True))
        return None

    def pinned_output(self, node: fx.Node, why: str) -> Any:
        """The output's channels are fixed, and so are the arguments'; it is reported only
        where that keeps channels that were free (inputs and their positions are not)."""
        slots = [s for arg in node_args(node) for s in self.slots_of(self.flows.get(arg))]
        if any(s not in self.pinned for s in slots):
            self.untouched.setdefault(_describe(node), why)
        self.pinned.update(slots)
        shape = node_shape(node)
        return Flow(1, self.fresh(shape[1], pinned=True)) if shape and len(shape) > 1 else None

    # -- the walk -----------------------------------------------------------------------
    def run(self) -> DependencyGraph:
        for node in self.traced.nodes:
            self.flows[node] = self.visit(node)
        roots = self.uf.roots()
        if self.planes_for_ties(self.classes(roots)):
            roots = self.uf.roots()
        classes = self.classes(roots)
        for node, split, dims in self.splits:
            if split_flow.plane_axis(classes, split, dims) is None:
                self.pin(split)
                self.untouched.setdefault(_describe(node), "channels split over dimensions "
                                          "that could not be cut as a whole")  # fmt: skip
        for value, dim, split, at in self.plane_params:
            axis = split.dims.index(at)
            if split_flow.plane_axis(classes, split) == axis:
                planes = np.moveaxis(split.slots, axis, 0).reshape(split.slots.shape[axis], -1)
                self.param_entries(value, dim, Flow(at, planes[:, 0].tolist()))
        roots = self.uf.roots()  # again: the loops above pinned and merged more
        classes = self.classes(roots)
        for module, values, parts in self.fixed:
            cut = any(
                isinstance(p, tuple) and split_flow.plane_axis(classes, p[0]) == p[1] for p in parts
            )
            if cut and not counts.held(self.modules[module], values, _kept_planes(classes, parts)):
                for split, _ in parts:
                    self.pin(split)
                self.untouched.setdefault(module or "the model", "sizes fixed in its code")
        free_ties = self.settle_ties(roots)
        groups = self.groups()
        fixed = len(self.splits) + len(self.fixed) + self.assumed + len(free_ties)
        heads = {int(self.group_of_root[roots[s]]) for s in self.head_slots} - {-1}
        return DependencyGraph(
            groups,
            self.untouched,
            counts=self.counts(roots),
            fixed=fixed,
            heads=heads,
            ties=self.group_ties(free_ties),
        )

    def planes_for_ties(self, classes: np.ndarray) -> bool:
        """A split tied by a size computed from other channels (``C // heads``) that the
        walk found no whole planes in (talking heads: queries and keys one channel per head,
        values another) is cut along the dimension whose planes, each made one channel,
        merge the fewest (split_flow.coarsest_cut). Returns whether any was."""
        merged = False
        for _, side, _, at in self.ties:
            if isinstance(side, Split) and split_flow.plane_axis(classes, side) is None:
                axis = split_flow.coarsest_cut(classes, side, side.dims.index(at))
                planes = np.moveaxis(side.slots, axis, 0)
                for plane in planes.reshape(planes.shape[0], -1).tolist():
                    for slot in plane[1:]:
                        self.uf.union(plane[0], slot)
                merged = True
        return merged

    def settle_ties(self, roots: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Pin both sides of every tie the selection could not keep (pinning one may leave
        another unkeepable: until none is); returns the ties left to the selection, as the
        classes of each side's channels."""
        while True:
            classes, free, more = self.classes(roots), [], False
            for a, b, node, _ in self.ties:
                sides = ties.side_classes(classes, a), ties.side_classes(classes, b)
                verdict = ties.settle(*sides)
                if verdict == "free":
                    free.append(sides)
                elif verdict == "pin":
                    more = True
                    self.pinned.update(a)
                    self.pinned.update(b.all_slots() if isinstance(b, Split) else b)
                    self.untouched.setdefault(_describe(node), "a reshape to a size computed "
                                              "from the channels of another tensor")  # fmt: skip
            if not more:
                return free

    def group_ties(self, free: list[tuple[np.ndarray, np.ndarray]]) -> list[ties.Tie]:
        """The free ties over group numbers, once :meth:`groups` numbered them."""
        found = []
        for classes in free:
            sides = [np.where(c >= 0, self.group_of_root[np.where(c >= 0, c, 0)], -1)
                     for c in classes]  # fmt: skip
            found.append(ties.at_group_level(*sides))
        return list(dict.fromkeys(found))

    def classes(self, roots: np.ndarray) -> np.ndarray:
        """``roots`` with every pinned class as -1: a plane of pinned channels (the one key
        head of multi-query attention) is then whole, whatever its channels are merged with."""
        classes = roots.copy()
        classes[np.isin(roots, roots[list(self.pinned)])] = -1
        return classes

    def counts(self, roots: np.ndarray) -> list[Count]:
        """The recorded constants, each part as the groups of its indices (see counts.py)."""
        found, classes = [], self.classes(roots)
        for module, values, parts in self.fixed:
            slot_lists = []
            for part in parts:
                if isinstance(part, tuple):  # (split, axis): counts the split's hyperplanes
                    split, axis = part
                    if split_flow.plane_axis(classes, split) != axis:
                        break  # the cut keeps that axis whole: the constant holds
                    part = np.moveaxis(split.slots, axis, 0).reshape(split.slots.shape[axis], -1)
                    part = part[:, 0].tolist()
                slot_lists.append(part)
            else:
                groups = tuple(None if s is None else self.group_of_root[roots[s]] if s
                               else np.zeros(0, np.int64) for s in slot_lists)  # fmt: skip
                found.append(Count(module, values, groups))
        return found

    def fix(self, node: fx.Node, values: tuple[int, ...], parts: list) -> None:
        """Constants in the code that ran ``node`` count ``parts`` (slot lists, or (split,
        axis)): with ``pin_fixed`` those channels stay, else the counts follow the cut."""
        module = module_of(node)
        axis_only = all(isinstance(part, tuple) for part in parts)  # checked once cut (run)
        # the 1s of ``self.scale.reshape(1, self.num_heads, 1, 1)`` count nothing
        counted = tuple(value for value, part in zip(values, parts) if part is not None)
        if self.pin_fixed or not (axis_only or counts.held(self.modules[module], counted)):
            for part in parts:
                if part is not None:
                    self.pin(part[0] if isinstance(part, tuple) else Flow(0, part))
            self.untouched.setdefault(_describe(node), "sizes fixed in the model's code")
            return
        self.fixed.append((module, values, parts))
        if not counts.listed(self.modules[module], values):
            self.same_constants(node, module, values, parts)

    def same_constants(self, node: fx.Node, module: str, values: tuple, parts: list) -> None:
        """One attribute passed for several counts (``split([self.key_dim, self.key_dim,
        self.val_dim])`` in every head of EfficientViT's cascaded attention) holds one value
        after the cut only if all of them keep as many: their channels are tied (ties.py)."""
        for value, part in zip(values, parts):
            if isinstance(part, list):
                first = self.constants.setdefault((module, value), part)
                if first is not part:
                    self.ties.append((first, part, node, 0))

    def heads(self, node: fx.Node, firsts: list[int]) -> None:
        """Attention heads (a slot of each) that ``node`` reads: they are reported as heads,
        and a head count the module running it keeps (``num_heads``) follows the cut. That
        count fixes nothing: code that does not read it still runs, so with ``pin_fixed``
        (where following counts went wrong) it is left as it is."""
        self.head_slots += firsts
        module = module_of(node)
        if not self.pin_fixed and counts.held(self.modules[module], (len(firsts),)):
            self.fixed.append((module, (len(firsts),), [firsts]))

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
        self.group_of_root = np.full(len(roots), -1, dtype=np.int64)
        self.group_of_root[root[rows]] = number[group[rows]]
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
            return self.size_read(node)
        if node.op == "output":
            for arg in node_args(node):
                self.pin(self.flows.get(arg))
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        rule = FUNCTION_RULES.get(node.target)
        if rule is not None:
            return rule(self, node)
        derived = self.derived(node)
        if derived is not None:
            return derived
        if self.untracked(node):
            return None
        if any(isinstance(self.flows.get(a), Split) for a in node_args(node)):
            return split_rules.visit(self, node)
        if node.op == "call_function":
            return self.visit_function(node)
        return self.visit_method(node)

    def visit_module(self, node: fx.Node, module: nn.Module) -> Any:
        flow = self.flows.get(node.args[0]) if node.args else None
        handler = handler_for(module)
        if handler is not None and handler.passes_channels:
            return flow
        rule = handler.flow if handler is not None else None
        shape = node_shape(node.args[0]) if node.args else None
        if flow is None and shape is not None and len(shape) > 1:
            # computed inside the model from no channels (a position encoding): its channels
            # are fixed, like an input's, and the layer's outputs are free
            flow = Flow(1, self.fresh(shape[1], pinned=True))
        if rule is None or not isinstance(flow, Flow):
            return self.pinned_output(node, f"{type(module).__name__} is not understood")
        return rule(self, node, str(node.target), module, flow)

    def untracked(self, node: fx.Node) -> bool:
        """Whether no argument carries channels or parameters: the result carries none."""
        return all(self.flows.get(a) is None for a in node_args(node))

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
        derived = param_flow.derive(name_of(node), node.args, inputs, out)
        sizes = size_args(node)
        if (
            derived is not None
            and name_of(node) in ("view", "reshape")
            and all(isinstance(x, int) for x in sizes)
        ):  # ``self.scale.view(self.shape)``: the shape follows once the entries are cut
            for source in derived.sources:
                for at, pdim in enumerate(source.dims):
                    if pdim is not None and at < len(sizes) and sizes[at] >= 0:
                        key = (source.owner, source.attr, pdim)
                        self.param_shapes.setdefault(key, []).append((node, tuple(sizes), at))
        return derived

    def visit_function(self, node: fx.Node) -> Any:
        target = node.target
        if target in PASS_FUNCTIONS:
            return self.flows.get(node.args[0])
        if target in ELEMENTWISE:
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
        if target in (torch.softmax, F.softmax, torch.log_softmax, F.log_softmax):
            return self.softmax(node)
        if target is F.normalize:  # over the channels, a statistic as in a norm layer
            return self.flows.get(node.args[0])
        if target is torch.roll:
            return self.roll(node)
        if target is torch.stack:
            return self.stack(node)
        if target is torch.unbind:
            return self.unbind(node)
        if target in (torch.permute, torch.transpose):
            return self.permute(node)
        if target is torch.reshape:
            return self.reshape(node)
        return self.pinned_output(node, f"{getattr(target, '__name__', target)} is not understood")

    def visit_method(self, node: fx.Node) -> Any:
        name = node.target
        if name in PASS_METHODS:
            return self.flows.get(node.args[0])
        if name in ELEMENTWISE_METHODS:
            return self.elementwise(node)
        if name in ("size", "dim", "numel"):
            return None
        if name == "flatten":
            return self.flatten(node, *_flatten_dims(node))
        if name in ("view", "reshape", "view_as", "reshape_as"):
            return self.reshape(node)
        if name == "repeat":
            return self.repeat(node)
        if name in ("permute", "transpose"):
            return self.permute(node)
        if name in ("mean", "sum", "amax"):
            return self.reduce(node)
        if name in ("split", "chunk"):
            return self.split(node)
        if name in ("squeeze", "unsqueeze"):
            return self.squeeze(node)
        if name in ("softmax", "log_softmax"):
            return self.softmax(node)
        if name == "repeat_interleave" and isinstance(self.flows.get(node.args[0]), Flow):
            shape = node_shape(node.args[0])
            flow = self.flows[node.args[0]]
            moved = split_rules.repeated(node, flow, len(shape)) if shape else None
            return moved if moved is not None else self.pinned_output(node, "repeat of channels")
        if name == "unbind":
            return self.unbind(node)
        if name == "roll":
            return self.roll(node)
        if name in ("expand", "expand_as"):
            return self.expand(node)
        return self.pinned_output(node, f"tensor.{name} is not understood")

    # -- rules --------------------------------------------------------------------------
    def elementwise(self, node: fx.Node) -> Any:
        """Tensors combined element-wise share channels where their tracked dims line up."""
        out_shape = node_shape(node)
        tensors = [(a, node_shape(a)) for a in node.args if isinstance(a, fx.Node)]
        tensors = [(a, shape) for a, shape in tensors if shape is not None]
        flows = [(self.flows.get(a), len(out_shape) - len(shape)) for a, shape in tensors]
        flows = [
            (f.dim + offset, f.slots, self.all_pinned(f))
            for f, offset in flows
            if isinstance(f, Flow)
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
                self.pinned.update(s)
        tracked = [(d, s) for d, s in tracked if len(s) == out_shape[d]]
        if not tracked:  # the channels come from an operand that does not track them
            return self.pinned_output(node, "element-wise with an untracked tensor")
        dim, slots = tracked[0]
        for other_dim, other in tracked[1:]:
            if other_dim != dim or len(other) != len(slots):
                return self.pinned_output(node, "element-wise across different channels")
            for a, b in zip(slots, other):
                self.uf.union(a, b)
        for arg, shape in tensors:
            aligned = dim - (len(out_shape) - len(shape))
            value = self.flows.get(arg)
            constant = not isinstance(value, Flow) or id(value.slots) in constants
            if not constant or aligned < 0 or shape[aligned] == 1:
                continue
            if isinstance(value, param_flow.ParamFlow) and value.along(aligned):
                self.param_entries(value, aligned, Flow(dim, slots))  # a per-channel scale
                continue
            # a tensor that cannot be sliced along the channels
            return self.pinned_output(node, "element-wise with an untracked tensor")
        return Flow(dim, slots)

    def expand(self, node: fx.Node) -> Any:
        """``x.expand(B, -1, T, T)`` repeats other dimensions (and may add leading ones); the
        channels stay where the size is -1 or read from them. ``gate.expand_as(x)`` takes
        x's shape: x's channels, where they are others, are tied to the gate's (ties.py)."""
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        sizes = [e for size in size_args(node) for e in self.size_elements(size)]
        if not isinstance(flow, Flow) or shape is None:
            return self.pinned_output(node, "expand of an untracked tensor")
        at = flow.dim + len(sizes) - len(shape)
        size = sizes[at] if 0 <= at < len(sizes) else None
        kept = Flow(at, flow.slots)
        if size == -1 or (isinstance(size, _SizeOf) and size.exact and size.slots == flow.slots):
            return kept
        if isinstance(size, _SizeOf) and size.exact and self.tie(node, kept, at, size):
            return kept
        return self.pinned_output(node, "expand of the channels")

    def repeat(self, node: fx.Node) -> Any:
        """``x.repeat(B, 1, 1, 1)`` tiles dimensions (and may add leading ones): tiled
        channels are each channel again, as flatten's are."""
        flow, before, after = self.reshaping(node)
        if not isinstance(flow, Flow) or before is None or after is None:
            return self.pinned_output(node, "repeat of an untracked tensor")
        at = flow.dim + len(after) - len(before)
        return Flow(at, flow.slots * (after[at] // before[flow.dim]))

    def reshaping(self, node: fx.Node) -> tuple[Any, tuple | None, tuple | None]:
        """The flow and shape of the tensor ``node`` reshapes, and the shape it gives."""
        return self.flows.get(node.args[0]), node_shape(node.args[0]), node_shape(node)

    def flatten(self, node: fx.Node, start: int, end: int) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        if not isinstance(flow, Flow) or shape is None:
            return self.pinned_output(node, "flatten of an untracked tensor")
        start, end = start % len(shape), end % len(shape)
        if flow.dim < start:
            return flow
        if flow.dim > end:
            return Flow(flow.dim - (end - start), flow.slots)
        if len(flow.slots) != shape[flow.dim]:
            return self.pinned_output(node, "flatten of channels tracked with another size")
        # the merged dimension holds each channel at every position of the others (in
        # row-major order): the layer reading it has that many columns per channel
        sizes = [1] * (end - start + 1)
        sizes[flow.dim - start] = len(flow.slots)
        laid = np.asarray(flow.slots, dtype=np.int64).reshape(sizes)
        return Flow(start, np.broadcast_to(laid, shape[start : end + 1]).reshape(-1).tolist())

    def size_read(self, node: fx.Node) -> Any:
        """``x.shape``, ``x.size(d)`` and their items: a size read from the channels is a
        :class:`_SizeOf` them, so that a reshape to that size keeps the count in step."""
        name, args = name_of(node), node.args
        source = self.flows.get(args[0]) if args and isinstance(args[0], fx.Node) else None
        if isinstance(source, Flow) and self.all_pinned(source):
            source = None  # fixed channels (an input's positions): a size that never changes
        if (name == "getattr" and args[1:] == ("shape",)) or (name == "size" and len(args) == 1):
            return _Sizes(source) if isinstance(source, Flow) else None
        if name == "size" and len(args) == 2 and isinstance(source, Flow):
            shape = node_shape(args[0])
            return _SizeOf(source.slots) if shape and args[1] % len(shape) == source.dim else None
        if name == "getitem" and isinstance(source, _Sizes) and isinstance(args[1], int):
            shape = node_shape(args[0].args[0])
            at = args[1] % len(shape) if shape else None
            return _SizeOf(source.flow.slots) if at == source.flow.dim else None
        reads = [self.flows.get(a) for a in node_args(node)]
        reads = [r for r in reads if isinstance(r, _SizeOf)]
        if reads:  # arithmetic on a size read (C // heads): it still depends on the channels
            return _SizeOf([slot for r in reads for slot in r.slots], exact=False)
        return None

    def reshape(self, node: fx.Node) -> Any:
        return self.sized(node, self.reshaped(node))

    def sized(self, node: fx.Node, result: Any) -> Any:
        """A reshape to sizes read from channels elsewhere (``reshape(B, N, C)`` with
        ``C = x.shape[2]``): the output's dimension must keep as many channels as those, so
        they are one channel position by position; where it does not track channels, the
        channels read must stay."""
        sizes = [e for size in size_args(node) for e in self.size_elements(size)]
        source = self.flows.get(node.args[0])
        source_slots = source.slots if isinstance(source, Flow) else None
        for at, size in enumerate(sizes):
            if isinstance(size, int) and size >= 0:  # a constant: an attribute may hold it
                if isinstance(result, Flow) and result.dim == at:
                    self.fix(node, (size,), [result.slots])
                elif isinstance(result, Split) and at in result.dims:
                    self.fix(node, (size,), [(result, result.dims.index(at))])
                continue
            if not isinstance(size, _SizeOf) or size.slots == source_slots:
                continue  # a size computed from the reshaped tensor's own channels follows them
            if self.tie(node, result, at, size):
                continue
            kept = isinstance(result, Flow) and result.dim == at and size.exact
            if kept and len(result.slots) == len(size.slots):
                for a, b in zip(size.slots, result.slots):
                    self.uf.union(a, b)
            else:
                self.pinned.update(size.slots)
                self.untouched.setdefault(_describe(node), "a reshape to a size computed from "
                                          "the channels of another tensor")  # fmt: skip
        return result

    def tie(self, node: fx.Node, result: Any, at: int, size: _SizeOf) -> bool:
        """Keep ``result``'s channels along ``at`` in step with the other tensor's that
        ``size`` was read or computed from (ties.py); False where they cannot be, or where
        sizes the model fixes are kept (``pin_fixed``)."""
        side = None if self.pin_fixed else _tied_side(node, result, at, size)
        if side is not None:
            self.ties.append((size.slots, side, node, at))
        return side is not None

    def size_elements(self, size: Any) -> list:
        """The sizes one argument of a reshape stands for, each an int, a :class:`_SizeOf`
        channels, or None where unknown: ``x.size()[:2] + (self.inner,)`` is three."""
        if isinstance(size, (list, tuple)):
            return [e for item in size for e in self.size_elements(item)]
        if not isinstance(size, fx.Node):
            return [size]
        read, value = self.flows.get(size), size.meta.get("value")
        if isinstance(read, _SizeOf):
            return [read]
        if isinstance(read, Flow) and "shape" in size.meta:  # view_as(other): other's shape
            shape, fixed = size.meta["shape"], self.all_pinned(read)
            return [_SizeOf(read.slots) if d == read.dim and not fixed else n
                    for d, n in enumerate(shape)]  # fmt: skip
        if isinstance(read, _Sizes):
            shape = node_shape(size.args[0]) or ()
            slots = read.flow.slots
            return [_SizeOf(slots) if d == read.flow.dim else n for d, n in enumerate(shape)]
        if not isinstance(value, tuple):
            return [value]  # a size computed from no channels: a constant (or None)
        name, args = name_of(size), size.args
        if name == "getitem" and isinstance(args[1], slice):
            return self.size_elements(args[0])[args[1]]
        if name in ("add", "iadd") and len(args) == 2:
            return self.size_elements(args[0]) + self.size_elements(args[1])
        return list(value)

    def reshaped(self, node: fx.Node) -> Any:
        flow, before, after = self.reshaping(node)
        if not isinstance(flow, Flow) or before is None or after is None:
            return self.pinned_output(node, "reshape of an untracked tensor")
        d = flow.dim
        if before[: d + 1] == after[: d + 1]:
            return flow
        # the channel dimension kept whole: same size, same product of sizes before it
        moved = [j for j in range(len(after)) if after[j] == before[d]
                 and math.prod(after[:j]) == math.prod(before[:d])]  # fmt: skip
        if moved:
            return Flow(moved[0], flow.slots)
        if before[:d] == after[:d] and len(after) == d + 1:
            return self.flatten(node, d, -1)
        split = split_flow.split_by_reshape(flow, before, after) or split_flow.folded(
            flow, before, after
        )
        if isinstance(split, Flow):
            return split
        if split is not None and not self.pin_fixed:
            self.splits.append((node, split, None))
            return split
        return self.pinned_output(node, "reshape that moves the channels")

    def permute(self, node: fx.Node) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        if not isinstance(flow, Flow) or shape is None:
            return self.pinned_output(node, "permute of an untracked tensor")
        return Flow(order_of(node, len(shape)).index(flow.dim), flow.slots)

    def squeeze(self, node: fx.Node) -> Any:
        """Dimensions of size one come and go; the channels keep their place among the rest."""
        flow, before, after = self.reshaping(node)
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
        if flow.dim in dims and keepdim and name_of(node) == "mean":
            # a norm's statistic (RMSNorm's mean of squares, kept as one value to broadcast):
            # it is taken over the channels that are left, as a LayerNorm's is
            return None
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
            return SameForEveryPart(flow)  # a split along another dimension keeps the channels
        n = len(flow.slots)
        chunk = name_of(node) == "chunk"
        if chunk and n % size:
            return self.pinned_output(node, "chunks of unequal sizes")
        if chunk or (isinstance(size, int) and n % size == 0):
            # equal parts stay equal after a cut only if every part loses the same positions:
            # position i of each part is one channel
            step = n // size if chunk else size
            parts = [flow.slots[i : i + step] for i in range(0, n, step)]
            for part in parts[1:]:
                for a, b in zip(parts[0], part):
                    self.uf.union(a, b)
            if not chunk:  # the size is a constant of the model's code
                self.fix(node, (size,), [parts[0]])
            return [Flow(flow.dim, part) for part in parts]
        if not isinstance(size, (list, tuple)) or not all(isinstance(x, int) for x in size):
            return self.pinned_output(node, "split into parts of unequal sizes")
        parts, start = [], 0
        for part_size in size:
            parts.append(flow.slots[start : start + part_size])
            start += part_size
        if counts.held(self.modules[module_of(node)], tuple(size)):  # a list attribute
            self.fix(node, tuple(size), parts)
        else:  # or one attribute per part
            for part_size, part in zip(size, parts):
                self.fix(node, (part_size,), [part])
        return [Flow(flow.dim, part) for part in parts]

    def unbind(self, node: fx.Node) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if isinstance(flow, Flow) and shape is not None and dim % len(shape) != flow.dim:
            return SameForEveryPart(Flow(flow.dim - (dim % len(shape) < flow.dim), flow.slots))
        return self.pinned_output(node, "unbind of the channels")

    def stack(self, node: fx.Node) -> Any:
        """Stacked tensors line up channel by channel, as in an element-wise operation."""
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        flows = [self.flows.get(t) for t in tensors]
        shape = node_shape(node)
        if shape is None or not flows or not all(isinstance(f, Flow) for f in flows):
            return self.pinned_output(node, "stack with an untracked tensor")
        if any(f.dim != flows[0].dim or len(f.slots) != len(flows[0].slots) for f in flows):
            return self.pinned_output(node, "stack of different channels")
        for f in flows[1:]:
            for a, b in zip(flows[0].slots, f.slots):
                self.uf.union(a, b)
        dim %= len(shape)
        return Flow(flows[0].dim + (dim <= flows[0].dim), flows[0].slots)

    def roll(self, node: fx.Node) -> Any:
        """Shifting along other dimensions (Swin's shifted windows) keeps the channels."""
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dims")
        dims = dims if isinstance(dims, (list, tuple)) else [dims]
        if (
            isinstance(flow, Flow)
            and shape
            and None not in dims
            and flow.dim not in {d % len(shape) for d in dims}
        ):
            return flow
        return self.pinned_output(node, "roll along the channels")

    def softmax(self, node: fx.Node) -> Any:
        flow, shape = self.flows.get(node.args[0]), node_shape(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(flow, Flow) and shape and dim is not None and dim % len(shape) != flow.dim:
            return flow
        return self.pinned_output(node, "softmax over the channels")

    def getitem(self, node: fx.Node) -> Any:
        source, index = self.flows.get(node.args[0]), node.args[1]
        if isinstance(source, SameForEveryPart):
            return source.flow
        if isinstance(source, list) and isinstance(index, int):
            return source[index]
        shape = node_shape(node.args[0])
        if isinstance(source, Flow) and shape is not None:
            moved = index_keeps_dim(source.dim, len(shape), index)
            if moved is not None:
                return Flow(moved, source.slots)
            part = self.channel_slice(node, source, index)
            if part is not None:
                return part
        return self.pinned_output(node, "indexing into the channels")

    def channel_slice(self, node: fx.Node, flow: Flow, index: Any) -> Flow | None:
        """``x[:, a:b]`` keeps channels a to b (GhostNet's ``[:, :self.out_chs]``, DPN's and
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
                self.fix(node, (end,), [flow.slots[:end]])
        return Flow(moved, flow.slots[start:stop])

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
                for node, sizes, at in self.param_shapes.get((source.owner, source.attr, pdim), []):
                    parts = [flow.slots if i == at else None for i in range(len(sizes))]
                    self.fix(node, sizes, parts)

    def whole_groups(self, layer: str, blocks: list[list[int]]) -> None:
        """The channels of each block are one unit: group k of a grouped conv or GroupNorm."""
        for block in blocks:
            for slot in block[1:]:
                self.uf.union(block[0], slot)
        self.blocks.append((layer, "group", [block[0] for block in blocks]))


def _tied_side(node: fx.Node, result: Any, at: int, size: _SizeOf) -> list[int] | Split | None:
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


def _kept_planes(classes: np.ndarray, parts: list) -> int:
    """Of a single (split, axis) part, the planes along the axis that no cut removes."""
    if len(parts) != 1 or not isinstance(parts[0], tuple):
        return 0
    split, axis = parts[0]
    planes = np.moveaxis(classes[split.slots], axis, 0).reshape(split.slots.shape[axis], -1)
    return int((planes == -1).all(axis=1).sum())


@dataclass(frozen=True)
class _Sizes:
    """``x.shape`` of a tensor whose channels are ``flow``."""

    flow: Flow


@dataclass(frozen=True)
class _SizeOf:
    """An int read from the size of a dimension that holds these channel slots (``exact``),
    or computed from such sizes."""

    slots: list[int]
    exact: bool = True


def _same_per_head(env: dict, node: fx.Node) -> bool:
    """Whether the attention mask ``node`` was given holds the same values for every head."""
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    value = env.get(mask) if isinstance(mask, fx.Node) else None
    if not isinstance(value, torch.Tensor) or value.ndim < 3:
        return False
    return bool((value == value.narrow(-3, 0, 1)).all())


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


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return f"{node.op}:{getattr(node.target, '__name__', node.target)}"
