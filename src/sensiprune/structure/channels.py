"""The vocabulary of the dependency graph: channel slots, the groups they form, helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import fx


@dataclass
class Flow:
    """Channel slots of a tensor along dimension ``dim`` (one slot per index)."""

    dim: int
    slots: list[int]


@dataclass
class Split:
    """Channel slots spread over several dimensions: a dimension reshaped into (heads,
    head_dim) or (paths, channels). ``slots[i, j, ...]`` is the slot at index i of
    ``dims[0]``, j of ``dims[1]``, and so on; the dimensions may sit in any order."""

    dims: tuple[int, ...]
    slots: np.ndarray

    def all_slots(self) -> list[int]:
        return self.slots.reshape(-1).tolist()


@dataclass(frozen=True)
class SameForEveryPart:
    """Every part of a split along another dimension carries these channels."""

    flow: Flow


PRODUCING_ROLES = ("out", "hidden", "head")
_PRODUCING = frozenset(PRODUCING_ROLES)


def role_kind(role: str) -> str:
    """What a role does, without the tensor it names: "out@weight:0" (output rows of a
    module sensiprune has no layout for, see surgery.param_role) is an "out" role."""
    return role.partition("@")[0]


def is_producing(role: str) -> bool:
    return role_kind(role) in _PRODUCING


class Member(NamedTuple):
    """One index of one module that belongs to a group."""

    layer: str
    role: str  # "out" channel, "in" column, "channel" entry, "hidden" RNN unit, "head"
    # (or such a kind on one tensor of a module without a layout: "out@weight:0")
    index: int


class MemberTable:
    """The members of many groups, column by column (a graph holds one member per channel of
    every layer, too many to be objects): row k is index ``index[k]`` of the (layer, role)
    ``keys[key[k]]``, and group g owns rows ``start[g]`` to ``start[g + 1]``."""

    __slots__ = ("index", "key", "keys", "start")

    def __init__(
        self, keys: list[tuple[str, str]], key: np.ndarray, index: np.ndarray, start: np.ndarray
    ) -> None:
        self.keys, self.key, self.index, self.start = keys, key, index, start

    def members(self, g: int) -> list[Member]:
        rows = slice(self.start[g], self.start[g + 1])
        return [
            Member(*self.keys[k], i)
            for k, i in zip(self.key[rows].tolist(), self.index[rows].tolist())
        ]


class Group:
    """Coupled indices that are removed together: a list of members, or one group of a
    :class:`MemberTable` (what the channel walk makes; its members are listed when read)."""

    __slots__ = ("_members", "_producers", "_row", "_table")

    def __init__(self, members: Sequence[Member] = ()) -> None:
        self._members: list[Member] | None = list(members)
        self._table: MemberTable | None = None
        self._row = -1
        self._producers: frozenset[str] | None = None

    @classmethod
    def in_table(cls, table: MemberTable, row: int, producers: frozenset[str]) -> Group:
        group = cls.__new__(cls)
        group._members, group._table, group._row, group._producers = None, table, row, producers
        return group

    @property
    def members(self) -> list[Member]:
        if self._members is None:
            self._members = self._table.members(self._row)
        return self._members

    @property
    def number(self) -> int:
        """Its place among the groups of the graph that found it (-1 for listed groups)."""
        return self._row

    @property
    def producers(self) -> frozenset[str]:
        """Layers that create these channels (read once the graph is complete)."""
        if self._producers is None:
            self._producers = frozenset(
                layer for layer, role, _ in self.members if is_producing(role)
            )
        return self._producers

    def __repr__(self) -> str:
        return f"Group({self.members!r})"


def regular_groups(keys: Sequence[tuple[str, str]], index: np.ndarray) -> list[Group]:
    """Groups that all have one shape, as one table: group g holds index ``index[g, m]`` of
    the (layer, role) ``keys[m]`` for every m. A transformer's heads, feed-forward neurons and
    hidden channels come this way, a million members in a large model, with no member objects
    until one is read."""
    count, width = index.shape
    table = MemberTable(
        list(keys),
        np.tile(np.arange(width), count),
        index.reshape(-1).astype(np.int64),
        np.arange(count + 1) * width,
    )
    producers = frozenset(layer for layer, role in keys if is_producing(role))
    return [Group.in_table(table, g, producers) for g in range(count)]


def flat_members(
    groups: Sequence[Group],
) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray, np.ndarray]:
    """Every member of ``groups`` as columns: the (layer, role) keys, and per member its
    group's position in ``groups``, its key's position and its index. Groups of one table are
    gathered without listing their members: that keeps scoring and cutting a graph cheap."""
    keys: dict[tuple[str, str], int] = {}
    owners, key_ids, indices = [], [], []
    tables = {id(group._table): group._table for group in groups}
    table_of = np.fromiter((id(group._table) for group in groups), np.int64, len(groups))
    row_of = np.fromiter((group._row for group in groups), np.int64, len(groups))
    loose = np.flatnonzero(table_of == id(None)).tolist()
    for table_id, table in tables.items():
        if table is None:
            continue
        positions = np.flatnonzero(table_of == table_id)
        picked_rows = row_of[positions]
        starts, lengths = table.start[picked_rows], np.diff(table.start)[picked_rows]
        ends = np.cumsum(lengths)
        picked = np.repeat(starts - ends + lengths, lengths) + np.arange(ends[-1])
        to_global = np.asarray([keys.setdefault(k, len(keys)) for k in table.keys])
        owners.append(np.repeat(positions, lengths))
        key_ids.append(to_global[table.key[picked]])
        indices.append(table.index[picked])
    if loose:
        members = [(p, m) for p in loose for m in groups[p].members]
        owners.append(np.asarray([p for p, _ in members], dtype=np.int64))
        key_ids.append(
            np.asarray([keys.setdefault((m[0], m[1]), len(keys)) for _, m in members], np.int64)
        )
        indices.append(np.asarray([m[2] for _, m in members], dtype=np.int64))
    if not owners:
        empty = np.zeros(0, dtype=np.int64)
        return [], empty, empty, empty
    return list(keys), np.concatenate(owners), np.concatenate(key_ids), np.concatenate(indices)


def indices_by_slice(groups: Sequence[Group]) -> dict[tuple[str, str], np.ndarray]:
    """For each (layer, role) the groups reach: the sorted indices they hold of it (what
    zeroing or cutting the groups touches), split from one sort rather than one scan a slice."""
    keys, _, key, index = flat_members(groups)
    order = np.lexsort((index, key))
    key, index = key[order], index[order]
    first = np.ones(len(key), dtype=bool)  # the first of each run of equal (key, index)
    first[1:] = (key[1:] != key[:-1]) | (index[1:] != index[:-1])
    key, index = key[first], index[first]
    bounds = np.searchsorted(key, np.arange(len(keys) + 1))
    return {
        k: index[bounds[i] : bounds[i + 1]]
        for i, k in enumerate(keys)
        if bounds[i + 1] > bounds[i]  # a table lists the keys of every group, not only these
    }


@dataclass
class DependencyGraph:
    groups: list[Group]
    untouched: dict[str, str]  # module or operation -> why its channels are left alone
    flops: int = 0  # of one forward pass on the example inputs, counted while tracing
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    # whether all those FLOPs come from layers counted from shapes (measure.layer_flops), so
    # that the pruned model's FLOPs can be counted the same cheap way
    flops_in_layers_only: bool = False
    counts: list = field(default_factory=list)  # counts.Count: sizes kept in attributes
    fixed: int = 0  # places whose sizes the model's code fixes (follow-ups, reshape splits)
    heads: set[int] = field(default_factory=set)  # numbers of the groups that are attention heads
    ties: list = field(default_factory=list)  # ties.Tie: counts kept in step between groups


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> list[int]:
        """``n`` fresh elements, each its own class."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """The class of every element at once: parents always point to smaller elements, so
        pointer jumping converges in a few vectorised steps."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand


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


