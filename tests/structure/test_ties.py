"""Counts kept in step between different channels: when a tie holds, and how selection keeps it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import sensiprune as sp
from sensiprune.selection.ties import honor
from sensiprune.structure.channels import Split
from sensiprune.structure.graph import build_graph
from sensiprune.structure.ties import Side, Tie, at_group_level, settle, side_classes
from tests.architectures import ComputedHeadDim


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ([0, 1, 2, 3], [4, 4, 5, 5], "free"),  # 4 channels; 2 heads of 2
        ([-1, -1], [-1, -1, -1], "held"),  # nothing on either side can go
        ([0, 1], [0, 0, 1, 1], "held"),  # the same channels, each twice as often
        ([0, 1], [1, 2], "pin"),  # sides that share some channels
        ([0, 1, 2], [3, 3, 4], "pin"),  # groups holding unequal numbers of channels
        ([0, 1, -1], [3, 4], "free"),  # a channel no cut removes is just kept
        ([0, 1], [-1, -1], "pin"),  # one side cannot shrink: nor can the other
    ],
)
def test_a_tie_is_left_to_selection_only_where_selection_can_keep_it(a, b, verdict):
    assert settle(np.array(a), np.array(b)) == verdict
    assert settle(None, np.array(b)) == "pin"  # a split that cannot be cut whole


def test_a_split_side_counts_one_channel_per_plane_of_the_axis_it_is_cut_along():
    classes = np.array([7, 7, 8, 8])  # (heads=2, dim=2): each head one class
    split = Split((2, 3), np.arange(4).reshape(2, 2))
    assert side_classes(classes, split).tolist() == [7, 8]
    assert side_classes(np.array([7, 8, 9, 7]), split) is None  # no whole planes


def test_group_level_units_are_the_share_of_the_side_one_group_holds():
    tie = at_group_level(np.array([0, 1, 2, 3, -1]), np.array([5, 5, 6, 6]))
    assert tie == Tie(Side(frozenset({0, 1, 2, 3}), Fraction(1, 5)),
                      Side(frozenset({5, 6}), Fraction(2, 4)))  # fmt: skip
    whole = Side(frozenset({5, 6}), Fraction(0))  # the other side cannot shrink: nor this
    assert at_group_level(np.array([-1, -1]), np.array([5, 6])) == Tie(whole, whole)
    numbers, values, _ = _residual_and_heads()
    assert honor(numbers, values, [0, 5, 6, 16], [Tie(whole, whole)], 0.0) == [0, 16]


def _residual_and_heads() -> tuple[list[int], torch.Tensor, list[Tie]]:
    """16 residual channels (groups 0-15, scored 0..15) tied to 4 heads (groups 16-19,
    scored so that head 18 matters least)."""
    numbers = list(range(20))
    values = torch.tensor([*range(16), 5.0, 9.0, 1.0, 7.0], dtype=torch.float64)
    tie = Tie(Side(frozenset(range(16)), Fraction(1, 16)),
              Side(frozenset(range(16, 20)), Fraction(1, 4)))  # fmt: skip
    return numbers, values, [tie]


def test_honor_removes_equal_fractions_choosing_each_sides_channels_by_score():
    numbers, values, ties = _residual_and_heads()
    asked = [0, 1, 2, 3, 4, 18]  # 5 of 16 residual channels and 1 of 4 heads: 28% on average
    assert honor(numbers, values, asked, ties, 0.0) == [0, 1, 2, 3, 18]
    most = honor(numbers, values, list(range(20)), ties, 0.3)  # min_density caps it
    assert most == [0, 1, 2, 3, 4, 5, 6, 7, 16, 18]  # 50%: 8 channels, 2 heads
    assert honor(numbers, values, [0, 1], ties, 0.0) == []  # nearest step: nothing


def test_honor_keeps_tied_groups_it_cannot_bring_in_step_and_leaves_the_rest():
    numbers, values, ties = _residual_and_heads()
    clash = Tie(Side(frozenset(range(16)), Fraction(1, 8)), ties[0].b)  # another unit
    assert honor(numbers, values, [0, 1, 2, 3, 18, 20], [*ties, clash], 0.0) == [20]
    partial = honor(numbers[:18], values[:18], [0, 1, 2, 3, 16], ties, 0.0)
    assert partial == [0, 1, 2, 3, 16]  # heads 18 and 19 are not candidates: they stay


def test_a_head_size_computed_from_the_residual_width_shrinks_with_it():
    torch.manual_seed(0)
    model, x = ComputedHeadDim(), torch.randn(4, 6, 3)
    graph = build_graph(model, [x])
    residual = [g for g in graph.groups if "embed" in g.producers]
    assert graph.ties and len(residual) == 16
    # each residual channel is its own group: not bundled with a head
    assert all(sum(m.layer == "embed" for m in g.members) == 1 for g in residual)
    sp.prune(model, 0.5, criterion="magnitude", structured=True, scope="layer", example_inputs=x)
    width, heads = model.embed.out_features, model.qkv.out_features // 3 // 4
    assert (width, heads) == (8, 2) and model.proj.in_features == width
    assert model(x).shape == (4, 5)


class _ResidualOut(ComputedHeadDim):
    """The residual stream is the output, so no cut may shrink it: nor the heads tied to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.proj(attended.transpose(1, 2).reshape(B, N, C))


def test_what_is_tied_to_channels_no_cut_may_remove_stays_whole():
    torch.manual_seed(0)
    model, x = _ResidualOut(), torch.randn(4, 6, 3)
    graph = build_graph(model, [x])
    assert not graph.ties and not any("qkv" in g.producers for g in graph.groups)
    assert "a reshape to a size computed from the channels of another tensor" in (
        graph.untouched.values()
    )
