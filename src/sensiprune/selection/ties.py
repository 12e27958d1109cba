"""The selection brought in step with the ties of the dependency graph (structure/ties.py):
every connected set of tied sides removes the same fraction, each side its own least
important groups."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch

from sensiprune.selection.unstructured import min_kept
from sensiprune.structure.channels import UnionFind
from sensiprune.structure.ties import Tie


def honor(
    numbers: Sequence[int],
    values: torch.Tensor,
    removed: Sequence[int],
    ties: Sequence[Tie],
    min_density: float,
) -> list[int]:
    """``removed`` (indices into the candidate groups, whose graph numbers are ``numbers``)
    changed so that every tie holds: each set of tied sides removes the multiple of its
    smallest common step nearest to what the selection asked of it in all, every side its
    lowest-scored groups. Sides that cannot be brought in step keep all their groups."""
    if not ties:
        return list(removed)
    index = {number: i for i, number in enumerate(numbers)}
    scores = values.tolist()
    chosen = set(removed)
    for component in _components(ties):
        steps = _steps(component)
        sides = list(component)
        tied = {index[g] for side in sides for g in side if g in index}
        asked = {side: sum(index[g] in chosen for g in side if g in index) for side in sides}
        chosen -= tied
        if steps is None:
            continue
        # the fraction of its channels the selection asked of each side, on average
        fraction = sum(asked[side] * component[side] for side in sides) / len(sides)
        per_step = steps[0] * component[sides[0]]
        open_ = [
            sorted(
                (index[g] for g in side if g in index and not math.isnan(scores[index[g]])),
                key=lambda i: (scores[i], i),
            )
            for side in sides
        ]
        most = min(
            (len(o) - min_kept(len(side), min_density)) // steps[s]
            for s, (o, side) in enumerate(zip(open_, sides))
        )
        times = max(0, min(most, round(fraction / per_step)))
        for s, order in enumerate(open_):
            chosen.update(order[: times * steps[s]])
    return sorted(chosen)


def _components(ties: Sequence[Tie]) -> list[dict[frozenset[int], Fraction | None]]:
    """The sides that ties connect, each set with every side's unit; sides that share
    groups are connected too (and then kept whole, see :func:`_units`)."""
    keys = list(dict.fromkeys(side.groups for tie in ties for side in (tie.a, tie.b)))
    number = {key: k for k, key in enumerate(keys)}
    links = UnionFind()
    links.new(len(keys))
    first_side: dict[int, int] = {}
    for key in keys:
        for group in key:
            links.union(first_side.setdefault(group, number[key]), number[key])
    for tie in ties:
        links.union(number[tie.a.groups], number[tie.b.groups])
    found: dict[int, list[Tie]] = {}
    for tie in ties:
        found.setdefault(links.find(number[tie.a.groups]), []).append(tie)
    return [_units(connected) for connected in found.values()]


def _units(ties: list[Tie]) -> dict[frozenset[int], Fraction | None]:
    """Each side's unit; None for all of them where a side comes with two units or sides
    overlap, since no step of removals keeps every tie then."""
    units: dict[frozenset[int], Fraction | None] = {}
    for tie in ties:
        for side in (tie.a, tie.b):
            known = units.setdefault(side.groups, side.unit)
            if known != side.unit:
                units[side.groups] = None
    groups = [g for key in units for g in key]
    if len(groups) != len(set(groups)):  # overlapping sides: no steps can keep them all
        return dict.fromkeys(units)
    return units


def _steps(component: dict[frozenset[int], Fraction | None]) -> list[int] | None:
    """How many groups each side removes per step: every side then loses the same fraction
    of its channels. The steps are the smallest integers whose ratios the units fix; None if
    the sides cannot be in step."""
    units = list(component.values())
    if any(unit is None or unit == 0 for unit in units):
        return None
    # removing r_i groups of side i removes r_i * unit_i: equal fractions mean r_i ~ 1/unit_i
    ratios = [1 / unit for unit in units]
    scale = math.lcm(*(r.denominator for r in ratios))
    steps = [int(r * scale) for r in ratios]
    common = math.gcd(*steps)
    return [s // common for s in steps]
