"""torch's MultiheadAttention, cut by head, and its Transformer layers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.apply.attention import become_head_pruned, prunable_heads
from sensiprune.handlers.base import Cut, Handler, Layout, register
from sensiprune.structure.channels import Flow

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _heads(t: ChannelTracer, layer: str, attention: nn.MultiheadAttention) -> None:
    """A head: its q, k and v rows, and the out_proj columns that read its output."""
    heads = t.producer(layer, attention.num_heads, role="head")
    width = attention.head_dim
    t.consumer(f"{layer}.out_proj", [heads[u // width] for u in range(len(heads) * width)])


def _attention(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    if prunable_heads(module):
        _heads(t, layer, module)
    pinned = t.pinned_output(node, "the model dimension around attention")
    return [pinned, None]


def _transformer_layers(
    t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow
) -> Any:
    """Encoder/decoder layers: the feed-forward neurons (linear1 rows, linear2 columns) of
    each layer form free groups; the model dimension runs through LayerNorm and residuals and
    stays pinned, and attention heads are left to :func:`_heads`."""
    if hasattr(module, "layers"):
        blocks = [(f"{layer}.layers.{i}", block) for i, block in enumerate(module.layers)]
    else:
        blocks = [(layer, module)]
    for name, block in blocks:
        hidden = t.producer(f"{name}.linear1", block.linear1.out_features)
        t.consumer(f"{name}.linear2", hidden)
        for attr in ("self_attn", "multihead_attn"):
            if prunable_heads(getattr(block, attr, None)):
                _heads(t, f"{name}.{attr}", getattr(block, attr))
    return t.pinned_output(node, "the model dimension of a transformer (LayerNorm, residuals)")


def _head_rows(module: nn.MultiheadAttention) -> list[Cut]:
    width = module.head_dim
    return [Cut("in_proj_weight", 0, 3, width), Cut("in_proj_bias", 0, 3, width)]


register(
    nn.MultiheadAttention,
    handler=Handler(_attention, {"head": Layout(_head_rows, ("num_heads",), become_head_pruned)}),
)
register(
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    handler=Handler(_transformer_layers),
)
