"""InstanceNorm (1d, 2d, 3d): statistics per sample and channel, so each channel's affine
entries and running statistics go with it, and the others do not change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from sensiprune.handlers.base import Cut, Handler, Layout, fixed, no_flops, register
from sensiprune.structure.channels import Flow

if TYPE_CHECKING:
    from sensiprune.structure.graph import ChannelTracer


def _instance_norm(
    t: ChannelTracer, node: fx.Node, layer: str, module: nn.Module, flow: Flow
) -> Any:
    along = t.along(flow, 1, module.num_features)
    if along is None:
        return t.pinned_output(node, "InstanceNorm over a moved channel dimension")
    t.channelwise(layer, along.slots)
    return along


register(
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    handler=Handler(
        _instance_norm,
        {
            "channel": Layout(
                fixed(*(Cut(a, 0) for a in ("weight", "bias", "running_mean", "running_var"))),
                ("num_features",),
            )
        },
        flops=no_flops,
    ),
)
