"""Second-order criteria from the diagonal of the Hessian (Optimal Brain Damage)."""

from __future__ import annotations

import torch

from sensiprune.criteria.base import per_param
from sensiprune.criteria.stats import ParamStats, Stat


@per_param(
    "obd",
    "½·h_ii·w² with the empirical-Fisher diagonal (LeCun, Denker & Solla 1990)",
    needs=[Stat.GRAD_SQ],
)
def obd_fisher(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """Near a minimum the gradient term vanishes and the loss rises by ½·h_ii·w²."""
    assert stats.grad_sq is not None
    return 0.5 * stats.grad_sq * weight.pow(2)


@per_param(
    "obd_hutchinson",
    "½·|h_ii|·w² with Hutchinson's Hessian-diagonal estimator",
    needs=[Stat.HESS_DIAG],
)
def obd_hutchinson(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """The true curvature instead of the Fisher; the estimate is noisy, so its size is used."""
    assert stats.hess_diag is not None
    return 0.5 * stats.hess_diag.abs() * weight.pow(2)
