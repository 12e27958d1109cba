"""Channels spread over several dimensions: splitting, moving, merging, and the check that
a cut leaves a box."""

from __future__ import annotations

import numpy as np

from sensiprune.structure.channels import Flow, Split, UnionFind
from sensiprune.structure.split_flow import (
    broadcast_union,
    permuted,
    plane_axis,
    reshaped,
    split_by_reshape,
)


def test_a_reshape_into_heads_splits_and_the_merge_puts_the_order_back():
    flow = Flow(2, list(range(12)))
    split = split_by_reshape(flow, (2, 5, 12), (2, 5, 3, 4))
    assert split.dims == (2, 3) and split.slots.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                            [8, 9, 10, 11]]  # fmt: skip
    moved = permuted(split, [0, 2, 1, 3])  # (B, heads, tokens, head_dim)
    assert moved.dims == (1, 3)
    back = reshaped(permuted(moved, [0, 2, 1, 3]), (2, 5, 3, 4), (2, 5, 12))
    assert isinstance(back, Flow) and back.dim == 2 and back.slots == list(range(12))


def test_a_merge_in_the_other_order_is_a_shuffle_of_the_slots():
    split = Split((2, 1), np.arange(6).reshape(2, 3))  # dims swapped by a transpose
    merged = reshaped(split, (4, 3, 2), (4, 6))
    assert merged.dim == 1 and merged.slots == [0, 3, 1, 4, 2, 5]


def test_only_splits_that_reshape_the_tracked_dimension_alone_are_splits():
    assert split_by_reshape(Flow(1, list(range(6))), (2, 6), (2, 2, 3)) is not None
    assert split_by_reshape(Flow(1, list(range(6))), (2, 6, 4), (2, 3, 8)) is None


def test_broadcasting_a_channel_over_a_split_makes_whole_planes():
    uf = UnionFind()
    paths = np.asarray(uf.new(6)).reshape(2, 3)  # (paths, channels)
    channels = np.asarray(uf.new(3))
    dims, slots = broadcast_union(uf, [((1, 2), paths), ((2,), channels)])
    assert dims == (1, 2) and slots is paths
    roots = uf.roots()
    assert plane_axis(roots, Split(dims, paths)) == 1
    assert roots[paths[0, 1]] == roots[paths[1, 1]] == roots[channels[1]]


def test_a_split_with_no_whole_planes_has_no_axis_to_cut():
    uf = UnionFind()
    slots = np.asarray(uf.new(4)).reshape(2, 2)
    uf.union(slots[0, 0], slots[1, 1])
    assert plane_axis(uf.roots(), Split((1, 2), slots)) is None
