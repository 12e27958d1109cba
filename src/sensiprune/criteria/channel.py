"""Channel criteria: they score whole channels, so they serve structured pruning only."""

from __future__ import annotations

import torch
from torch import nn

from ..stats import Stat
from .base import Criterion, ScoringContext, register

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FeatureMapTaylor(Criterion):
    """|Σ a·∂L/∂a| per output channel, averaged over samples (Molchanov et al. 2017).

    The first-order loss change of removing a whole feature map, measured on the map itself,
    so it sees what the channel contributes after bias, BatchNorm and activation.
    """

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        return {
            f"{t.layer}::out": ctx.stats[name].output_taylor
            for name, t in ctx.targets.items()
            if ctx.stats[name].output_taylor is not None
        }


class BatchNormScale(Criterion):
    """|γ| of the BatchNorm after each channel (Liu et al. 2017, network slimming).

    Channels whose BatchNorm scale is near zero contribute only a constant; channels with no
    BatchNorm get no score and are left alone under this criterion.
    """

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        return {
            f"{name}.weight" if name else "weight": module.weight.detach().abs()
            for name, module in ctx.model.named_modules()
            if isinstance(module, _BATCHNORMS) and module.weight is not None
        }


register(
    FeatureMapTaylor(
        "taylor_fm",
        "|Σ a·∂L/∂a| per output channel: feature-map Taylor (Molchanov et al. 2017); structured",
        needs=[Stat.OUTPUT_TAYLOR],
        structured_only=True,
    )
)
register(
    BatchNormScale(
        "bn_scale",
        "|γ| of BatchNorm per channel: network slimming (Liu et al. 2017); structured",
        needs_data=False,
        structured_only=True,
    )
)
