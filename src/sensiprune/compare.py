"""Criteria side by side: the same model, data, budget and fine-tuning for each."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from . import criteria
from .data import Batch, LossFn
from .pruning import prune, score
from .train import Metric, evaluate, finetune


@dataclass(frozen=True)
class SweepPoint:
    """Test metric of one (criterion, sparsity), one-shot and after fine-tuning."""

    model: str
    criterion: str
    scope: str
    sparsity: float
    one_shot: float
    finetuned: float | None
    scoring_seconds: float


@dataclass(frozen=True)
class SweepSettings:
    """One typed bundle for a sweep, instead of a long keyword list."""

    sparsities: Sequence[float]
    criteria: Sequence[str]
    scope: str = "global"
    normalize: str = "lamp"
    finetune_epochs: int = 0
    lr: float = 1e-3
    seed: int = 0


def sweep(
    name: str,
    dense: nn.Module,
    settings: SweepSettings,
    score_data: Iterable[Batch],
    train_data: Iterable[Batch],
    test_data: Iterable[Batch],
    loss_fn: LossFn | None = None,
    metric: Metric | None = None,
) -> list[SweepPoint]:
    """Prune copies of ``dense`` with every criterion at every sparsity; ``dense`` is untouched."""
    for criterion in settings.criteria:
        criteria.get(criterion)  # fail on a typo before hours of work
    points = []
    score_batches = list(score_data)
    for criterion in settings.criteria:
        start = time.perf_counter()
        scores = score(dense, criterion, score_batches, loss_fn, seed=settings.seed)
        scoring_seconds = time.perf_counter() - start
        for sparsity in settings.sparsities:
            model = copy.deepcopy(dense)
            prune(
                model,
                sparsity,
                criterion,
                score_batches,
                loss_fn,
                scope=settings.scope,
                normalize=settings.normalize,
                seed=settings.seed,
                scores=scores,
            )
            one_shot = evaluate(model, test_data, metric)
            tuned = None
            if settings.finetune_epochs:
                finetune(
                    model,
                    train_data,
                    settings.finetune_epochs,
                    loss_fn,
                    lr=settings.lr,
                    show_progress=False,
                )
                tuned = evaluate(model, test_data, metric)
            points.append(
                SweepPoint(
                    name, criterion, settings.scope, sparsity, one_shot, tuned, scoring_seconds
                )
            )
    return points
