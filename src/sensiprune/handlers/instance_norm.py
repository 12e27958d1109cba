"""InstanceNorm (1d, 2d, 3d): statistics per sample and channel, so each channel's affine
entries and running statistics go with it, and the others do not change."""

from __future__ import annotations

from torch import nn

from sensiprune.handlers.base import Cut, Handler, Layout, fixed, no_flops, per_channel, register

register(
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    handler=Handler(
        per_channel("num_features"),
        {
            "channel": Layout(
                fixed(*(Cut(a, 0) for a in ("weight", "bias", "running_mean", "running_var"))),
                ("num_features",),
            )
        },
        flops=no_flops,
    ),
)
