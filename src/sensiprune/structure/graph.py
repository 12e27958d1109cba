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

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from sensiprune.errors import SensipruneError, first_line
from sensiprune.handlers.base import countable_by_shape, handler_for, layer_flops, param_role
from sensiprune.measure import TotalFlops
from sensiprune.modes import eval_mode
from sensiprune.structure import (
    counts,
    param_flow,
    sizes,
    split_flow,
    split_rules,
    tensor_rules,
    ties,
)
from sensiprune.structure.channels import (
    DependencyGraph,
    Flow,
    Group,
    Member,
    MemberTable,
    Split,
    UnionFind,
    describe,
    flows_in,
    folded_period,
    is_producing,
    node_args,
    node_shape,
    tensor_shapes,
)
from sensiprune.structure.counts import Count
from sensiprune.structure.function_rules import FUNCTION_RULES
from sensiprune.structure.operators import (
    FLOP_FREE_FUNCTIONS,
    FLOP_FREE_METHODS,
    module_of,
    name_of,
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
            self.untouched.setdefault(describe(node), why)
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
                self.untouched.setdefault(describe(node), "channels split over dimensions "
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
                    self.untouched.setdefault(describe(node), "a reshape to a size computed "
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
            self.untouched.setdefault(describe(node), "sizes fixed in the model's code")
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
        (where following counts went wrong) it is left as it is. Heads folded into the batch
        (B·H) are counted once."""
        firsts = firsts[: folded_period(firsts) or len(firsts)]
        self.head_slots += firsts
        module = module_of(node)
        if not self.pin_fixed and counts.held(self.modules[module], (len(firsts),)):
            self.fixed.append((module, (len(firsts),), [firsts]))

    def groups(self) -> list[Group]:
        """One group per class of merged slots that is not pinned and has a producer, in the
        order their first members were recorded; computed column-wise, as a table."""
        if not self.blocks:
            return []
        roots = self.uf.roots()
        pinned = np.zeros(len(roots), dtype=bool)
        pinned[roots[list(self.pinned)]] = True
        lengths = np.fromiter((len(slots) for _, _, slots in self.blocks), np.int64)
        slots = np.fromiter(
            itertools.chain.from_iterable(slots for _, _, slots in self.blocks),
            np.int64,
            int(lengths.sum()),
        )
        key = np.repeat(np.arange(len(self.blocks)), lengths)
        index = np.arange(len(slots)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        root = roots[slots]
        free = ~pinned[root]
        root, key, index = root[free], key[free], index[free]
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
            return sizes.size_read(self, node)
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
        if derived is None and len(inputs) == 1 and name_of(node) in ("view", "reshape"):
            return self.split_parameter(node, *inputs[0])
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
        rule = tensor_rules.FUNCTIONS.get(node.target)
        if rule is None:
            name = getattr(node.target, "__name__", node.target)
            return self.pinned_output(node, f"{name} is not understood")
        return rule(self, node)

    def visit_method(self, node: fx.Node) -> Any:
        rule = tensor_rules.METHODS.get(node.target)
        if rule is None:
            return self.pinned_output(node, f"tensor.{node.target} is not understood")
        return rule(self, node)

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

    def split_parameter(self, node: fx.Node, value: param_flow.ParamFlow, shape: tuple) -> Any:
        """A parameter with one dimension of entries reshaped into several (DeBERTa's
        ``q_bias`` into (heads, head_dim)): each entry becomes a channel of its own, which the
        activations it meets take as split channels; None for any other reshape."""
        spread = [(source, d) for source in value.sources for d, p in enumerate(source.dims)
                  if p is not None and shape[d] > 1]  # fmt: skip
        if len(spread) != 1 or len(value.sources) != 1:
            return None
        source, d = spread[0]
        slots = self.fresh(shape[d])
        split = split_flow.split_by_reshape(Flow(d, slots), shape, node_shape(node))
        if not isinstance(split, Split):
            return None
        self.channelwise(source.owner, slots, param_role("channel", source.attr, source.dims[d]))
        self.splits.append((node, split, None))
        return sizes.sized(self, node, split)

    def whole_groups(self, layer: str, blocks: list[list[int]]) -> None:
        """The channels of each block are one unit: group k of a grouped conv or GroupNorm."""
        for block in blocks:
            for slot in block[1:]:
                self.uf.union(block[0], slot)
        self.blocks.append((layer, "group", [block[0] for block in blocks]))


def _kept_planes(classes: np.ndarray, parts: list) -> int:
    """Of a single (split, axis) part, the planes along the axis that no cut removes."""
    if len(parts) != 1 or not isinstance(parts[0], tuple):
        return 0
    split, axis = parts[0]
    planes = np.moveaxis(classes[split.slots], axis, 0).reshape(split.slots.shape[axis], -1)
    return int((planes == -1).all(axis=1).sum())


def _same_per_head(env: dict, node: fx.Node) -> bool:
    """Whether the attention mask ``node`` was given holds the same values for every head."""
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    value = env.get(mask) if isinstance(mask, fx.Node) else None
    if not isinstance(value, torch.Tensor) or value.ndim < 3:
        return False
    return bool((value == value.narrow(-3, 0, 1)).all())


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False
