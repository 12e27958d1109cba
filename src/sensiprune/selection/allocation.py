"""Per-layer budgets allocated from measured sensitivity curves: the sparsity of each layer
that reaches a target (sparsity or FLOPs) for the smallest predicted drop, or the most
sparsity within a largest drop."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from sensiprune.errors import SensipruneError
from sensiprune.selection import unstructured as selection

if TYPE_CHECKING:
    from sensiprune.analysis.sensitivity import SensitivityTable

log = logging.getLogger(__name__)


class LatencyTable(Protocol):
    """Seconds of the model as each family's sparsity changes (see analysis.latency)."""

    total: float

    def kept(self, levels: Mapping[str, float]) -> float: ...


class Budget(dict):
    """``{parameter name: sparsity}`` for ``prune``, with the drop the curves predict for it;
    ``clamped`` is the highest measured sparsity where most weights sit at it (the curves
    gave the allocation no room), else None."""

    predicted_drop: float = 0.0
    clamped: float | None = None


def warn_if_clamped(budget: Budget) -> None:
    if budget.clamped is not None:
        log.warning(
            "most weights sit in layers allocated the highest measured sparsity (%.1f%%): the "
            "curves give the allocation no room; measure sparser points for a better budget",
            100 * budget.clamped,
        )


def allocate(
    table: SensitivityTable,
    target_sparsity: float | None = None,
    max_drop: float | None = None,
    min_density: float = 0.01,
    max_sparsity: float | None = None,
    target_flops: float | None = None,
    target_latency: float | None = None,
    latency: LatencyTable | None = None,
    uniform: float | None = None,
) -> Budget:
    """Per-layer sparsities from measured curves, minimising the summed predicted drop.

    Give one target: ``target_sparsity`` (a fraction of all the table's weights or channels,
    met exactly), ``target_flops`` (the fraction of the model's FLOPs to keep, for tables
    measured with ``structured=True``), ``target_latency`` (the fraction of the measured
    ``latency`` to keep, see :func:`sensiprune.analysis.latency.measure_latency`), or
    ``max_drop`` (prune as much as the curves predict costs at most this much of the metric).
    Greedy on the marginal predicted drop per unit removed (per weight, FLOP or second), in
    1% steps of a layer. ``uniform`` is no allocation: this sparsity in every layer, with the
    drop the curves predict for it (where every layer's fixed cost counts, as a CPU's time
    per operator does, cutting every layer is what runs fastest).
    """
    goals = (target_sparsity, max_drop, target_flops, target_latency, uniform)
    if sum(t is not None for t in goals) != 1:
        raise SensipruneError(
            "give allocate exactly one of target_sparsity, target_flops, target_latency, "
            "max_drop or uniform"
        )
    ceiling = min(max(table.sparsities), 1.0 - min_density)
    if max_sparsity is not None:
        ceiling = min(ceiling, max_sparsity)
    limits = [math.floor(ceiling * n) for n in table.sizes]
    if uniform is not None:
        selection.check_sparsity(uniform)
        counts = [min(round(uniform * n), cap) for n, cap in zip(table.sizes, limits)]
        return _budget(table, counts, limits, ceiling)
    if target_flops is not None or target_latency is not None:
        gain, wanted = _cost_target(table, limits, target_flops, target_latency, latency)
    elif target_sparsity is not None:
        selection.check_sparsity(target_sparsity)
        wanted = round(target_sparsity * sum(table.sizes))
        if wanted > sum(limits):
            raise SensipruneError(
                f"target_sparsity {target_sparsity} cannot be met with every layer at most "
                f"{ceiling:.0%} sparse (measured up to {max(table.sparsities):.0%}): measure "
                "higher sparsities or lower the target"
            )
        gain = _count_gain
    elif not (isinstance(max_drop, (int, float)) and max_drop >= 0):
        raise SensipruneError(f"max_drop must be a non-negative number, got {max_drop!r}")
    else:
        gain, wanted = _count_gain, sum(limits)
    counts = [0] * len(table.layers)  # units pruned per layer: integers, no float drift
    reached, predicted = 0.0, 0.0
    while reached < wanted - 1e-9:
        step = _cheapest_step(table, counts, limits, gain)
        if step is None:
            break
        layer, count, extra = step
        if max_drop is not None and predicted + extra > max_drop:
            break
        while count > 1 and reached + gain(table, counts, layer, count - 1) >= wanted - 1e-9:
            count -= 1  # the last step stops where the target is met
        reached += gain(table, counts, layer, count)
        counts[layer] += count
        predicted = _predicted(table, counts)
    return _budget(table, counts, limits, ceiling)


