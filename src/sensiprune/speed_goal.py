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
the goal (two tries alone, each a few percent off, can point anywhere). No try is taken at
its word: on a shared 2-core machine the speed-up of the same pair of models drifts by 10-20%
over seconds, in spells (one LSTM pair: 1.9-2.7x within 90 s), so the first try that lands
near the goal is the one that erred towards it, and timing it again right away, inside the
same spell, errs the same way. So the search runs through at least ``MIN_TRIES`` tries, at
different moments, and each budget's timings are pooled with the fit through them. A budget
within the tolerance is then filled up to whole SIMD vectors where that measures as fast: the
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
MIN_TRIES = 3  # tries the fit passes through before it may end the search
FIT_WEIGHT = 1.0  # the fit through the tries counts as this many timings of a try's budget
FIT_TRIES = 4  # the tries nearest the goal the power law is fitted through
FALLBACK_RETIMED, RETIMINGS = 3, 2  # no budget within: the nearest tries, timed this often again
# speed-ups this close to the goal are not told apart (one pair of models drifts 10-20% in
# spells): the trial's metric decides alone; past it, each 1% further off costs 1% of it
NEAR_EQUAL = 0.10
# the power law's prior: speed-up falls as 1/kept, held as strongly as two tries 10% apart
PRIOR_SLOPE, PRIOR_WEIGHT = -1.0, 2 * (math.log(1.1) / 2) ** 2
FLATTEST = -0.25  # a fitted slope flatter than this is noise: the next try takes the prior's
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
    speedup: float  # against the dense model, timed in alternation: its budget's timings
    # pooled with the fit through the tries (filled: that times the filled cut's, timed
    # against the calibrated)
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
    """One budget per cost model that measured within the tolerance of ``goal`` (its try
    nearest the goal), in search order (latency table, FLOPs, uniform cuts), each
    :func:`filled` with ``fill``; where none did, each cost model's nearest, timed again
    (:func:`fallback`).

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
    tried: list[SpeedCandidate] = []  # every try
    best: list[SpeedCandidate] = []  # each cost model's try nearest the goal
    start = 1.0 / goal
    for key, (target, lowest, from_flops) in costs.items():
        if best:
            nearest = min(best, key=lambda t: _miss(t.speedup, goal))
            levels = [nearest.budget.get(layer, 0.0) for layer in table.layers]
            start = from_flops(flops.kept(levels) / flops.total * nearest.speedup / goal)
        tries = [
            SpeedCandidate(ALLOCATED_TO[key], target(keep), dict(budget), reached,
                           _within(reached, goal), round_to=multiple)
            for keep, reached, budget in _search(model, table, goal, inputs, round_to, start,
                                                 lowest, target, key)
        ]  # fmt: skip
        tried += tries
        best += [min(tries, key=lambda t: _miss(t.speedup, goal))] if tries else []
    if not tried:
        raise SensipruneError(
            f"target speedup {goal:g}: no budget could be allocated for it from the curves "
            "(latency table, FLOPs or uniform cuts); lower the goal, or measure the curves "
            "deeper (sparsities=...)"
        )
    within = [t for t in best if t.within]
    if within:
        return [filled(model, t, goal, inputs) if fill else t for t in within]
    return fallback(model, tried, goal, inputs)


def fallback(
    model: nn.Module, tried: list[SpeedCandidate], goal: float, inputs: tuple[torch.Tensor, ...]
) -> list[SpeedCandidate]:
    """Where no budget measured within the tolerance: each cost model's nearest, the
    nearest of all first, for ``compress``'s accuracy trial (which weighs their speed-ups by
    :func:`discounted`).

    The ``FALLBACK_RETIMED`` nearest budgets, and each cost model's nearest, are timed
    ``RETIMINGS`` times afresh, in turn, and chosen again on those: a try chosen for its
    timing is the one whose timing erred towards the goal (a MobileNetV2 cut chosen at 2.90x
    measured 2.35-2.46x), and timings taken after the choice do not err its way. Speed
    alone does not choose: the nearest may be the one whose accuracy collapsed
    (benchmarks/results/compress_speed.md, a MobileNetV2 at a 3x goal out of reach: uniform
    cuts measured 2.26x at 0.39 mean test accuracy after fine-tuning, FLOP budgets 1.91x at
    0.92). Nearest is as many times faster as slower: a budget past the goal keeps less, and
    past it by 20% it costs accuracy a budget 5% short would not have."""
    distinct: dict[tuple[tuple[str, float], ...], SpeedCandidate] = {}
    for t in _nearest_first(tried, goal):  # a budget tried twice is the same model: timed once
        distinct.setdefault(tuple(sorted(t.budget.items())), t)
    nearest = list(distinct.values())[:FALLBACK_RETIMED]
    for t in distinct.values():
        if all(n.allocated_to != t.allocated_to for n in nearest):
            nearest.append(t)  # that cost model's nearest
    cuts = [_cut_copy(model, t.budget, inputs, t.round_to) for t in nearest]
    timings: list[list[float]] = [[] for _ in cuts]
    for _ in range(RETIMINGS):
        for cut, times in zip(cuts, timings, strict=True):
            times.append(measured_speedup(model, cut, inputs, timings=1))
    medians = [statistics.median(times) for times in timings]
    retimed = [
        replace(t, speedup=median, within=_within(median, goal))
        for t, median in zip(nearest, medians, strict=True)
    ]
    each: dict[str, SpeedCandidate] = {}
    for t in _nearest_first(retimed, goal):
        each.setdefault(t.allocated_to, t)
    return list(each.values())


def discounted(metric: float, speedup: float, goal: float) -> float:
    """A trial's ``metric`` as the choice between speed candidates weighs it: whole within
    ``NEAR_EQUAL`` of the goal, where timings do not tell speed-ups apart, and less 1% of its
    size for each 1% further off, either way. A budget that comes nearer a goal out of reach
    only by collapsing is not kept for its speed (benchmarks/results/compress_speed.md, a
    MobileNetV2 at a 3x goal: uniform cuts at 2.90x, alone within 10% of the nearest, were
    kept and ended at 0.41 test accuracy), and one 21% past the goal does not beat one 5%
    short at equal accuracy."""
    excess = max(0.0, _miss(speedup, goal) - math.log1p(NEAR_EQUAL))
    return metric - abs(metric) * (1.0 - math.exp(-excess))


def _nearest_first(tried: list[SpeedCandidate], goal: float) -> list[SpeedCandidate]:
    """``tried``, nearest the goal first (the earlier of a tie)."""
    return sorted(tried, key=lambda t: _miss(t.speedup, goal))


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
    through the tries so far puts the goal. A try is timed once and its speed-up is
    :func:`pooled`, not its own timing: the search ends once ``MIN_TRIES`` tries or more put
    the last one within the tolerance, so a try that erred onto the goal cannot end it."""
    tried: list[tuple[float, float, Mapping[str, float]]] = []
    keep = min(1.0, max(start, lowest * FLOOR_MARGIN))
    for _ in range(CALIBRATION_TRIES):
        try:
            budget = allocate(table, **target(keep))
        except SensipruneError:
            break  # the correction asked for more than the table can give
        # the same channels as a try before are timed again: one more timing to average
        trial = _cut_copy(model, budget, inputs, round_to)
        reached = measured_speedup(model, trial, inputs, timings=1)
        log.info("speed goal %gx, %s keeping %.4f: measured %.2fx", goal, ALLOCATED_TO[key],
                 keep, reached)  # fmt: skip
        tried.append((keep, reached, budget))
        if reached < goal and keep <= lowest * FLOOR_MARGIN:
            break  # as deep as the table goes and still too slow
        if len(tried) >= MIN_TRIES and _within(pooled(tried, goal)[-1], goal):
            break  # calibrated
        keep = min(1.0, max(next_keep([(k, r) for k, r, _ in tried], goal), lowest * FLOOR_MARGIN))
    return [(k, r, budget) for (k, _, budget), r in zip(tried, pooled(tried, goal), strict=True)]


