"""The verb that takes a goal: ``sp.compress`` measures per-layer sensitivity, allocates the
per-layer thresholds, validates them by k-fold cross-validation, and prunes and fine-tunes in
steps until the goal is met.

The goal picks the method: a size goal (``params``) prunes single weights with OBS, which
moves the weights that stay to make up for the ones removed; a FLOP goal (``flops``) removes
whole channels, so layers really shrink; a speed goal (``speedup``) removes channels too,
allocated against latency measured on this device rather than FLOPs; an accuracy goal
(``max_drop``) prunes single weights as far as the held-out folds allow. Every choice can be
overridden.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from sensiprune.analysis.latency import LatencyModel, measure_latency
from sensiprune.analysis.sensitivity import SensitivityTable, sensitivity
from sensiprune.analysis.validation import CrossValidation, cross_validate, paired_error
from sensiprune.apply.dead import mask_dead_units
from sensiprune.data import Batch, LossFn, as_batches
from sensiprune.errors import SensipruneError
from sensiprune.io.saving import saved_bytes
from sensiprune.measure import count_flops, count_parameters, latency
from sensiprune.pruning import prune
from sensiprune.runs.train import Metric, evaluate, finetune, metric_units
from sensiprune.selection.groups import channel_multiple
from sensiprune.selection.schedule import sparsity_at, structured_step
from sensiprune.selection.unstructured import check_sparsity
from sensiprune.size_goal import file_sparsity, reclaimed, within_file_size
from sensiprune.speed_goal import (
    NEAR_EQUAL,
    SPEED_TOLERANCE,
    SpeedCandidate,
    discounted,
    measured_speedup,
    speed_candidates,
)
from sensiprune.structure.inputs import example_arguments
from sensiprune.targets import IgnoreSpec, require_targets

GOALS = ("params", "bytes", "flops", "speedup", "max_drop")
DEFAULT_CRITERION = {
    "params": "obs", "bytes": "obs", "flops": "taylor", "speedup": "taylor", "max_drop": "obs",
}  # fmt: skip
STRUCTURED_POINTS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95)  # channels: a 2x model cuts ~30-50%
SELECTION_EPOCHS = 1  # fine-tuning of each speed candidate before the validation data judges
_WITHIN = f"measured within {SPEED_TOLERANCE:.0%} of the goal"
BOUNDED_STEPS = 4  # the default steps of a goal with a drop bound: somewhere to stop short
BOUND_TRIES = 10  # tightenings of a drop goal's budget against the held-out folds
BOUND_STEP = 1.2  # each tightening keeps this many times the weights of the last
# a drop goal holds when the pooled held-out drop plus this many standard errors stays under
# it (one-sided 95%): the largest sparsity whose measured drop just meets the bound is, by
# chance, one whose drop on new data is larger half of the time
BOUND_ERRORS = 1.645


@dataclass(frozen=True)
class CompressStep:
    """The model after one prune / fine-tune step."""

    step: float  # 1, 2, ...; k - 0.5 where a run with a drop bound stopped half into step k
    params_kept: float  # nonzero parameters, as a fraction of the dense model's
    flops_kept: float  # FLOPs, as a fraction of the dense model's
    metric: float  # on the validation data


@dataclass(frozen=True)
class CompressResult:
    """What ``compress`` reached, and how far the cross-validated prediction held."""

    goal: dict[str, float]  # with max_drop beside the goal where one was given
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
    bytes_kept: float  # of the tensors sp.save writes (the file less its headers)
    dense_latency: float  # seconds of one forward pass on the example batch, median
    latency: float
    speedup: float  # speed goals: timed in alternation with the dense model; else the ratio
    steps: tuple[CompressStep, ...]
    table: SensitivityTable  # the curves the budget was allocated from
    latency_table: LatencyModel | None = None  # what a speed goal was allocated against
    # on the held-out data right after the budget was pruned in one step, before fine-tuning:
    # the drop the cross-validation predicts (None with several steps)
    one_shot_metric: float | None = None
    # speed goals: what the budget was allocated to, one of speed_goal.ALLOCATED_TO's values
    allocated_to: str | None = None
    # speed goals: every budget calibrated to the goal, the chosen one first
    speed_candidates: tuple[SpeedCandidate, ...] = ()
    # a goal with max_drop beside it: a step dropped past it and was undone, so the model is
    # the last step's within it, short of the goal
    stopped_short: bool = False

    @property
    def measured_drop(self) -> float:
        return self.dense_metric - self.metric

    def __str__(self) -> str:
        goal = ", ".join(f"{k}={v:g}" for k, v in self.goal.items())
        lines = [
            f"compress to {goal}: {self.method} with {self.criterion}",
            f"  parameters kept {self.params_kept:.1%} ({1 / max(self.params_kept, 1e-12):.1f}x "
            f"fewer), FLOPs kept {self.flops_kept:.1%} "
            f"({1 / max(self.flops_kept, 1e-12):.2f}x fewer), file bytes kept "
            f"{self.bytes_kept:.1%} ({1 / max(self.bytes_kept, 1e-12):.1f}x smaller)",
            f"  latency {1e3 * self.dense_latency:.2f} ms -> {1e3 * self.latency:.2f} ms a "
            f"batch: {self.speedup:.2f}x faster, measured",
            f"  metric {self.dense_metric:.4f} -> {self.metric:.4f}: drop {self.measured_drop:+.4f}"
            " measured after fine-tuning",
            f"  before fine-tuning: predicted drop {self.predicted_drop:+.4f}, cross-validated "
            f"{self.cross_validated_drop:+.4f} ± {self.cross_validated_std:.4f}"
            + (
                f", measured {self.dense_metric - self.one_shot_metric:+.4f}"
                if self.one_shot_metric is not None
                else ""
            ),
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
    steps: int | None = None,
    epochs_per_step: int = 5,
    lr: float = 1e-3,
    metric: Metric | None = None,
    loss_fn: LossFn | None = None,
    example_inputs: object = None,
    ignore: IgnoreSpec = (),
    show_progress: bool = False,
    round_to: int | str | None = None,
    latency_cache: str | os.PathLike | None = None,
) -> CompressResult:
    """Compress ``model`` in place to ``target``, one of:

    - ``{"params": f}``: keep the fraction f of the parameters (unstructured, OBS);
    - ``{"bytes": f}``: keep the fraction f of the bytes :func:`sensiprune.save` writes (kept
      values plus their indices or a bitmask; unstructured, OBS);
    - ``{"flops": f}``: keep the fraction f of the FLOPs (structured: channels, heads, units);
    - ``{"speedup": s}``: run s times faster on this device (structured), measured on the
      example batch (by default the first batch of ``val_data``: its batch size counts);
    - ``{"max_drop": d}``: prune as much as costs at most d of the metric before fine-tuning,
      over the samples of the held-out folds, with one-sided 95% confidence (unstructured,
      OBS).

    Beside any other goal, ``max_drop`` is where to stop short of it, as in
    ``{"speedup": 3.0, "max_drop": 0.02}``: after each step's fine-tuning the model is
    measured on ``val_data`` against the dense one, and a step whose drop exceeds d is
    undone, half of it is tried once the same way, and the run ends there (the result's
    ``stopped_short``); such a goal is pruned in ``BOUNDED_STEPS`` steps unless ``steps``
    says otherwise, each keeping the same share of what the last left (more steps stop
    nearer the bound).

    ``data`` trains (fine-tuning between steps, and the scores); ``val_data`` measures the
    curves (at ``sparsities``; by default, for weights, at points past what the goal needs, so
    that no layer's curve stops short of its threshold; for channels, from 10% to 95%, where a
    model twice as fast lies) and cross-validates the budget in ``folds``
    folds; ``test_data``, seen only at the end, gives the measured drop. ``steps`` prune /
    fine-tune steps along the cubic schedule (geometric with a drop bound; only the last
    rounds channel counts to ``round_to``), ``epochs_per_step`` epochs of Adam (``lr``) after
    each. One step is the default without a drop bound: OBS on the dense weights, then
    fine-tuning, measured better than steps at the same epochs
    (benchmarks/results/compress.md). ``metric`` (default: accuracy) and ``loss_fn`` as for
    :func:`sensiprune.evaluate` and :func:`sensiprune.prune`.

    A speed goal times each family of channels cut at a few sparsities against the dense
    model (a latency table, reused from ``latency_cache`` when it was measured there before
    for this architecture, device, dtype and batch), allocates against it, then prunes a copy
    and measures it, correcting the target until the measured speed-up is within 2% of the
    goal; FLOP budgets and uniform cuts are calibrated alike. Of the budgets that measure the
    goal, the one most accurate on ``val_data`` after a trial prune and one epoch of
    fine-tuning is kept: which cut recovers best, no cost model says. Where none measures
    it (a goal out of reach), each cost model's nearest budget is tried alike, its metric
    less 1% for each 1% it measured more than 10% off the goal. ``round_to`` keeps
    channel counts multiples of N for structured goals (``"auto"``: one SIMD vector of this
    device). By default any count is allocated, and a speed goal's budgets are then rounded
    up to whole vectors wherever the rounded model measures as fast and within 2% of the goal
    (time steps at whole vectors: the channels up to the next multiple cost about no time;
    rounding inside the allocation instead cuts narrow layers in steps too coarse).

    Unstructured goals pruned in one step (and max_drop goals) also mask what produces a unit
    no layer reads any more (every weight reading it pruned): exact, and for size goals the
    sparsity is lowered until the model, so masked, meets the goal, which spends the freed
    budget on weights that matter.
    """
    goal, value, bound = check_goal(target)
    structured = goal in ("flops", "speedup")
    fill = round_to is None  # speed goals: whole vectors where they cost no time
    round_to = channel_multiple(model, round_to or 1)
    criterion = criterion or DEFAULT_CRITERION[goal]
    train = as_batches(data, "data")
    validation = list(as_batches(val_data, "val_data"))
    held_out = list(as_batches(test_data, "test_data")) if test_data is not None else validation
    if steps is None:
        steps = 1 if bound is None else BOUNDED_STEPS
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
    dense_bytes = saved_bytes(model)
    dense_metric = evaluate(model, held_out, metric)
    # a speed goal times a dense copy beside the result at the end; other goals time the
    # model now and again at the end, with no copy
    dense = copy.deepcopy(model) if goal == "speedup" else None
    dense_latency = latency(model, *inputs) if dense is None else 0.0
    table, lut, candidates = None, None, []
    if goal == "params":
        allocation = {"target_sparsity": weight_sparsity(model, value, ignore)}
    elif goal == "bytes":
        allocation = {"target_sparsity": file_sparsity(model, value, ignore)}
    elif goal == "speedup":
        table = sensitivity(
            model, lambda m: evaluate(m, validation, metric), sparsities or STRUCTURED_POINTS,
            criterion, validation, loss_fn, ignore, show_progress=False, structured=True,
            example_inputs=inputs,
        )  # fmt: skip
        lut = measure_latency(model, table, inputs, round_to=round_to, cache_dir=latency_cache,
                              show_progress=show_progress)  # fmt: skip
        trial_epochs = min(SELECTION_EPOCHS, epochs_per_step)
        trial = functools.partial(
            _trial_metric, model, train, validation, criterion=criterion, loss_fn=loss_fn,
            metric=metric, inputs=inputs, epochs=trial_epochs, lr=lr,
        )  # fmt: skip
        candidates = _most_accurate(
            speed_candidates(model, table, lut, value, inputs, round_to, fill), trial, value
        )
        allocation, round_to = candidates[0].target, candidates[0].round_to
    else:
        allocation = {"target_flops" if goal == "flops" else "max_drop": value}
    if sparsities is None:
        needed = allocation.get("target_sparsity")
        sparsities = STRUCTURED_POINTS if structured else _curve_points(needed)
    validate = functools.partial(
        cross_validate, model, validation, folds=folds, sparsities=sparsities,
        criterion=criterion, metric=metric, loss_fn=loss_fn, structured=structured,
        example_inputs=inputs, ignore=ignore, round_to=round_to,
    )  # fmt: skip
    checked = validate(table=table, **allocation)
    if goal == "max_drop":
        checked = _sparsest_within_bound(checked, value, validate)
    elif goal == "bytes":
        checked = within_file_size(checked, model, value * dense_bytes, validate)
    # size goals in steps fine-tune between them: which units go unread is not foreseen
    reclaim = not structured and (goal == "max_drop" or steps == 1)
    if reclaim and goal != "max_drop":
        size = functools.partial(_reclaimed_size, model, goal, criterion, train, loss_fn, inputs)
        table, fold_tables = checked.table, checked.fold_tables
        checked = reclaimed(
            checked, size, value * (dense_params if goal == "params" else dense_bytes),
            lambda s: validate(target_sparsity=s, table=table, fold_tables=fold_tables),
        )  # fmt: skip
    budget = dict(checked.budget)
    sizes = dict(zip(checked.table.layers, checked.table.sizes))
    dense_units = metric_units(model, validation, metric) if bound is not None else None
    # with a bound, equal ratios of density a step: wherever the run stops, each step taken
    # went as far as the others (a cubic path puts most of the way into its first step)
    path = "cubic" if bound is None else "geometric"
    unread, one_shot, measured = 0, None, None  # measured: the last step's validation metric

    def take(at: int, of: int) -> tuple[float, float] | None:
        """Prune to point ``at`` of ``of`` on the path and fine-tune; where that drops past
        the bound, undo it and say by how much (drop, upper end)."""
        nonlocal unread, one_shot, measured
        saved, measured = (copy.deepcopy(model) if bound is not None else None), None
        _prune_step(model, budget, at, of, structured, criterion, train, loss_fn, inputs,
                    round_to, path, sizes)  # fmt: skip
        masked = mask_dead_units(model, inputs) if reclaim else 0
        if of == 1:  # the whole budget at once: what the cross-validation predicted
            one_shot = evaluate(model, held_out, metric)
        if epochs_per_step:
            finetune(model, train, epochs_per_step, loss_fn, lr=lr, show_progress=show_progress)
        if saved is not None:
            measured, drop, upper = _validation_drop(dense_units, model, validation, metric)
            if drop > bound:
                _put_back(model, saved)
                one_shot = None
                return drop, upper
        unread += masked
        return None

    def record(step: float) -> None:
        history.append(
            CompressStep(
                step,
                count_parameters(model).nonzero / dense_params,
                count_flops(model, *sample).effective / dense_flops,
                measured if measured is not None else evaluate(model, validation, metric),
            )
        )

    history, crossed = [], None
    for step in range(1, steps + 1):
        crossed = take(step, steps)
        if crossed is None:
            record(step)
            continue
        halfway = take(2 * step - 1, 2 * steps)  # the step past the bound, halved, once
        if halfway is None:
            record(step - 0.5)
        crossed = (step, *crossed, halfway is None)
        break
    if dense is not None:  # side by side: a shared machine drifts between start and end
        dense_latency = latency(dense, *inputs)
    after = latency(model, *inputs)
    faster = measured_speedup(dense, model, inputs) if dense is not None else dense_latency / after
    timing = (dense_latency, after, faster)
    method = "structured (channels, heads, units)" if structured else "unstructured (masks)"
    if unread:
        method += f", with the {unread:,} parameters of units no layer reads masked too"
    if goal == "max_drop" and _upper_drop(checked) > value:
        method += (
            f"; the bound is NOT certified: after {BOUND_TRIES} tightenings the held-out "
            f"folds still allow a drop up to {_upper_drop(checked):+.4f} (one-sided 95%), "
            "more validation data would tell"
        )
    if candidates:
        chosen = candidates[0]
        method += f", allocated to {chosen.allocated_to} ({_why_chosen(candidates, trial_epochs)})"
        if fill and chosen.round_to > 1:
            method += f", channel counts rounded up to multiples of {chosen.round_to} ({_WITHIN})"
    if crossed is not None:
        step, drop, upper, half = crossed
        kept = (
            f"after half of step {step}" if half
            else f"after step {step - 1}, as half of step {step} went past it too" if step > 1
            else "dense: not even half of step 1 held"
        )  # fmt: skip
        method += (
            f"; stopped short of the goal, {kept}: step {step} of {steps} dropped {drop:+.4f} "
            f"on the validation data after fine-tuning (up to {upper:+.4f}, one-sided 95%), "
            f"past max_drop {bound:g}, so it was undone"
        )
    goals = {goal: value, **({"max_drop": bound} if bound is not None else {})}
    kept = (
        count_parameters(model).nonzero / dense_params,
        count_flops(model, *sample).effective / dense_flops,
        saved_bytes(model) / dense_bytes,
    )
    return _result(goals, crossed is not None, method, criterion, checked, dense_metric,
                   held_out, model, metric, history, timing, lut, one_shot, candidates,
                   kept)  # fmt: skip


def check_goal(target: object) -> tuple[str, float, float | None]:
    """The goal of ``target``, its value and the drop bound beside it (None without one), or
    one line saying what is wrong. A target holds one goal, and may add ``max_drop`` to a
    size, FLOP or speed goal as the drop after fine-tuning at which to stop short of it."""
    if not isinstance(target, Mapping) or not 1 <= len(target) <= 2:
        raise SensipruneError(
            f"target must be a dict with one goal, one of {', '.join(GOALS)}, such as "
            f'{{"params": 0.1}}, and optionally max_drop beside it, such as '
            f'{{"speedup": 2.0, "max_drop": 0.01}}; got {target!r}'
        )
    for goal in target:
        if goal not in GOALS:
            raise SensipruneError(
                f"unknown goal {goal!r}: compress reaches one of {', '.join(GOALS)}"
            )
    if len(target) == 2 and "max_drop" not in target:
        raise SensipruneError(
            f"target must hold one goal, and at most max_drop beside it; got {target!r}"
        )
    values = {goal: _checked_value(goal, value) for goal, value in target.items()}
    bound = values.pop("max_drop") if len(values) == 2 else None
    ((goal, value),) = values.items()
    return goal, value, bound


def _checked_value(goal: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SensipruneError(f"target {goal} must be a number, got {value!r}")
    if goal == "max_drop" and not 0.0 <= value < 1.0:
        raise SensipruneError(f"target max_drop must be in [0, 1), got {value}")
    if goal == "speedup":
        if not 1.0 < value < math.inf:
            raise SensipruneError(
                f"target speedup is how many times faster to run, above 1 (such as 2.0), "
                f"got {value}"
            )
    elif goal != "max_drop" and not 0.0 < value < 1.0:
        raise SensipruneError(
            f"target {goal} is the fraction of the dense model to keep, in (0, 1), got {value}"
        )
    return float(value)


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
    round_to: int,
    path: str = "cubic",
    sizes: Mapping[str, int] | None = None,
) -> None:
    """Step ``step`` of the ``path`` (a schedule) to ``budget``: masks name the total
    sparsity of a layer; a structured step names the share of the channels still there,
    from the whole counts of each family's ``sizes`` where there are several steps (only the
    last rounded to ``round_to``: see :func:`~sensiprune.selection.schedule.structured_step`)."""
    if structured:
        widths = sizes if steps > 1 else None
        now, round_to = structured_step(budget, step, steps, path, widths, round_to)
    else:
        now = sparsity_at(budget, step, steps, path)
    now = {k: v for k, v in now.items() if v > 0}
    if now:
        prune(model, now, criterion=criterion, data=data, loss_fn=loss_fn, structured=structured,
              example_inputs=inputs if structured else None, round_to=round_to)  # fmt: skip


def _reclaimed_size(
    model: nn.Module,
    goal: str,
    criterion: str,
    train: Iterable[Batch],
    loss_fn: LossFn | None,
    inputs: tuple[torch.Tensor, ...],
    budget: dict[str, float],
) -> float:
    """What a copy pruned to ``budget`` as compress prunes keeps, once the units no layer
    reads are masked: its nonzero parameters, or the bytes sp.save writes of it."""
    trial = copy.deepcopy(model)
    _prune_step(trial, budget, 1, 1, False, criterion, train, loss_fn, inputs, 1)
    mask_dead_units(trial, inputs)
    return count_parameters(trial).nonzero if goal == "params" else saved_bytes(trial)


def _trial_metric(
    model: nn.Module,
    train: Iterable[Batch],
    validation: list[Batch],
    candidate: SpeedCandidate,
    *,
    criterion: str,
    loss_fn: LossFn | None,
    metric: Metric | None,
    inputs: tuple[torch.Tensor, ...],
    epochs: int,
    lr: float,
) -> float:
    """The validation metric of a copy pruned to ``candidate`` as compress prunes, after
    ``epochs`` of fine-tuning: how well the budget recovers, which the one-shot drop of a
    deep cut (near chance for every budget) does not tell."""
    trial = copy.deepcopy(model)
    _prune_step(trial, dict(candidate.budget), 1, 1, True, criterion, train, loss_fn, inputs,
                candidate.round_to)  # fmt: skip
    if epochs:
        finetune(trial, train, epochs, loss_fn, lr=lr, show_progress=False)
    return evaluate(trial, validation, metric)


def _most_accurate(
    candidates: list[SpeedCandidate], trial: Callable[[SpeedCandidate], float], goal: float
) -> list[SpeedCandidate]:
    """The candidates with their trial metric, the best first, the metric
    :func:`~sensiprune.speed_goal.discounted` by how far the candidate measured off ``goal``
    (the earlier of a tie: the latency table's, then the FLOPs'); a single candidate is not
    tried."""
    if len(candidates) == 1:
        return candidates
    tried = [replace(c, metric=trial(c)) for c in candidates]
    best = max(tried, key=lambda c: discounted(c.metric, c.speedup, goal))
    return [best, *(c for c in tried if c is not best)]


def _why_chosen(candidates: list[SpeedCandidate], epochs: int) -> str:
    missed = f"no allocation {_WITHIN} while calibrating"
    within = all(c.within for c in candidates)
    if len(candidates) == 1:
        return f"the only allocation {_WITHIN}" if within else f"{missed}: the nearest"
    trial = (
        f"the most accurate on the validation data, pruned and fine-tuned {epochs} "
        f"epoch{'s' * (epochs != 1)}"
    )
    if within:
        return f"{trial}, of the {len(candidates)} allocations {_WITHIN}"
    return (
        f"{missed}: {trial}, of {len(candidates)} cost models' nearest budgets, timed "
        f"again, less 1% of its metric for each 1% it measured more than {NEAR_EQUAL:.0%} "
        "off the goal"
    )


def _validation_drop(
    dense: tuple[torch.Tensor, torch.Tensor],
    model: nn.Module,
    validation: list[Batch],
    metric: Metric | None,
) -> tuple[float, float, float]:
    """The fine-tuned ``model``'s validation metric, its drop from the dense model's
    per-sample ``dense`` units, and the drop's one-sided 95% upper end (paired per sample).
    The measured drop decides against the bound, not its upper end: fine-tuning alone moves
    a few samples either way, so on a few hundred samples the upper end of a 2-point bound
    is crossed by models that lost nothing (the LSTM of benchmarks/compress_speed.py stopped
    dense so); the upper end is reported."""
    sums, counts = dense
    units = metric_units(model, validation, metric)[0]
    drops, total = sums - units, counts.sum()
    drop = float(drops.sum() / total)
    return float(units.sum() / total), drop, drop + BOUND_ERRORS * paired_error(drops, counts)


def _put_back(model: nn.Module, saved: nn.Module) -> None:
    """``model``, in place, as ``saved`` (a deep copy of it before a step): a structured
    step changed its modules' shapes, so their state is taken whole, and the submodules
    become the copy's (a reference to one taken before the step, or a handle of a hook on
    one, no longer reaches the model)."""
    model.__dict__.clear()
    model.__dict__.update(saved.__dict__)


def _sparsest_within_bound(
    checked: CrossValidation, bound: float, validate: Callable[..., CrossValidation]
) -> CrossValidation:
    """The budget for a drop goal: the sparsity the curves allow for ``bound``, then less,
    until the held-out folds, pooled, drop no more than ``bound`` with one-sided 95%
    confidence (``BOUND_ERRORS`` standard errors: the folds' or, where larger, that of the
    paired per-sample drops, which sees samples change sides where every fold nets out to
    no drop). Every fold and the final
    budget are allocated to one overall sparsity, so the folds judge the sparsity the final
    budget prunes (a budget allocated to the bound on each fold's own curves reaches another
    sparsity than the final one; the benchmark found the test drop over the bound in 7 of 12
    cases so). Each try reuses the folds' curves; only the prunes are redone."""
    table = checked.table
    sparsity = table.overall_sparsity(checked.budget)
    for _ in range(BOUND_TRIES):
        if sparsity <= 0:
            break
        checked = validate(target_sparsity=sparsity, table=table, fold_tables=checked.fold_tables)
        if _upper_drop(checked) <= bound:
            break
        sparsity = max(0.0, 1.0 - (1.0 - sparsity) * BOUND_STEP)
    return checked


