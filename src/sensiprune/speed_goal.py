"""A speed goal in measured time: the channel budgets that, once pruned, measure the goal on
this device, one for each way of allocating them (``sp.compress`` keeps the one the validation
data prefers).

Three cost models allocate the channels from the sensitivity curves: the latency table (what
each family saves alone, timed on the whole model), the FLOPs (which multiply the dimensions
of neighbouring layers that shrink together exactly) and one sparsity in every family. None
predicts time exactly: cutting neighbouring families together saves less than the table adds
up, channel counts move in whole steps, and every operator's fixed time stays. So each cost
model is calibrated: a copy is pruned to its budget, timed against the dense model, and the
fraction corrected until the speed-up is within ``SPEED_TOLERANCE`` of the goal. Each try
is timed once and the next fraction read off a power law fitted through the tries nearest
the goal (two tries alone, each a few percent off, can point anywhere). A try that lands
within the tolerance is not taken at its word: on a shared 2-core machine the same pair of
models measures 5-10% apart from one timing to the next, so the first try that lands there is
the one that erred towards the goal (a try measured 2.11x that measured 1.78-1.82x three
times right after); it is timed twice more and holds if the median does. A budget within
the tolerance is then filled up to whole SIMD vectors where that measures as fast: the
channels up to the next multiple of the vector width cost about no time.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from sensiprune.analysis.latency import LatencyModel
from sensiprune.analysis.sensitivity import SensitivityTable
from sensiprune.errors import SensipruneError
from sensiprune.measure import speedup
from sensiprune.pruning import prune
from sensiprune.selection.allocation import allocate
from sensiprune.selection.groups import channel_multiple, vector_width

log = logging.getLogger(__name__)
SPEED_TOLERANCE = 0.02  # how close a calibrated prune must measure to the goal
CALIBRATION_TRIES = 6  # pruned copies timed per cost model, at most
CONFIRMATIONS = 2  # more timings of a try that lands within the tolerance: the median holds
FIT_TRIES = 4  # the tries nearest the goal the power law is fitted through
# the power law's prior: speed-up falls as 1/kept, held as strongly as two tries 10% apart
PRIOR_SLOPE, PRIOR_WEIGHT = -1.0, 2 * (math.log(1.1) / 2) ** 2
FLATTEST = -0.25  # a fitted slope flatter than this is noise: the prior's is taken instead
FLOOR_MARGIN = 1.02  # above the deepest cut's predicted cost: allocation moves in 1% steps
# a goal this many times past the latency table's deepest prediction is refused; nearer ones
# are searched (the table adds each family's saving alone: it errs by tens of percent)
REACH_MARGIN = 1.5
# a budget filled up to whole vectors is kept if it measures at most this much slower than
# as calibrated (the noise of one measurement), and within SPEED_TOLERANCE of the goal
FILL_SLACK = 0.01
# allocate's target of each cost model -> what a budget of it is allocated to, in search order
ALLOCATED_TO = {"latency": "measured latency", "target_flops": "FLOPs", "uniform": "uniform cuts"}


@dataclass(frozen=True)
class SpeedCandidate:
    """A budget calibrated to a speed goal, and how it measured."""

    allocated_to: str  # one of ALLOCATED_TO's values
    target: dict[str, object]  # allocate's keyword arguments, the table aside
    budget: dict[str, float]  # what allocate gave for it: sparsity per family
    speedup: float  # against the dense model, timed in alternation (within: median of 3;
    # filled: the calibrated speed-up times the filled cut's, timed against the calibrated)
    within: bool  # within SPEED_TOLERANCE of the goal
    metric: float | None = None  # on the validation data after a trial prune, where compared
    round_to: int = 1  # the channel multiple it was pruned and timed with


def speed_candidates(
    model: nn.Module,
    table: SensitivityTable,
    lut: LatencyModel,
    goal: float,
    inputs: tuple[torch.Tensor, ...],
    round_to: int | str,
    fill: bool = False,
) -> list[SpeedCandidate]:
    """One budget per cost model that measured within the tolerance of ``goal``, in search
    order (latency table, FLOPs, uniform cuts), each :func:`filled` with ``fill``; where none
    did, the one nearest: the slowest that meets the goal (it keeps the most), else the
    fastest.

    Each search starts from the FLOPs of the nearest budget so far, scaled by its miss. On a
    model of many small families the latency table can promise a speed-up none of its budgets
    reaches; the FLOP and the latency budgets both leave alone the families whose cuts save
    little alone, where uniform cuts do not."""
    deepest = [max(table.sparsities)] * len(table.layers)
    floor = lut.kept(dict(zip(table.layers, deepest)))
    if floor > 0 and lut.total / floor * REACH_MARGIN < goal:  # floor <= 0: no limit
        raise SensipruneError(
            f"target speedup {goal:g} is out of reach on {lut.device}: with every family "
            f"of channels cut as far as its curve was measured, the latency table predicts "
            f"at most {lut.total / floor:.2f}x at this batch size; lower the "
            "goal, or time a larger batch (example_inputs)"
        )
    flops = table.flop_model
    # (allocate's target for a fraction kept, the least fraction it can allocate, that
    # fraction for a fraction of the FLOPs)
    costs = {
        "latency": (functools.partial(_target, "target_latency", {"latency": lut}),
                    floor / lut.total, None),
        "target_flops": (functools.partial(_target, "target_flops", {}),
                         flops.kept(deepest) / flops.total, float),
        "uniform": (_uniform_target, 1.0 - max(table.sparsities), math.sqrt),
    }  # fmt: skip
    multiple = channel_multiple(model, round_to)
    tried: list[SpeedCandidate] = []
    start, nearest = 1.0 / goal, None  # nearest: (speed-up, budget) closest to the goal
    for key, (target, lowest, from_flops) in costs.items():
        if nearest is not None:
            levels = [nearest[1].get(layer, 0.0) for layer in table.layers]
            start = from_flops(flops.kept(levels) / flops.total * nearest[0] / goal)
        for keep, reached, budget in _search(model, table, goal, inputs, round_to, start,
                                             lowest, target, key):  # fmt: skip
            tried.append(SpeedCandidate(ALLOCATED_TO[key], target(keep), dict(budget), reached,
                                        _within(reached, goal), round_to=multiple))  # fmt: skip
            if nearest is None or abs(math.log(reached / goal)) < abs(math.log(nearest[0] / goal)):
                nearest = (reached, budget)
    if not tried:
        raise SensipruneError(
            f"target speedup {goal:g}: no budget could be allocated for it from the curves "
            "(latency table, FLOPs or uniform cuts); lower the goal, or measure the curves "
            "deeper (sparsities=...)"
        )
    within = [t for t in tried if t.within]
    if within:
        return [filled(model, t, goal, inputs) if fill else t for t in within]
    meeting = [t for t in tried if t.speedup >= goal]
    nearest_one = (
        min(meeting, key=lambda t: t.speedup) if meeting else max(tried, key=lambda t: t.speedup)
    )
    return [nearest_one]


def filled(
    model: nn.Module, candidate: SpeedCandidate, goal: float, inputs: tuple[torch.Tensor, ...]
) -> SpeedCandidate:
    """``candidate`` with every family's kept channels rounded up to whole SIMD vectors
    (:func:`~sensiprune.selection.groups.vector_width`), where that measures no slower than
    the candidate (``FILL_SLACK``) and within the tolerance of ``goal``. A layer's
    time steps at multiples of the vector width (on an AVX-512 CPU a convolution keeping 17 to
    32 channels takes the time of 32), so the channels up to the next multiple mostly cost no
    time and keep accuracy; where a step is crossed, the measurement says so and the
    candidate stays as calibrated. The filled copy is timed against the calibrated one, not
    the dense model: two models this alike run alike through a noisy machine's slow spells,
    where a timing against the dense model errs by more than the slack."""
    vector = vector_width(model)
    if vector <= candidate.round_to or not candidate.budget:
        return candidate
    calibrated = _cut_copy(model, candidate.budget, inputs, candidate.round_to)
    whole = _cut_copy(model, candidate.budget, inputs, vector)
    ratio = measured_speedup(calibrated, whole, inputs)
    reached = candidate.speedup * ratio
    log.info("speed goal %gx, %s filled to multiples of %d: %.3f times the calibrated speed",
             goal, candidate.allocated_to, vector, ratio)  # fmt: skip
    if ratio < 1.0 - FILL_SLACK or abs(reached / goal - 1.0) > SPEED_TOLERANCE:
        return candidate
    return replace(candidate, speedup=reached, round_to=vector)


def _target(name: str, extra: dict[str, object], keep: float) -> dict[str, object]:
    return {name: keep, **extra}


def _uniform_target(keep: float) -> dict[str, object]:
    return {"uniform": 1.0 - keep}


def _search(
    model: nn.Module,
    table: SensitivityTable,
    goal: float,
    inputs: tuple[torch.Tensor, ...],
    round_to: int | str,
    start: float,
    lowest: float,
    target: Callable[[float], dict[str, object]],
    key: str,
) -> list[tuple[float, float, Mapping[str, float]]]:
    """(fraction kept, speed-up, budget) of each try, from ``start``, never below ``lowest``
    (every family as deep as measured), each next fraction where the power law fitted
    through the tries so far puts the goal. A try is timed once; one that lands within the
    tolerance is timed ``CONFIRMATIONS`` more times and its speed-up is the median, and the
    search ends where that holds."""
    tried: list[tuple[float, float, Mapping[str, float]]] = []
    keep = min(1.0, max(start, lowest * FLOOR_MARGIN))
    for _ in range(CALIBRATION_TRIES):
        try:
            budget = allocate(table, **target(keep))
        except SensipruneError:
            break  # the correction asked for more than the table can give
        if any(dict(budget) == dict(timed) for *_, timed in tried):
            break  # the same channels as a try before: timing them again tells little
        trial = _cut_copy(model, budget, inputs, round_to)
        reached = measured_speedup(model, trial, inputs, timings=1)
        if _within(reached, goal):
            again = [measured_speedup(model, trial, inputs, 1) for _ in range(CONFIRMATIONS)]
            reached = statistics.median([reached, *again])
        log.info("speed goal %gx, %s keeping %.4f: measured %.2fx", goal, ALLOCATED_TO[key],
                 keep, reached)  # fmt: skip
        tried.append((keep, reached, budget))
        if _within(reached, goal) or (reached < goal and keep <= lowest * FLOOR_MARGIN):
            break  # calibrated, or as deep as the table goes and still too slow
        points = [(k, r) for k, r, _ in tried]
        keep = min(1.0, max(next_keep(points, goal), lowest * FLOOR_MARGIN))
    return tried


def _within(reached: float, goal: float) -> bool:
    return abs(reached / goal - 1.0) <= SPEED_TOLERANCE


def _cut_copy(
    model: nn.Module, budget: Mapping[str, float], inputs: tuple[torch.Tensor, ...],
    round_to: int | str,
) -> nn.Module:  # fmt: skip
    """A copy of ``model`` cut to ``budget`` to be timed: channel counts are all that time
    depends on, so the cheapest scores (magnitude) choose the channels."""
    trial = copy.deepcopy(model)
    if budget:
        prune(trial, dict(budget), criterion="magnitude", structured=True,
              example_inputs=inputs, round_to=round_to)  # fmt: skip
    return trial


def next_keep(tried: list[tuple[float, float]], goal: float) -> float:
    """The fraction kept where the power law fitted through ``tried`` (fraction, speed-up)
    reaches ``goal``."""
    intercept, slope = _power_law(tried, goal)
    return math.exp((math.log(goal) - intercept) / slope)


def _power_law(tried: list[tuple[float, float]], goal: float) -> tuple[float, float]:
    """(intercept, slope) of log speed-up against log fraction kept, least squares through
    the ``FIT_TRIES`` tries nearest the goal, the slope drawn towards ``PRIOR_SLOPE``: over a
    short range the speed-up is close to a power law of the fraction kept, and tries close
    together, each timed with a few percent of error, say little about its slope alone."""
    near = sorted(tried, key=lambda t: abs(math.log(t[1] / goal)))[:FIT_TRIES]
    xs = [math.log(keep) for keep, _ in near]
    ys = [math.log(reached) for _, reached in near]
    x0, y0 = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - x0) ** 2 for x in xs)
    along = sum((x - x0) * (y - y0) for x, y in zip(xs, ys, strict=True))
    slope = (along + PRIOR_WEIGHT * PRIOR_SLOPE) / (spread + PRIOR_WEIGHT)
    if slope > FLATTEST:  # would send the next try as far as a flat line reaches
        slope = PRIOR_SLOPE
    return y0 - slope * x0, slope


def measured_speedup(
    dense: nn.Module, pruned: nn.Module, inputs: tuple[torch.Tensor, ...], timings: int = 3
) -> float:
    """The median of ``timings`` alternated measurements: on a shared machine the same pair
    of models can move by tens of percent from one measurement to the next."""
    return statistics.median(speedup(dense, pruned, *inputs) for _ in range(timings))
