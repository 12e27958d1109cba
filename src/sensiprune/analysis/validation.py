"""Choosing the budget with k-fold cross-validation on the validation data.

A budget allocated from curves measured on some data is judged on data it has not seen: for each
fold, the curves come from the other folds, the budget from those curves, and the drop is
measured on the held-out fold. The spread of those drops says how far to trust the prediction;
the test split is never passed in, so it is touched only for the final number by the caller.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sensiprune.analysis.sensitivity import SensitivityTable, sensitivity
from sensiprune.data import Batch, LossFn
from sensiprune.errors import SensipruneError
from sensiprune.pruning import prune
from sensiprune.runs.train import Metric, evaluate, metric_units
from sensiprune.selection.allocation import Budget, LatencyTable, allocate
from sensiprune.targets import IgnoreSpec


@dataclass(frozen=True)
class CrossValidation:
    """The budget from all the validation data, and how well its kind predicts unseen drops."""

    budget: Budget
    folds: tuple[tuple[int, ...], ...]  # batch indices of each held-out fold
    predicted: tuple[float, ...]  # per fold, from the curves of the other folds
    observed: tuple[float, ...]  # per fold, measured on the held-out fold
    table: SensitivityTable | None = None  # the curves of all the data, the budget's source
    fold_tables: tuple[SensitivityTable, ...] = ()  # the curves each fold's budget came from
    samples: tuple[int, ...] = ()  # per fold, how many samples it held out (else all alike)
    paired_error: float = 0.0  # the standard error of the pooled drop from every unit

    @property
    def observed_mean(self) -> float:
        """The drop over every held-out sample: folds are pooled by their sizes (folds of
        whole batches differ in size; a last short batch is one fold's worth)."""
        return statistics.fmean(self.observed, self._weights())

    @property
    def observed_std(self) -> float:
        """The spread of the fold drops around that mean, weighted as the mean is."""
        if len(self.observed) < 2:
            return 0.0
        weights, mean = self._weights(), self.observed_mean
        spread = statistics.fmean([(o - mean) ** 2 for o in self.observed], weights)
        return (spread * len(self.observed) / (len(self.observed) - 1)) ** 0.5

    @property
    def observed_error(self) -> float:
        """The standard error of :attr:`observed_mean`: how far it may sit from the drop on
        unseen data of the same kind. The larger of two: the folds' spread (a few folds; all
        of them may see no drop where samples still change sides both ways) and the spread
        of the paired per-sample (or per-batch) drops that :func:`cross_validate` pools."""
        folds = self.observed_std / len(self.observed) ** 0.5 if self.observed else 0.0
        return max(folds, self.paired_error)

    def _weights(self) -> list[float]:
        return [float(n) for n in self.samples] if self.samples else [1.0] * len(self.observed)

    def __str__(self) -> str:
        rows = [
            f"  fold {i + 1}: predicted drop {p:+.4f}, observed on held-out {o:+.4f}"
            for i, (p, o) in enumerate(zip(self.predicted, self.observed))
        ]
        return "\n".join(
            [
                f"{len(self.folds)}-fold cross-validation: held-out drop "
                f"{self.observed_mean:+.4f} ± {self.observed_std:.4f}; final budget predicts "
                f"{self.budget.predicted_drop:+.4f}",
                *rows,
            ]
        )


def fold_indices(n_batches: int, folds: int) -> tuple[tuple[int, ...], ...]:
    """Disjoint folds of batch indices, dealt round-robin so every fold gets some of each part."""
    if not isinstance(folds, int) or folds < 2:
        raise SensipruneError(f"folds must be an integer of at least 2, got {folds!r}")
    if n_batches < folds:
        raise SensipruneError(
            f"{folds} folds need at least {folds} validation batches, got {n_batches}: "
            "use smaller batches or fewer folds"
        )
    return tuple(tuple(range(f, n_batches, folds)) for f in range(folds))


def cross_validate(
    model: nn.Module,
    batches: Sequence[Batch],
    target_sparsity: float | None = None,
    max_drop: float | None = None,
    folds: int = 5,
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    criterion: str = "magnitude",
    metric: Metric | None = None,
    loss_fn: LossFn | None = None,
    target_flops: float | None = None,
    structured: bool = False,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    ignore: IgnoreSpec = (),
    target_latency: float | None = None,
    latency: LatencyTable | None = None,
    round_to: int | str = 1,
    table: SensitivityTable | None = None,
    fold_tables: Sequence[SensitivityTable] = (),
    uniform: float | None = None,
) -> CrossValidation:
    """k-fold cross-validated budget for ``model`` (left unchanged) on validation ``batches``.

    ``structured``, ``example_inputs``, ``ignore`` and ``round_to`` mean what they mean for
    :func:`sensitivity` and :func:`prune`; ``target_flops`` and ``target_latency`` (with its
    ``latency`` table) need ``structured=True``; ``uniform`` validates one sparsity in every
    layer (see :func:`sensiprune.allocate`). ``table`` and ``fold_tables``: the curves of
    all of ``batches`` and of each fold's other batches, when an earlier call measured them
    (another target is then validated at the cost of the prunes alone).
    """
    batches = list(batches)
    split = fold_indices(len(batches), folds)
    targets = {
        "target_sparsity": target_sparsity,
        "max_drop": max_drop,
        "target_flops": target_flops,
        "target_latency": target_latency,
        "latency": latency,
        "uniform": uniform,
    }

    def curves(part: Sequence[Batch]):
        return sensitivity(
            model, lambda m: evaluate(m, part, metric), sparsities, criterion, part, loss_fn,
            ignore=ignore, show_progress=False, structured=structured,
            example_inputs=example_inputs,
        )  # fmt: skip

    predicted, observed, fitted, samples, drops, units = [], [], [], [], [], []
    for f, held_out in enumerate(split):
        fitting = [b for i, b in enumerate(batches) if i not in held_out]
        unseen = [batches[i] for i in held_out]
        fitted.append(fold_tables[f] if fold_tables else curves(fitting))
        budget = allocate(fitted[-1], **targets)
        pruned = copy.deepcopy(model)
        if budget:
            prune(pruned, budget, criterion=criterion, data=fitting, loss_fn=loss_fn, ignore=ignore,
                  structured=structured, example_inputs=example_inputs,
                  round_to=round_to)  # fmt: skip
        predicted.append(budget.predicted_drop)
        dense, counts = metric_units(model, unseen, metric)
        drops.append(dense - metric_units(pruned, unseen, metric)[0])
        units.append(counts)
        observed.append(float(drops[-1].sum() / counts.sum()))
        samples.append(round(float(counts.sum())))
    table = table if table is not None else curves(batches)
    final = allocate(table, **targets)
    return CrossValidation(
        final, split, tuple(predicted), tuple(observed), table, tuple(fitted), tuple(samples),
        paired_error(torch.cat(drops), torch.cat(units)),
    )  # fmt: skip


def paired_error(drops: torch.Tensor, counts: torch.Tensor) -> float:
    """The standard error of sum(drops) / sum(counts), the pooled drop, from its units'
    paired drops (each unit's metric sum, dense minus pruned, over ``counts`` samples): the
    ratio estimator's, as a survey weighs clusters of unequal size."""
    units = len(drops)
    if units < 2:
        return 0.0
    total = float(counts.sum())
    residuals = drops - counts * (float(drops.sum()) / total)
    return math.sqrt(float(residuals.pow(2).sum()) * units / (units - 1)) / total
