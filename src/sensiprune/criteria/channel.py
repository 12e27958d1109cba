"""Channel criteria: they score whole channels, so they serve structured pruning only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sensiprune.criteria.base import Criterion, ScoringContext, register
from sensiprune.criteria.stats import Stat
from sensiprune.data import Batch, LossFn, checked_loss
from sensiprune.errors import SensipruneError
from sensiprune.modes import eval_mode
from sensiprune.structure.channels import Group
from sensiprune.structure.zeroing import zeroed

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


class GroupLossChange(Criterion):
    """|ΔL| when a whole channel group is zeroed, measured on the data: the ground truth that
    the other group scores estimate (one pass over the data per group, so for small models).

    Zeroes everything that produces the group's channels (output rows and biases, BatchNorm
    scale and shift, every gate block of a hidden unit), measures, and restores exactly.
    """

    scores_groups = True
    measures_loss = True

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        raise SensipruneError(
            f"criterion {self.name!r} scores channel groups: use prune(..., structured=True)"
        )

    def score_groups(
        self, model: nn.Module, groups: Sequence[Group], batches: Sequence[Batch], loss_fn: LossFn
    ) -> torch.Tensor:
        if not batches:
            raise SensipruneError("data yielded no batches: pass a non-empty iterable of batches")
        modules = dict(model.named_modules())
        with eval_mode(model), torch.no_grad():
            base = _mean_loss(model, batches, loss_fn)
            changes = []
            for group in groups:
                with zeroed([group], modules):
                    changes.append(abs(_mean_loss(model, batches, loss_fn) - base))
        return torch.tensor(changes, dtype=torch.float64)


def _mean_loss(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> float:
    return sum(checked_loss(loss_fn, model, b).item() for b in batches) / len(batches)


register(
    GroupLossChange(
        "group_loss",
        "|ΔL| when a whole channel group is zeroed (measured, slow); structured",
        structured_only=True,
    )
)
