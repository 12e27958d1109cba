"""PReLU: one learned slope per channel (or one for all), which goes with its channel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.handlers.base import Cut, Handler, Layout, fixed, register
from sensiprune.structure.channels import Flow

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _prelu(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    if module.num_parameters == 1:  # one slope for every channel
        return flow
    along = t.along(flow, 1, module.num_parameters)
    if along is None:
        return t.pinned_output(node, "PReLU over a moved channel dimension")
    t.channelwise(layer, along.slots)
    return along


register(
    nn.PReLU,
    handler=Handler(_prelu, {"channel": Layout(fixed(Cut("weight", 0)), ("num_parameters",))}),
)
