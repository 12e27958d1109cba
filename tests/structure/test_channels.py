"""The graph's vocabulary: union-find, groups held as member tables, and their flat columns."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from sensiprune.structure.channels import (
    Group,
    Member,
    UnionFind,
    flat_members,
    indices_by_slice,
    regular_groups,
)
from sensiprune.structure.graph import build_graph
from tests.architectures import ZOO


def test_roots_agree_with_find_for_every_element():
    rng = random.Random(0)
    uf = UnionFind()
    uf.new(200)
    for _ in range(150):
        uf.union(rng.randrange(200), rng.randrange(200))
    assert uf.roots().tolist() == [uf.find(x) for x in range(200)]


def test_a_table_group_lists_the_slices_removed_with_its_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = build_graph(model, [torch.randn(1, 3, 6, 6)])
    assert [sorted(g.members) for g in graph.groups] == [
        sorted([Member("0", "out", j), Member("1", "channel", j), Member("3", "in", j)])
        for j in range(4)
    ]
    assert all(g.producers == {"0"} for g in graph.groups)


def test_flat_members_are_the_members_of_table_and_listed_groups_alike():
    factory, shape = ZOO["resnet"]
    torch.manual_seed(0)
    graph = build_graph(factory(), [torch.randn(shape)])
    listed = Group([Member("head", "in", 3), Member("stem.0", "out", 1)])
    groups = [graph.groups[5], listed, *graph.groups[::3]]
    keys, owner, key, index = flat_members(groups)
    flat = sorted(zip(owner.tolist(), (keys[k] for k in key.tolist()), index.tolist()))
    expected = sorted(
        (position, (layer, role), i)
        for position, group in enumerate(groups)
        for layer, role, i in group.members
    )
    assert flat == expected


def test_regular_groups_hold_one_row_of_the_index_each():
    keys = [("attn.qkv", "out"), ("attn.qkv", "out"), ("attn.proj", "in")]
    index = np.array([[0, 4, 0], [1, 5, 1]])
    groups = regular_groups(keys, index)
    assert [g.members for g in groups] == [
        [Member("attn.qkv", "out", 0), Member("attn.qkv", "out", 4), Member("attn.proj", "in", 0)],
        [Member("attn.qkv", "out", 1), Member("attn.qkv", "out", 5), Member("attn.proj", "in", 1)],
    ]
    assert all(g.producers == {"attn.qkv"} for g in groups)
    keys_seen, owner, key, flat_index = flat_members(groups)
    assert keys_seen == [("attn.qkv", "out"), ("attn.proj", "in")]  # one key per slice
    assert owner.tolist() == [0, 0, 0, 1, 1, 1] and flat_index.tolist() == [0, 4, 0, 1, 5, 1]
    assert key.tolist() == [0, 0, 1, 0, 0, 1]
    by_slice = {k: v.tolist() for k, v in indices_by_slice(groups[::-1]).items()}
    assert by_slice == {("attn.qkv", "out"): [0, 1, 4, 5], ("attn.proj", "in"): [0, 1]}
