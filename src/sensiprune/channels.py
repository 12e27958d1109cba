"""The vocabulary of the dependency graph: channel slots, the groups they form, helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import fx


@dataclass
class Flow:
    """Channel slots of a tensor along dimension ``dim`` (one slot per index)."""

    dim: int
    slots: list[int]


PRODUCING_ROLES = ("out", "hidden", "head")
_PRODUCING = frozenset(PRODUCING_ROLES)


class Member(NamedTuple):
    """One index of one module that belongs to a group (a tuple: graphs hold one per channel
    of every layer, and a tuple is several times cheaper to make than a frozen dataclass)."""

    layer: str
    role: str  # "out" channel, "in" column, "channel" entry, "hidden" RNN unit, "head"
    index: int


@dataclass
class Group:
    """Coupled indices that are removed together."""

    members: list[Member] = field(default_factory=list)
    _producers: frozenset[str] | None = field(default=None, repr=False, compare=False)

    @property
    def producers(self) -> frozenset[str]:
        """Layers that create these channels (read once the graph is complete). Cached by
        hand: functools.cached_property takes a lock on every first read, and every group of
        every graph is read."""
        if self._producers is None:
            self._producers = frozenset(
                layer for layer, role, _ in self.members if role in _PRODUCING
            )
        return self._producers


@dataclass
class DependencyGraph:
    groups: list[Group]
    untouched: dict[str, str]  # module or operation -> why its channels are left alone
    flops: int = 0  # of one forward pass on the example inputs, counted while tracing
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def tensor_shapes(output: Any) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a (possibly nested) model output."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, (list, tuple)):
        return [shape for item in output for shape in tensor_shapes(item)]
    if isinstance(output, dict):
        return [shape for item in output.values() for shape in tensor_shapes(item)]
    return []


def node_shape(node: Any) -> tuple[int, ...] | None:
    return node.meta.get("shape") if isinstance(node, fx.Node) else None


def node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def flows_in(value: Any) -> list[Flow]:
    if isinstance(value, Flow):
        return [value]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in flows_in(v)]
    return []


def index_keeps_dim(dim: int, ndim: int, index: Any) -> int | None:
    """Where dimension ``dim`` lands after ``tensor[index]``; None if the index cuts into it."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is Ellipsis for i in items):
        at = items.index(Ellipsis)
        explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
        items[at : at + 1] = [slice(None)] * (ndim - explicit)
    dim_in = dim_out = 0
    for item in items:
        if item is None:
            dim_out += 1
            continue
        if not isinstance(item, (int, slice)):
            return None  # tensor or traced index: unknown positions
        if dim_in == dim:
            return dim_out if item == slice(None) else None
        dim_in += 1
        dim_out += isinstance(item, slice)
    return dim_out + (dim - dim_in)
