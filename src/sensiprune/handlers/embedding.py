"""Embedding tables: their dimensions are channels they produce."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.handlers.base import Cut, Handler, Layout, fixed, register
from sensiprune.structure.channels import Flow, node_shape

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _embedding(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Any) -> Any:
    """Token ids carry no channels; the embedding dimensions are channels it produces."""
    shape = node_shape(node)
    if shape is None:
        return t.pinned_output(node, "an embedding with unknown output")
    return Flow(len(shape) - 1, t.producer(layer, module.embedding_dim))


register(
    nn.Embedding,
    handler=Handler(_embedding, {"out": Layout(fixed(Cut("weight", 1)), ("embedding_dim",))}),
)
