"""A speed goal in measured time: the channel budgets that, once pruned, measure the goal on
this device, one for each way of allocating them (``sp.compress`` keeps the one the validation
data prefers).

Three cost models allocate the channels from the sensitivity curves: the latency table (what
each family saves alone, timed on the whole model), the FLOPs (which multiply the dimensions
of neighbouring layers that shrink together exactly) and one sparsity in every family. None
predicts time exactly: cutting neighbouring families together saves less than the table adds
up, channel counts move in whole steps, and every operator's fixed time stays. So each cost
model is calibrated: a copy is pruned to its budget, timed against the dense model, and the
fraction corrected until the measured speed-up is within ``SPEED_TOLERANCE`` of the goal.
A budget that does is then filled up to whole SIMD vectors where that measures as fast: the
channels up to the next multiple of the vector width cost about no time.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import statistics
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from sensiprune.analysis.latency import LatencyModel
from sensiprune.analysis.sensitivity import SensitivityTable
from sensiprune.errors import SensipruneError
from sensiprune.measure import speedup
from sensiprune.pruning import prune
from sensiprune.selection.allocation import allocate
from sensiprune.selection.groups import vector_width

log = logging.getLogger(__name__)
SPEED_TOLERANCE = 0.02  # how close a calibrated prune must measure to the goal
CALIBRATION_TRIES = 6  # pruned copies timed per cost model
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
    speedup: float  # the pruned copy against the dense model, timed in alternation
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
    multiple = vector_width(model) if round_to == "auto" else int(round_to)
    tried: list[SpeedCandidate] = []
    start, nearest = 1.0 / goal, None  # nearest: (speed-up, budget) closest to the goal
    for key, (target, lowest, from_flops) in costs.items():
        if nearest is not None:
            levels = [nearest[1].get(layer, 0.0) for layer in table.layers]
            start = from_flops(flops.kept(levels) / flops.total * nearest[0] / goal)
        for keep, reached, budget in _search(model, table, goal, inputs, round_to, start,
                                             lowest, target):  # fmt: skip
            log.info("speed goal %gx, %s keeping %.4f: measured %.2fx", goal, ALLOCATED_TO[key],
                     keep, reached)  # fmt: skip
            within = abs(reached / goal - 1.0) <= SPEED_TOLERANCE
            candidate = SpeedCandidate(ALLOCATED_TO[key], target(keep), dict(budget), reached,
                                       within, round_to=multiple)  # fmt: skip
            tried.append(candidate)
            if nearest is None or abs(math.log(reached / goal)) < abs(math.log(nearest[0] / goal)):
                nearest = (reached, budget)
            if within:
                break
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
    the candidate (``FILL_SLACK``) and within the tolerance of ``goal``. A layer's time steps
    at multiples of the vector width (on an AVX-512 CPU a convolution keeping 17 to 32
    channels takes the time of 32), so the channels up to the next multiple mostly cost no
    time and keep accuracy; where a step is crossed, the measurement says so and the
    candidate stays as calibrated (filling to the edge of the tolerance would leave the goal
    to the noise of the next measurement)."""
    vector = vector_width(model)
    if vector <= candidate.round_to or not candidate.budget:
        return candidate
    reached = _pruned_speedup(model, candidate.budget, inputs, vector)
    log.info("speed goal %gx, %s filled to multiples of %d: measured %.2fx", goal,
             candidate.allocated_to, vector, reached)  # fmt: skip
    slower = reached < candidate.speedup * (1.0 - FILL_SLACK)
    if slower or abs(reached / goal - 1.0) > SPEED_TOLERANCE:
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
) -> Iterator[tuple[float, float, Mapping[str, float]]]:
    """(fraction kept, measured speed-up, budget) of each try, from ``start``, never below
    ``lowest`` (every family as deep as measured); the next fraction from the two tries that
    bracket the goal, else the two nearest it (a line in log-log), else scaled by the miss."""
    tried: list[tuple[float, float]] = []  # (keep, reached)
    timed: list[dict[str, float]] = []  # the budgets of those tries
    keep = min(1.0, max(start, lowest * FLOOR_MARGIN))
    for _ in range(CALIBRATION_TRIES):
        try:
            budget = allocate(table, **target(keep))
        except SensipruneError:
            return  # the correction asked for more than the table can give
        if dict(budget) in timed:
            return  # the same channels as a try before: timing them again tells nothing new
        timed.append(dict(budget))
        reached = _pruned_speedup(model, budget, inputs, round_to)
        yield keep, reached, budget
        tried.append((keep, reached))
        if reached < goal and keep <= lowest * FLOOR_MARGIN:
            return  # as deep as the table goes, and still too slow
        keep = min(1.0, max(next_keep(tried, goal), lowest * FLOOR_MARGIN))


def _pruned_speedup(
    model: nn.Module,
    budget: Mapping[str, float],
    inputs: tuple[torch.Tensor, ...],
    round_to: int | str,
) -> float:
    """The measured speed-up of a copy cut to ``budget``: channel counts are all that time
    depends on, so the cheapest scores (magnitude) choose the channels."""
    trial = copy.deepcopy(model)
    if budget:
        prune(trial, dict(budget), criterion="magnitude", structured=True,
              example_inputs=inputs, round_to=round_to)  # fmt: skip
    return measured_speedup(model, trial, inputs)


def next_keep(tried: list[tuple[float, float]], goal: float) -> float:
    """Speed-up against the fraction kept is close to a power law over a short range."""
    slow = [t for t in tried if t[1] < goal]
    fast = [t for t in tried if t[1] >= goal]
    if slow and fast:
        pair = [max(slow, key=lambda t: t[1]), min(fast, key=lambda t: t[1])]
    else:
        pair = sorted(tried, key=lambda t: abs(math.log(t[1] / goal)))[:2]
    if len(pair) == 2 and pair[0][0] != pair[1][0] and pair[0][1] != pair[1][1]:
        (k0, r0), (k1, r1) = pair
        slope = math.log(r1 / r0) / math.log(k1 / k0)
        if slope < 0:  # keeping less runs faster, as it should
            return k0 * math.exp(math.log(goal / r0) / slope)
    keep, reached = tried[-1]
    return keep * reached / goal


def measured_speedup(
    dense: nn.Module, pruned: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> float:
    """The median of three alternated measurements: on a shared machine the same pair of
    models can move by tens of percent from one measurement to the next."""
    return statistics.median(speedup(dense, pruned, *inputs) for _ in range(3))