def _within(reached: float, goal: float) -> bool:
    return abs(reached / goal - 1.0) <= SPEED_TOLERANCE


def _miss(reached: float, goal: float) -> float:
    """How far ``reached`` is from ``goal``, as many times faster as slower."""
    return abs(math.log(reached / goal))


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
    reaches ``goal``; a fitted slope flatter than ``FLATTEST`` is noise and would send the
    next try as far as a flat line reaches, so the prior's is taken instead."""
    x0, y0, slope = _power_law(_near(tried, goal))
    slope = PRIOR_SLOPE if slope > FLATTEST else slope
    return math.exp(x0 + (math.log(goal) - y0) / slope)


def pooled(tried: list[tuple[float, float, Mapping[str, float]]], goal: float) -> list[float]:
    """Each try's speed-up (of ``tried``: fraction kept, timing, budget): the timings of its
    budget (the same channels timed again are the same model) pooled in log with the power
    law fitted through the tries nearest the goal, which counts as ``FIT_WEIGHT`` timings; a
    try outside the fit has its budget's timings alone. Each timing errs by several percent,
    the fit through the tries near the goal by less, but the fit is smooth where time steps
    with whole channels, which the budget's own timings are not."""
    if not tried:
        return []
    points = [(keep, reached) for keep, reached, _ in tried]
    near = _near(points, goal)
    x0, y0, slope = _power_law(near)
    speedups = []
    for keep, reached, budget in tried:
        own = [math.log(r) for _, r, other in tried if dict(other) == dict(budget)]
        weight = FIT_WEIGHT if (keep, reached) in near else 0.0
        line = y0 + slope * (math.log(keep) - x0)
        speedups.append(math.exp((sum(own) + weight * line) / (len(own) + weight)))
    return speedups


def _near(tried: list[tuple[float, float]], goal: float) -> list[tuple[float, float]]:
    """The ``FIT_TRIES`` tries nearest the goal."""
    return sorted(tried, key=lambda t: _miss(t[1], goal))[:FIT_TRIES]


def _power_law(tried: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(mean log fraction, mean log speed-up, slope) of the least-squares line of log
    speed-up against log fraction kept through ``tried``, the slope drawn towards
    ``PRIOR_SLOPE``: over a short range the speed-up is close to a power law of the fraction
    kept, and tries close together, each timed with a few percent of error, say little about
    its slope alone."""
    xs = [math.log(keep) for keep, _ in tried]
    ys = [math.log(reached) for _, reached in tried]
    x0, y0 = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - x0) ** 2 for x in xs)
    along = sum((x - x0) * (y - y0) for x, y in zip(xs, ys, strict=True))
    return x0, y0, (along + PRIOR_WEIGHT * PRIOR_SLOPE) / (spread + PRIOR_WEIGHT)


def measured_speedup(
    dense: nn.Module, pruned: nn.Module, inputs: tuple[torch.Tensor, ...], timings: int = 3
) -> float:
    """The median of ``timings`` alternated measurements: on a shared machine the same pair
    of models can move by tens of percent from one measurement to the next."""
    return statistics.median(speedup(dense, pruned, *inputs) for _ in range(timings))
