"""Flatten and Softmax modules: what they do to channels depends on the dimensions they use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.handlers.base import Handler, no_flops, register
from sensiprune.structure.channels import Flow, node_shape
from sensiprune.structure.tensor_rules import flatten

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _flatten(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    return flatten(t, node, module.start_dim, module.end_dim)


def _softmax(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    shape = node_shape(node)
    if shape is not None and module.dim is not None and module.dim % len(shape) != flow.dim:
        return flow
    return t.pinned_output(node, "softmax over the channels")


register(nn.Flatten, handler=Handler(_flatten, flops=no_flops))
register(nn.Softmax, handler=Handler(_softmax))
