"""PReLU: one learned slope per channel (or one for all), which goes with its channel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.handlers.base import Cut, Handler, Layout, fixed, per_channel, register
from sensiprune.structure.channels import Flow

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _prelu(t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow) -> Any:
    if module.num_parameters == 1:  # one slope for every channel
        return flow
    return _per_channel(t, node, layer, module, flow)


_per_channel = per_channel("num_parameters")
register(
    nn.PReLU,
    handler=Handler(_prelu, {"channel": Layout(fixed(Cut("weight", 0)), ("num_parameters",))}),
)
