"""The criterion type and the registry that names criteria."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sensiprune.criteria.stats import ParamStats, Stat
from sensiprune.data import Batch, LossFn
from sensiprune.errors import SensipruneError
from sensiprune.targets import Target


@dataclass(frozen=True)
class ScoringContext:
    """Everything a criterion may look at; stats come from one shared pass (stats.collect)."""

    model: nn.Module
    targets: dict[str, Target]
    batches: Iterable[Batch] | None
    loss_fn: LossFn
    stats: dict[str, ParamStats]
    seed: int = 0
    show_progress: bool = False


class Criterion:
    """Scores every weight of every target: higher means more important (kept longer).

    Most criteria are a pure function of (weight, its statistics), given as ``per_param``;
    criteria that must look across layers or run the model override ``score``.
    """

    def __init__(
        self,
        name: str,
        summary: str,
        needs: Iterable[Stat] = (),
        needs_data: bool = True,
        per_param: Callable[[torch.Tensor, ParamStats], torch.Tensor] | None = None,
        structured_only: bool = False,
    ) -> None:
        self.name = name
        self.summary = summary
        self.needs = frozenset(needs)
        self.needs_data = needs_data
        self._per_param = per_param
        # scores channels ("layer::out" entries) or 1-d scales rather than single weights
        self.structured_only = structured_only

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        if self._per_param is None:
            raise NotImplementedError(f"criterion {self.name} must override score()")
        return {
            name: self._per_param(t.param.detach(), ctx.stats[name])
            for name, t in ctx.targets.items()
        }

    def __repr__(self) -> str:
        return f"Criterion({self.name!r})"


_REGISTRY: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    if criterion.name in _REGISTRY:
        raise ValueError(f"criterion {criterion.name!r} is registered twice")
    _REGISTRY[criterion.name] = criterion
    return criterion


def per_param(name: str, summary: str, needs: Iterable[Stat] = (), needs_data: bool = True):
    """Register a pure (weight, stats) -> scores function as a criterion."""

    def wrap(fn: Callable[[torch.Tensor, ParamStats], torch.Tensor]) -> Callable:
        register(Criterion(name, summary, needs, needs_data, per_param=fn))
        return fn

    return wrap


def get(name: str) -> Criterion:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise SensipruneError(
            f"unknown criterion {name!r}; known criteria: {', '.join(available())}"
        )
    return _REGISTRY[name]


def available(single_weights: bool = False) -> list[str]:
    """Registered names; ``single_weights=True`` leaves out the channel-only criteria."""
    return sorted(n for n, c in _REGISTRY.items() if not (single_weights and c.structured_only))