def _upper_drop(checked: CrossValidation) -> float:
    """The drop the held-out folds allow with one-sided 95% confidence."""
    return checked.observed_mean + BOUND_ERRORS * checked.observed_error


def _result(
    goal: dict[str, float],
    stopped_short: bool,
    method: str,
    criterion: str,
    checked: CrossValidation,
    dense_metric: float,
    held_out: list[Batch],
    model: nn.Module,
    metric: Metric | None,
    history: list[CompressStep],
    timing: tuple[float, float, float],
    lut: LatencyModel | None,
    one_shot: float | None,
    candidates: list[SpeedCandidate],
    kept: tuple[float, float, float],  # parameters (nonzero), FLOPs, saved bytes
) -> CompressResult:
    return CompressResult(
        goal=goal,
        method=method,
        stopped_short=stopped_short,
        criterion=criterion,
        budget=dict(checked.budget),
        predicted_drop=checked.budget.predicted_drop,
        cross_validated_drop=checked.observed_mean,
        cross_validated_std=checked.observed_std,
        dense_metric=dense_metric,
        metric=evaluate(model, held_out, metric),
        params_kept=kept[0],
        flops_kept=kept[1],
        bytes_kept=kept[2],
        dense_latency=timing[0],
        latency=timing[1],
        speedup=timing[2],
        steps=tuple(history),
        table=checked.table,
        latency_table=lut,
        one_shot_metric=one_shot,
        allocated_to=candidates[0].allocated_to if candidates else None,
        speed_candidates=tuple(candidates),
    )
