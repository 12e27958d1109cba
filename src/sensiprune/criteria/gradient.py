"""First-order criteria: the gradient times the weight."""

from __future__ import annotations

import torch

from sensiprune.criteria.base import Criterion, ScoringContext, per_param, register
from sensiprune.criteria.stats import ParamStats, Stat


@per_param(
    "taylor",
    "mean over batches of |w · ∂L/∂w|: first-order Taylor loss change (Molchanov et al. 2017)",
    needs=[Stat.GRAD_ABS],
)
def taylor(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """Setting w to zero changes a batch's loss by about -w·∂L/∂w.

    The absolute value is taken per batch before averaging: near a minimum the mean gradient
    cancels to noise, while |w·g_b| still measures how much each batch leans on the weight.
    """
    assert stats.grad_abs is not None
    return weight.abs() * stats.grad_abs


@per_param(
    "taylor_sq",
    "mean over batches of (w · ∂L/∂w)²: squared Taylor (Molchanov et al. 2019)",
    needs=[Stat.GRAD_SQ],
)
def taylor_squared(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """Squaring per batch before averaging keeps gradients of opposite sign from cancelling.

    For single weights this equals 2 x OBD with the empirical Fisher: same ranking.
    """
    assert stats.grad_sq is not None
    return weight.pow(2) * stats.grad_sq


class SnipCriterion(Criterion):
    """Connection sensitivity |g·w| / Σ|g·w| (Lee, Ajanthan & Torr 2019, SNIP).

    Works at initialisation, before any training; the normalisation is over all connections.
    """

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        raw = {
            name: (t.param.detach() * ctx.stats[name].grad).abs() for name, t in ctx.targets.items()
        }
        total = sum(s.sum() for s in raw.values())
        if total <= 0:
            return raw
        return {name: s / total for name, s in raw.items()}


register(SnipCriterion("snip", "|g·w| / Σ|g·w|: connection sensitivity (SNIP)", [Stat.GRAD]))
