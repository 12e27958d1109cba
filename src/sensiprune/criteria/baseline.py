"""The baselines every sensitivity criterion is compared with."""

from __future__ import annotations

import torch

from sensiprune.criteria.base import Criterion, ScoringContext, per_param, register
from sensiprune.criteria.stats import ParamStats


@per_param("magnitude", "|w|: weight magnitude (Han et al. 2015)", needs_data=False)
def magnitude(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """Small weights matter least: the standard baseline."""
    return weight.abs()


@per_param(
    "magnitude_sq",
    "w²: squared magnitude; over a channel group, the squared L2 filter norm (Li et al. 2017)",
    needs_data=False,
)
def magnitude_squared(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """Ranks single weights like magnitude; summed over a filter it ranks by the L2 norm."""
    return weight.pow(2)


class RandomCriterion(Criterion):
    """Uniform random scores from a seeded generator: the floor every criterion must beat."""

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(ctx.seed)
        return {
            name: torch.rand(t.param.shape, generator=generator).to(t.param)
            for name, t in ctx.targets.items()
        }


register(RandomCriterion("random", "uniform random scores (seeded)", needs_data=False))
