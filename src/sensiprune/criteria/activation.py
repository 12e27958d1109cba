"""Activation-aware magnitude (Wanda)."""

from __future__ import annotations

import torch

from sensiprune.criteria.base import per_param
from sensiprune.criteria.stats import ParamStats, Stat


@per_param(
    "activation",
    "|w|·‖x_j‖: weight times input-feature norm (Sun et al. 2023, Wanda); best with scope='row'",
    needs=[Stat.INPUT_RMS],
)
def wanda(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """A small weight on a loud input can matter more than a large weight on a quiet one."""
    assert stats.input_rms is not None
    return weight.abs() * stats.input_rms
