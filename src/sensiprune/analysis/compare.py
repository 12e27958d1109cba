"""Criteria side by side: the same model, data, budget and fine-tuning for each."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from sensiprune import criteria, distributed
from sensiprune.data import Batch, LossFn
from sensiprune.measure import count_parameters
from sensiprune.options import PruneOptions
from sensiprune.pruning import prune_with, score
from sensiprune.runs.train import Metric, evaluate, finetune


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
    params: int  # nonzero parameters left after pruning


@dataclass(frozen=True)
class SweepSettings:
    """One typed bundle for a sweep, instead of a long keyword list."""

    sparsities: Sequence[float]
    criteria: Sequence[str]
    # of every prune; the criterion is each of ``criteria`` in turn
    options: PruneOptions = field(default_factory=PruneOptions)
    finetune_epochs: int = 0
    lr: float = 1e-3  # of the default optimiser, Adam
    score_batches: int | None = None  # of the score data (default: all)
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None


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
    """Prune copies of ``dense`` with every criterion at every sparsity; ``dense`` is untouched.

    Unstructured sweeps score once per criterion and reuse the scores at every sparsity;
    structured ones score each copy, as channel removal changes the model under the scores.
    """
    for criterion in settings.criteria:
        criteria.get(criterion)  # fail on a typo before hours of work
    points = []
    score_batches = list(itertools.islice(score_data, settings.score_batches))
    for criterion in settings.criteria:
        options = replace(settings.options, criterion=criterion)
        start = time.perf_counter()
        scores = (
            None
            if options.structured is not None
            else score(
                dense,
                criterion,
                score_batches,
                loss_fn,
                options.ignore,
                options.seed,
            )
        )
        scoring_seconds = time.perf_counter() - start
        for sparsity in settings.sparsities:
            model = copy.deepcopy(dense)
            started = time.perf_counter()
            prune_with(model, sparsity, options, score_batches, loss_fn, scores)
            if scores is None:  # structured: scoring happens inside every prune
                scoring_seconds = time.perf_counter() - started
            params = count_parameters(model).nonzero
            one_shot = evaluate(model, test_data, metric)
            tuned = None
            if settings.finetune_epochs:
                optimizer = settings.make_optimizer(model) if settings.make_optimizer else None
                with distributed.data_parallel(model) as trained:
                    finetune(
                        trained,
                        train_data,
                        settings.finetune_epochs,
                        loss_fn,
                        optimizer,
                        lr=settings.lr,
                        show_progress=False,
                    )
                tuned = evaluate(model, test_data, metric)
            points.append(
                SweepPoint(
                    name,
                    criterion,
                    options.scope,
                    sparsity,
                    one_shot,
                    tuned,
                    scoring_seconds,
                    params,
                )
            )
    return points
