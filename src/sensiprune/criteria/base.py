"""The criterion type and the registry that names criteria."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sensiprune.criteria.stats import ParamStats, Stat
from sensiprune.data import Batch, LossFn
from sensiprune.errors import SensipruneError
from sensiprune.targets import Target

if TYPE_CHECKING:
    from sensiprune.structure.graph import Group


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

    What a criterion can do beyond scoring weights it declares, and the verbs ask rather than
    check its type: ``scores_groups`` (it scores whole channel groups: ``score_groups``),
    ``compensates`` (after choosing, it moves the weights that stay: ``compensate``),
    ``fills_patterns`` (its ``compensate`` chooses within N:M groups, given ``pattern=``),
    ``measures_loss`` (it runs the model once per candidate: exact, and slow on big models).
    """

    scores_groups = False
    compensates = False
    fills_patterns = False
    measures_loss = False

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

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What it needs and does, in words (``sensiprune criteria`` lists them)."""
        return tuple(
            word
            for word, has in (
                ("data", self.needs_data),
                ("channels only", self.structured_only),
                ("scores groups", self.scores_groups),
                ("compensates", self.compensates),
                ("fills N:M patterns", self.fills_patterns and self.compensates),
                ("measures loss", self.measures_loss),
            )
            if has
        )

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        if self._per_param is None:
            raise NotImplementedError(f"criterion {self.name} must override score()")
        return {
            name: self._per_param(t.param.detach(), ctx.stats[name])
            for name, t in ctx.targets.items()
        }

    def score_groups(
        self, model: nn.Module, groups: Sequence[Group], batches: Sequence[Batch], loss_fn: LossFn
    ) -> torch.Tensor:
        """One importance per channel group (for criteria with ``scores_groups``)."""
        raise NotImplementedError(f"criterion {self.name} does not score groups")

    def compensate(
        self,
        model: nn.Module,
        targets: dict[str, Target],
        masks: dict[str, torch.Tensor],
        existing: dict[str, torch.Tensor],
        batches: Sequence[Batch],
        loss_fn: LossFn,
        show_progress: bool = False,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """For criteria with ``compensates``: the masks it settles on within the chosen
        per-row counts, and the new values of the weights that stay, by parameter name.
        Works on a copy, so that a failure leaves the model untouched. Criteria with
        ``fills_patterns`` also take ``pattern=(N, M)``: N of every M consecutive inputs of a
        row go, chosen as the weights move."""
        raise NotImplementedError(f"criterion {self.name} does not compensate")

    def compensate_levels(
        self,
        model: nn.Module,
        target: Target,
        keeps: Sequence[torch.Tensor],
        batches: Sequence[Batch],
        loss_fn: LossFn,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """For criteria with ``compensates``: :meth:`compensate`'s new weights with
        ``target``'s layer alone pruned to each of ``keeps`` in turn (nested masks, fewest
        pruned first), what a sensitivity curve measures. Each level is computed when it is
        asked for, from ``model`` as it is then (the caller restores it between levels); a
        criterion that shares work among the levels overrides this."""
        for keep in keeps:
            yield self.compensate(
                model, {target.name: target}, {target.name: keep}, {}, batches, loss_fn
            )[1]

    def picks_own_weights(
        self,
        targets: dict[str, Target],
        masks: dict[str, torch.Tensor],
        pattern: tuple[int, int] | None,
    ) -> bool:
        """For criteria with ``compensates``: whether :meth:`compensate`, handed ``masks``,
        reads only how many weights each layer loses and picks which itself (the scores
        that placed the masks then need not be computed)."""
        return False

    def compensate_into(
        self,
        module: nn.Module,
        targets: dict[str, Target],
        chosen: dict[str, torch.Tensor],
        existing: Mapping[str, torch.Tensor],
        batches: Sequence[Batch],
        loss_fn: LossFn,
        show_progress: bool = False,
        pattern: tuple[int, int] | None = None,
    ) -> None:
        """:meth:`compensate`, written back: ``chosen`` takes the masks it settles on and
        ``module`` the weights that stay (a failure inside ``compensate`` changes neither).
        ``pattern`` is passed only when given, so criteria without ``fills_patterns`` need
        not take it."""
        settled, moved = self.compensate(
            module, targets, chosen, existing, batches, loss_fn, show_progress,
            **({} if pattern is None else {"pattern": pattern}),
        )  # fmt: skip
        chosen.update(settled)
        with torch.no_grad():
            for name, value in moved.items():
                module.get_parameter(name).copy_(value)

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