def folded_period(slots: list[int]) -> int | None:
    """How many channels ``slots`` hold, repeated in order as heads folded into the batch
    (B·H) are; None where they are not such a repetition."""
    n = len(slots)
    for period in range(1, n + 1):
        if n % period == 0 and slots == slots[:period] * (n // period):
            return period if len(set(slots[:period])) == period else None
    return None


def flows_in(value: Any) -> list[Flow | Split]:
    if isinstance(value, (Flow, Split)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in flows_in(v)]
    return []


def index_keeps_dim(dim: int, ndim: int, index: Any) -> int | None:
    """Where dimension ``dim`` lands after ``tensor[index]``; None if the index cuts into it.
    One index tensor takes the place of the dimension it indexes with its own dimensions."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is Ellipsis for i in items):
        at = items.index(Ellipsis)
        explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
        items[at : at + 1] = [slice(None)] * (ndim - explicit)
    tensors = [i for i in items if isinstance(i, fx.Node)]
    dim_in = dim_out = 0
    for item in items:
        if item is None:
            dim_out += 1
            continue
        if isinstance(item, fx.Node) and len(tensors) == 1 and node_shape(item) is not None:
            if dim_in == dim:  # rows picked by an index tensor (a table lookup)
                return None
            dim_in, dim_out = dim_in + 1, dim_out + len(node_shape(item))
            continue
        if not isinstance(item, (int, slice)):
            return None  # tensor or traced index: unknown positions
        if dim_in == dim:
            return dim_out if item == slice(None) else None
        dim_in += 1
        dim_out += isinstance(item, slice)
    return dim_out + (dim - dim_in)


def describe(node: fx.Node) -> str:
    """A node as the list of what was left alone names it."""
    if node.op == "call_module":
        return str(node.target)
    return f"{node.op}:{getattr(node.target, '__name__', node.target)}"
