"""Per-head tensors a block is handed from outside (ALiBi): cut with each block's heads where
the block can slice them as they enter, kept where anything else reads them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensiprune as sp
from sensiprune.apply import cut
from sensiprune.errors import CutRefused
from sensiprune.handlers import input_slices
from sensiprune.structure.graph import build_graph
from tests.architectures import AlibiTransformer, _AlibiAttention

SLICE = "in@" + input_slices.buffer_name("bias", 0, 4) + ":0"


def _model() -> tuple[AlibiTransformer, torch.Tensor]:
    torch.manual_seed(0)
    return AlibiTransformer().eval(), torch.randn(2, 6, 3)


def test_each_blocks_bias_goes_with_that_blocks_heads():
    model, x = _model()
    graph = build_graph(model, [x])
    assert graph.untouched == {}
    for block in ("blocks.0", "blocks.1"):  # folded into the batch, and sliced by tokens
        heads = [g for g in graph.groups if g.producers == {f"{block}.qkv"}]
        sliced = [[m.index for m in g.members if (m.layer, m.role) == (block, SLICE)]
                  for g in heads]  # fmt: skip
        assert sliced == [[0], [1], [2], [3]]


def test_a_pruned_block_reads_the_biases_of_the_heads_it_kept():
    model, x = _model()
    sp.prune(model, {"heads": 0.5}, criterion="magnitude", structured=True, example_inputs=x,
             scope="layer")  # fmt: skip
    for block in model.blocks:
        kept = block.get_buffer(input_slices.buffer_name("bias", 0, 4))
        assert block.heads == 2 and len(kept) == 2
    assert model(x).shape == (2, 5)


class _ReadTwice(_AlibiAttention):
    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return super().forward(x, bias) + bias.mean()


def test_a_bias_the_block_also_reads_elsewhere_keeps_the_heads():
    model, x = _model()
    model.blocks[1] = _ReadTwice(16, 4, False)
    graph = build_graph(model, [x])
    assert "element-wise with an untracked tensor" in graph.untouched.values()
    with_heads = {p for g in graph.heads for p in graph.groups[g].producers}
    assert with_heads == {"blocks.0.qkv"}


def test_a_refused_cut_takes_the_slices_back(monkeypatch):
    model, x = _model()
    graph = build_graph(model, [x])

    def refuse(*args: object) -> int:
        raise CutRefused("refused", 0)

    monkeypatch.setattr(cut, "_checked_run", refuse)
    with pytest.raises(CutRefused):
        cut.remove_groups(model, graph, [0, 4], [x])
    assert dict(model.named_buffers()) == {}
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert isinstance(model.blocks[0].qkv, nn.Linear) and model.blocks[0].qkv.out_features == 48


def test_heads_folded_into_the_batch_are_counted_once():
    torch.manual_seed(0)  # batch x heads = 2 x 4 = head_dim: only num_heads counts the heads
    model, x = AlibiTransformer(dim=32, heads=4).eval(), torch.randn(2, 6, 3)
    sp.prune(model, {"heads": 0.5}, criterion="magnitude", structured=True, example_inputs=x,
             scope="layer")  # fmt: skip
    assert [(b.heads, b.head_dim) for b in model.blocks] == [(2, 8), (2, 8)]
