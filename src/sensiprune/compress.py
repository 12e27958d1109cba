"""The verb that takes a goal: ``sp.compress`` measures per-layer sensitivity, allocates the
per-layer thresholds, validates them by k-fold cross-validation, and prunes and fine-tunes in
steps until the goal is met.

The goal picks the method: a size goal (``params``) prunes single weights with OBS, which
moves the weights that stay to make up for the ones removed; a FLOP goal (``flops``) removes
whole channels, so layers really shrink; an accuracy goal (``max_drop``) prunes single weights
as far as the cross-validated curves allow. Every choice can be overridden.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sensiprune.analysis.sensitivity import SensitivityTable
from sensiprune.analysis.validation import CrossValidation, cross_validate
from sensiprune.data import Batch, LossFn, as_batches
from sensiprune.errors import SensipruneError
from sensiprune.measure import count_flops, count_parameters
from sensiprune.pruning import prune
from sensiprune.runs.train import Metric, evaluate, finetune
from sensiprune.selection.schedule import share_of_remaining, sparsity_at
from sensiprune.selection.unstructured import check_sparsity
from sensiprune.structure.inputs import example_arguments
from sensiprune.targets import IgnoreSpec, require_targets

GOALS = ("params", "flops", "max_drop")
DEFAULT_CRITERION = {"params": "obs", "flops": "taylor", "max_drop": "obs"}


@dataclass(frozen=True)
class CompressStep:
    """The model after one prune / fine-tune step."""

    step: int
    params_kept: float  # nonzero parameters, as a fraction of the dense model's
    flops_kept: float  # FLOPs, as a fraction of the dense model's
    metric: float  # on the validation data


@dataclass(frozen=True)
class CompressResult:
    """What ``compress`` reached, and how far the cross-validated prediction held."""

    goal: dict[str, float]
    method: str
    criterion: str
    budget: dict[str, float]  # per layer (unstructured) or family of layers (structured)
    predicted_drop: float  # of the final budget, from the curves of all the validation data
    cross_validated_drop: float  # mean over the held-out folds
    cross_validated_std: float
    dense_metric: float  # on the held-out data (test data when given, else validation)
    metric: float
    params_kept: float
    flops_kept: float
    steps: tuple[CompressStep, ...]
    table: SensitivityTable  # the curves the budget was allocated from

    @property
    def measured_drop(self) -> float:
        return self.dense_metric - self.metric

    def __str__(self) -> str:
        goal = ", ".join(f"{k}={v:g}" for k, v in self.goal.items())
        lines = [
            f"compress to {goal}: {self.method} with {self.criterion}",
            f"  parameters kept {self.params_kept:.1%} ({1 / max(self.params_kept, 1e-12):.1f}x "
            f"fewer), FLOPs kept {self.flops_kept:.1%} "
            f"({1 / max(self.flops_kept, 1e-12):.2f}x fewer)",
            f"  metric {self.dense_metric:.4f} -> {self.metric:.4f}: drop {self.measured_drop:+.4f}"
            f" measured; predicted {self.predicted_drop:+.4f}, cross-validated "
            f"{self.cross_validated_drop:+.4f} ± {self.cross_validated_std:.4f}",
        ]
        lines += [
            f"  step {s.step}: parameters {s.params_kept:.1%}, FLOPs {s.flops_kept:.1%}, "
            f"validation metric {s.metric:.4f}"
            for s in self.steps
        ]
        return "\n".join(lines)


def compress(
    model: nn.Module,
    data: Iterable[Batch],
    val_data: Iterable[Batch],
    target: Mapping[str, float],
    *,
    test_data: Iterable[Batch] | None = None,
    criterion: str | None = None,
    folds: int = 5,
    sparsities: Sequence[float] | None = None,
    steps: int = 1,
    epochs_per_step: int = 5,
    lr: float = 1e-3,
    metric: Metric | None = None,
    loss_fn: LossFn | None = None,
    example_inputs: object = None,
    ignore: IgnoreSpec = (),
    show_progress: bool = False,
) -> CompressResult:
    """Compress ``model`` in place to ``target``, one of:

    - ``{"params": f}``: keep the fraction f of the parameters (unstructured, OBS);
    - ``{"flops": f}``: keep the fraction f of the FLOPs (structured: channels, heads, units);
    - ``{"max_drop": d}``: prune as much as the cross-validated curves say costs at most d of
      the metric (unstructured, OBS).

    ``data`` trains (fine-tuning between steps, and the scores); ``val_data`` measures the
    curves (at ``sparsities``; by default at points past what the goal needs, so that no
    layer's curve stops short of its threshold) and cross-validates the budget in ``folds``
    folds; ``test_data``, seen only at the end, gives the measured drop. ``steps`` prune /
    fine-tune steps along the cubic schedule, ``epochs_per_step`` epochs of Adam (``lr``) after
    each. One step is the default: OBS on the dense weights, then fine-tuning, measured better
    than steps at the same epochs (benchmarks/results/compress.md). ``metric`` (default:
    accuracy) and ``loss_fn`` as for :func:`sensiprune.evaluate` and :func:`sensiprune.prune`.
    """
    goal, value = check_goal(target)
    structured = goal == "flops"
    criterion = criterion or DEFAULT_CRITERION[goal]
    train = as_batches(data, "data")
    validation = list(as_batches(val_data, "val_data"))
    held_out = list(as_batches(test_data, "test_data")) if test_data is not None else validation
    if not isinstance(steps, int) or steps < 1:
        raise SensipruneError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(epochs_per_step, int) or epochs_per_step < 0:
        raise SensipruneError(
            f"epochs_per_step must be a non-negative integer: {epochs_per_step!r}"
        )
    inputs = tuple(example_arguments(model, example_inputs, validation))
    sample = tuple(t[:1] for t in inputs)
    dense_params = count_parameters(model).total
    dense_flops = count_flops(model, *sample).effective
    dense_metric = evaluate(model, held_out, metric)
    if goal == "params":
        allocation = {"target_sparsity": weight_sparsity(model, value, ignore)}
    else:
        allocation = {"target_flops" if goal == "flops" else "max_drop": value}
    if sparsities is None:
        sparsities = _curve_points(allocation.get("target_sparsity"))
    checked = cross_validate(
        model, validation, folds=folds, sparsities=sparsities, criterion=criterion,
        metric=metric, loss_fn=loss_fn, structured=structured, example_inputs=inputs,
        ignore=ignore, **allocation,
    )  # fmt: skip
    budget = dict(checked.budget)
    history = []
    for step in range(1, steps + 1):
        _prune_step(model, budget, step, steps, structured, criterion, train, loss_fn, inputs)
        if epochs_per_step:
            finetune(model, train, epochs_per_step, loss_fn, lr=lr, show_progress=show_progress)
        history.append(
            CompressStep(
                step,
                count_parameters(model).nonzero / dense_params,
                count_flops(model, *sample).effective / dense_flops,
                evaluate(model, validation, metric),
            )
        )
    return _result(goal, value, structured, criterion, checked, dense_metric, held_out, model,
                   metric, history)  # fmt: skip


def check_goal(target: object) -> tuple[str, float]:
    """The one goal of ``target`` and its value, or one line saying what is wrong."""
    if not isinstance(target, Mapping) or len(target) != 1:
        raise SensipruneError(
            f"target must be a dict with one goal, one of {', '.join(GOALS)}, such as "
            f'{{"params": 0.1}}; got {target!r}'
        )
    ((goal, value),) = target.items()
    if goal not in GOALS:
        raise SensipruneError(
            f"unknown goal {goal!r}: compress reaches one of {', '.join(GOALS)} "
            "(measured speed-up and file-size goals are not implemented yet)"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SensipruneError(f"target {goal} must be a number, got {value!r}")
    if goal == "max_drop" and not 0.0 <= value < 1.0:
        raise SensipruneError(f"target max_drop must be in [0, 1), got {value}")
    if goal != "max_drop" and not 0.0 < value < 1.0:
        raise SensipruneError(
            f"target {goal} is the fraction of the dense model to keep, in (0, 1), got {value}"
        )
    return goal, float(value)


def _curve_points(needed: float | None) -> tuple[float, ...]:
    """Where to measure the curves: the usual points, and past the sparsity the goal needs on
    average (some layers must go further than that), up to 99%, what every layer keeps at
    least by default."""
    points = {0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99}
    if needed is not None:
        points |= {needed, 1.0 - (1.0 - needed) / 2}
    return tuple(sorted(p for p in points if p <= 0.99))


def weight_sparsity(model: nn.Module, kept: float, ignore: IgnoreSpec = ()) -> float:
    """The sparsity of the prunable weights that leaves ``kept`` of all parameters."""
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(t.param.numel() for t in require_targets(model, ignore).values())
    fixed = total - prunable  # biases, norms, embeddings, ignored layers: they stay
    sparsity = 1.0 - (kept * total - fixed) / prunable
    if not 0.0 < sparsity < 1.0:
        raise SensipruneError(
            f"keeping {kept:.1%} of the parameters is out of reach: {fixed:,} of {total:,} are "
            "not prunable (biases, norms, embeddings, ignored layers)"
        )
    check_sparsity(sparsity)
    return sparsity


def _prune_step(
    model: nn.Module,
    budget: dict[str, float],
    step: int,
    steps: int,
    structured: bool,
    criterion: str,
    data: Iterable[Batch],
    loss_fn: LossFn | None,
    inputs: tuple[torch.Tensor, ...],
) -> None:
    """Step ``step`` of the cubic path to ``budget``: masks name the total sparsity of a
    layer; a structured step names the share of the channels still there."""
    now = (
        share_of_remaining(budget, step, steps) if structured else sparsity_at(budget, step, steps)
    )
    now = {k: v for k, v in now.items() if v > 0}
    if now:
        prune(model, now, criterion=criterion, data=data, loss_fn=loss_fn, structured=structured,
              example_inputs=inputs if structured else None)  # fmt: skip


def _result(
    goal: str,
    value: float,
    structured: bool,
    criterion: str,
    checked: CrossValidation,
    dense_metric: float,
    held_out: list[Batch],
    model: nn.Module,
    metric: Metric | None,
    history: list[CompressStep],
) -> CompressResult:
    return CompressResult(
        goal={goal: value},
        method="structured (channels, heads, units)" if structured else "unstructured (masks)",
        criterion=criterion,
        budget=dict(checked.budget),
        predicted_drop=checked.budget.predicted_drop,
        cross_validated_drop=checked.observed_mean,
        cross_validated_std=checked.observed_std,
        dense_metric=dense_metric,
        metric=evaluate(model, held_out, metric),
        params_kept=history[-1].params_kept,
        flops_kept=history[-1].flops_kept,
        steps=tuple(history),
        table=checked.table,
    )
