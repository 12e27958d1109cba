"""Layers that channels pass through unchanged: activations, dropout, pooling, resampling."""

from __future__ import annotations

from torch import nn

from sensiprune.handlers.base import Handler, no_flops, register

# their ops have no FLOP formula, so their FLOPs are known from their type alone
register(
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    handler=Handler(passes_channels=True, flops=no_flops),
)  # fmt: skip
register(
    nn.AlphaDropout, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    handler=Handler(passes_channels=True),
)  # fmt: skip