def _budget(
    table: SensitivityTable, counts: list[int], limits: list[int], ceiling: float
) -> Budget:
    budget = Budget({name: k / n for name, k, n in zip(table.layers, counts, table.sizes) if k > 0})
    budget.predicted_drop = _predicted(table, counts)
    at_limit = sum(n for k, n, cap in zip(counts, table.sizes, limits) if k == cap)
    budget.clamped = ceiling if at_limit > 0.5 * sum(table.sizes) else None
    return budget


def _count_gain(table: SensitivityTable, counts: list[int], layer: int, count: int) -> float:
    return float(count)


Gain = Callable[["SensitivityTable", list[int], int, int], float]


def _cost_target(
    table: SensitivityTable,
    limits: list[int],
    flops: float | None,
    seconds: float | None,
    latency: LatencyTable | None,
) -> tuple[Gain, float]:
    """What a step saves, and how much must go: FLOPs under the table's FLOP model, or
    seconds under a measured latency table; the cost of the model as a function of the
    sparsity of each of the table's families."""
    if flops is not None:
        name, target, unit = "target_flops", flops, "FLOPs"
        if table.flop_model is None:
            raise SensipruneError(
                "target_flops needs a FLOP model: measure with sensitivity(..., "
                "structured=True, example_inputs=x)"
            )
        total, kept = table.flop_model.total, table.flop_model.kept
    else:
        name, target, unit = "target_latency", seconds, "measured time"
        if latency is None:
            raise SensipruneError(
                "target_latency needs a latency table: measure one with "
                "sensiprune.analysis.latency.measure_latency(model, table, example_inputs)"
            )
        total = latency.total

        def kept(levels: list[float]) -> float:
            return latency.kept({n: v for n, v in zip(table.layers, levels) if v > 0})

    if isinstance(target, bool) or not 0 < float(target) <= 1:
        raise SensipruneError(f"{name} must be in (0, 1], got {target!r}")

    def cost(counts: list[int]) -> float:
        return kept([k / n for k, n in zip(counts, table.sizes)])

    def gain(table: SensitivityTable, counts: list[int], layer: int, count: int) -> float:
        after = list(counts)
        after[layer] += count
        return cost(counts) - cost(after)

    wanted = (1.0 - target) * total
    if total - cost(limits) < wanted:
        raise SensipruneError(
            f"{name} {target} cannot be met: every measured family at its limit still keeps "
            f"{cost(limits) / total:.0%} of the {unit}"
        )
    return gain, wanted


def _predicted(table: SensitivityTable, counts: list[int]) -> float:
    return sum(table.drop(i, k / n) for i, (k, n) in enumerate(zip(counts, table.sizes)))


def _cheapest_step(
    table: SensitivityTable, counts: list[int], limits: list[int], gain: Gain
) -> tuple[int, int, float] | None:
    """The layer whose next 1% costs the least predicted drop per unit of the target
    (a weight, a FLOP, a second): (layer, units, drop). Where the next 1% saves nothing, the
    step doubles until it does: a measured latency table is flat between some of its points
    (time falls at whole SIMD vectors), and a greedy of 1% steps would never cross a flat
    stretch to the saving behind it (a MobileNetV2's budget stalled at 1.6x so, its table
    promising 3.4x)."""
    best, best_cost = None, math.inf
    for i, n in enumerate(table.sizes):
        room = limits[i] - counts[i]
        count = min(max(1, round(0.01 * n)), room)
        if count <= 0:
            continue
        gained = gain(table, counts, i, count)
        while gained <= 0 and count < room:
            count = min(2 * count, room)
            gained = gain(table, counts, i, count)
        extra = table.drop(i, (counts[i] + count) / n) - table.drop(i, counts[i] / n)
        cost = extra / gained if gained > 0 else math.inf
        if cost < best_cost:
            best, best_cost = (i, count, extra), cost
    return best
