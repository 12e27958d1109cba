"""Per-layer sensitivity curves, and per-layer budgets allocated from them.

Layers differ enormously in how much pruning they tolerate. ``sensitivity`` prunes one layer at
a time to each sparsity, measures the model, and puts the layer back exactly (only that layer's
tensors are kept aside, so memory stays about 1x the model). ``allocate`` then chooses the
per-layer sparsities that reach a global target with the least predicted loss of the metric.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sensiprune import criteria
from sensiprune.apply import surgery
from sensiprune.apply.cut import zeroed
from sensiprune.criteria.scoring import score_groups, score_targets
from sensiprune.data import Batch, LossFn, as_batches, default_loss
from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_write_bytes
from sensiprune.measure import module_flops
from sensiprune.progress import progress
from sensiprune.runs import distributed
from sensiprune.selection import unstructured as selection
from sensiprune.selection.groups import candidate_groups
from sensiprune.structure.build import build
from sensiprune.structure.channels import Group
from sensiprune.targets import IgnoreSpec, Target, require_targets

Evaluate = Callable[[nn.Module], float]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlopModel:
    """FLOPs of the model as a function of the sparsity of each family of a structured table.

    A layer keeps its FLOPs times (1 - removed fraction) of every dimension of it that shrinks
    (outputs, inputs, channels, units), so a layer whose inputs and outputs both shrink loses
    FLOPs multiplicatively, as it really does.
    """

    total: float
    layers: dict[str, float]  # FLOPs of each module some family touches
    shares: tuple[dict[tuple[str, str], float], ...]  # family -> (module, role) -> fraction held

    def kept(self, sparsities: Sequence[float]) -> float:
        removed: dict[tuple[str, str], float] = {}
        for sparsity, share in zip(sparsities, self.shares):
            for key, fraction in share.items():
                removed[key] = removed.get(key, 0.0) + sparsity * fraction
        factor: dict[str, float] = {}
        for (module, _), fraction in removed.items():
            factor[module] = factor.get(module, 1.0) * max(0.0, 1.0 - fraction)
        return self.total - sum(self.layers.get(m, 0.0) * (1.0 - f) for m, f in factor.items())


@dataclass(frozen=True)
class SensitivityTable:
    """``values[i][j]``: the metric with only layer i pruned to ``sparsities[j]``."""

    criterion: str
    baseline: float
    layers: tuple[str, ...]
    sizes: tuple[int, ...]
    sparsities: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]
    flop_model: FlopModel | None = None  # structured tables: FLOPs as sparsities change

    def drop(self, layer: int, sparsity: float) -> float:
        """Predicted loss of the metric at any sparsity, interpolating between measurements."""
        points = [(0.0, 0.0)] + [
            (s, self.baseline - v) for s, v in zip(self.sparsities, self.values[layer])
        ]
        for (s0, d0), (s1, d1) in itertools.pairwise(points):
            if sparsity <= s1:
                return d0 + (d1 - d0) * (sparsity - s0) / (s1 - s0) if s1 > s0 else d1
        return points[-1][1]

    def plot(self, path: str | Path, budget: Mapping[str, float] | None = None) -> Path:
        """A PNG of the curves, and of ``budget`` per layer when given."""
        from sensiprune.report import plot_sensitivity  # the report layer sits above this one

        return plot_sensitivity(self, path, budget)

    def to_markdown(self) -> str:
        header = "| layer | weights | " + " | ".join(f"{s:.0%}" for s in self.sparsities) + " |"
        rows = [
            f"| {name} | {size:,} | " + " | ".join(f"{v:.4f}" for v in values) + " |"
            for name, size, values in zip(self.layers, self.sizes, self.values)
        ]
        return "\n".join(
            [
                f"Metric with one layer pruned at a time ({self.criterion}); "
                f"unpruned: {self.baseline:.4f}",
                "",
                header,
                "|---|---|" + "---|" * len(self.sparsities),
                *rows,
            ]
        )


def sensitivity(
    model: nn.Module,
    evaluate: Evaluate,
    sparsities: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    criterion: str = "magnitude",
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    ignore: IgnoreSpec = (),
    show_progress: bool = True,
    resume: str | Path | None = None,
    structured: bool = False,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
) -> SensitivityTable:
    """Measure ``evaluate(model)`` with each prunable layer alone pruned to each sparsity.

    Weights are ranked within the layer by ``criterion`` (scored once, on the unpruned model).
    Every layer is restored bit for bit after its points, even if ``evaluate`` fails.
    With ``resume``, finished layers are written to that JSON file (atomically, one layer at
    a time) and a later call for the same model, criterion and sparsities picks up from it.

    ``structured=True`` measures channel removal instead: one family of coupled layers at a
    time (named by the first of its producing layers in sorted order; a budget may name any of
    them), the lowest-scored channel groups zeroed, which
    is exactly what removing them does; ``example_inputs`` as for ``prune``.
    """
    points = _check_sparsities(sparsities)
    crit = criteria.get(criterion)
    if structured:
        return _structured(
            model, evaluate, points, crit, data, loss_fn, ignore, example_inputs, show_progress
        )
    if crit.structured_only:
        raise SensipruneError(f"criterion {criterion!r} scores channels: pick a weight criterion")
    targets = require_targets(model, ignore)
    identity = {"fingerprint": _fingerprint(model), "criterion": crit.name, "sparsities": points}
    done = _resumed(resume, identity)
    todo = [n for n in targets if n not in done.get("rows", {})]
    scores = score_targets(model, crit, targets, data, loss_fn, 0, show_progress) if todo else {}
    baseline = done.get("baseline")
    if baseline is None:
        baseline = _checked(evaluate(model), "the unpruned model")
    rows: dict[str, list[float]] = dict(done.get("rows", {}))
    batches = (
        list(as_batches(data, f"data (criterion {crit.name!r} needs it)"))
        if todo and crit.compensates
        else []
    )

    def save_progress() -> None:
        if resume is not None and distributed.is_main():
            state = {**identity, "baseline": baseline, "rows": rows}
            atomic_write_bytes(resume, json.dumps(state).encode())

    # under torch.distributed each rank measures its share of the layers
    for name in progress(distributed.mine(todo), "sensitivity, layer by layer", show_progress):
        order = torch.argsort(scores[name].reshape(-1).double().cpu(), stable=True)
        row = []
        for s in points:
            with _layer_pruned(model, targets[name], order, s, crit, batches, loss_fn):
                row.append(_checked(evaluate(model), f"{name} at sparsity {s}"))
        rows[name] = row
        if not distributed.active():
            save_progress()
    if todo:
        rows.update(distributed.merged({n: rows[n] for n in todo if n in rows}))
        save_progress()
    return SensitivityTable(
        crit.name,
        baseline,
        tuple(targets),
        tuple(targets[n].param.numel() for n in targets),
        points,
        tuple(tuple(rows[n]) for n in targets),
    )


@contextlib.contextmanager
def _layer_pruned(
    model: nn.Module,
    target: Target,
    order: torch.Tensor,
    sparsity: float,
    crit: criteria.Criterion,
    batches: list[Batch],
    loss_fn: LossFn | None,
) -> Iterator[None]:
    """One layer pruned to ``sparsity`` (with OBS, its remaining weights and bias also move);
    every tensor of the layer that may change is restored bit for bit on the way out."""
    module, param = target.module, target.param
    touched = [
        a for a in (target.attr, "bias") if isinstance(getattr(module, a, None), torch.Tensor)
    ]
    saved = {a: getattr(module, a).detach().clone() for a in touched}
    try:
        with torch.no_grad():
            count = round(sparsity * param.numel())
            if crit.compensates:
                keep = torch.ones(param.numel(), dtype=torch.bool)
                keep[order[:count]] = False
                _, moved = crit.compensate(
                    model, {target.name: target}, {target.name: keep.view(param.shape)}, {},
                    batches, loss_fn or default_loss,
                )  # fmt: skip
                for full_name, value in moved.items():
                    getattr(module, full_name.rpartition(".")[2]).copy_(value)
            else:
                param.view(-1)[order[:count].to(param.device)] = 0
        yield
    finally:
        with torch.no_grad():
            for attr, value in saved.items():
                getattr(module, attr).copy_(value)


def _structured(
    model: nn.Module,
    evaluate: Evaluate,
    points: tuple[float, ...],
    crit: criteria.Criterion,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    ignore: IgnoreSpec,
    example_inputs: object,
    show_progress: bool,
) -> SensitivityTable:
    if example_inputs is None and data is not None:  # the first batch stands in: read it once
        data = as_batches(data)
    graph, inputs = build(model, example_inputs, data=data)
    total_flops, per_module = module_flops(model, *inputs)
    groups = candidate_groups(model, graph, ignore, {})
    values = score_groups(model, crit, groups, data, loss_fn, 0, None, "mean", show_progress)
    distributed.broadcast_([values])
    families: dict[frozenset[str], list[int]] = {}
    for index, group in enumerate(groups):
        if not torch.isnan(values[index]):
            families.setdefault(group.producers, []).append(index)
    modules = dict(model.named_modules())
    baseline = _checked(evaluate(model), "the unpruned model")
    ranked = {
        family: sorted(members, key=lambda i: (values[i].item(), i))
        for family, members in families.items()
    }
    measured: dict[frozenset[str], tuple[float, ...]] = {}
    for family in progress(distributed.mine(list(ranked)), "sensitivity, family by family",
                           show_progress):  # fmt: skip
        row = []
        for s in points:
            chosen = [groups[i] for i in ranked[family][: round(s * len(ranked[family]))]]
            with zeroed(chosen, modules):
                row.append(_checked(evaluate(model), f"{sorted(family)[0]} at sparsity {s}"))
        measured[family] = tuple(row)
    measured = distributed.merged(measured)
    names = [sorted(family)[0] for family in ranked]
    sizes = [len(order) for order in ranked.values()]
    rows = [measured[family] for family in ranked]
    shares = [_shares([groups[i] for i in order], modules) for order in ranked.values()]
    touched = {module for share in shares for module, _ in share}
    flop_model = FlopModel(
        float(total_flops), {m: float(per_module.get(m, 0)) for m in touched}, tuple(shares)
    )
    return SensitivityTable(
        crit.name, baseline, tuple(names), tuple(sizes), points, tuple(rows), flop_model
    )


def _shares(groups: Sequence[Group], modules: dict[str, nn.Module]) -> dict[tuple[str, str], float]:
    """For each (module, role) a family reaches: the fraction of that role its groups hold."""
    counts: dict[tuple[str, str], int] = {}
    for group in groups:
        for member in group.members:
            counts[(member.layer, member.role)] = counts.get((member.layer, member.role), 0) + 1
    return {
        (layer, role): n / surgery.layout_for(modules[layer], role).size(modules[layer])
        for (layer, role), n in counts.items()
    }


def _fingerprint(model: nn.Module) -> str:
    """A hash of every tensor in the state: a resumed table must describe this very model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def _resumed(path: str | Path | None, identity: dict) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SensipruneError(f"cannot read the partial table {path}: {exc}") from exc
    if any(state.get(k) != (list(v) if isinstance(v, tuple) else v) for k, v in identity.items()):
        raise SensipruneError(
            f"{path} holds a partial table for another model, criterion or sparsity list: "
            "delete it, or pass another resume path"
        )
    return state


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
) -> Budget:
    """Per-layer sparsities from measured curves, minimising the summed predicted drop.

    Give one target: ``target_sparsity`` (a fraction of all the table's weights or channels,
    met exactly), ``target_flops`` (the fraction of the model's FLOPs to keep, for tables
    measured with ``structured=True``), or ``max_drop`` (prune as much as the curves predict
    costs at most this much of the metric). Greedy on the marginal predicted drop per unit
    removed (per weight, or per FLOP), in 1% steps of a layer.
    """
    if sum(t is not None for t in (target_sparsity, max_drop, target_flops)) != 1:
        raise SensipruneError(
            "give allocate exactly one of target_sparsity, target_flops or max_drop"
        )
    ceiling = min(max(table.sparsities), 1.0 - min_density)
    if max_sparsity is not None:
        ceiling = min(ceiling, max_sparsity)
    limits = [math.floor(ceiling * n) for n in table.sizes]
    if target_flops is not None:
        gain, wanted = _flop_target(table, target_flops, limits)
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
    budget = Budget({name: k / n for name, k, n in zip(table.layers, counts, table.sizes) if k > 0})
    budget.predicted_drop = _predicted(table, counts)
    at_limit = sum(n for k, n, cap in zip(counts, table.sizes, limits) if k == cap)
    budget.clamped = ceiling if at_limit > 0.5 * sum(table.sizes) else None
    return budget


Gain = Callable[[SensitivityTable, list[int], int, int], float]


def _count_gain(table: SensitivityTable, counts: list[int], layer: int, count: int) -> float:
    return float(count)


def _flop_target(
    table: SensitivityTable, target_flops: float, limits: list[int]
) -> tuple[Gain, float]:
    """The FLOPs a step saves, and how many must go, under the table's FLOP model."""
    model = table.flop_model
    if model is None:
        raise SensipruneError(
            "target_flops needs a FLOP model: measure with sensitivity(..., structured=True, "
            "example_inputs=x)"
        )
    if isinstance(target_flops, bool) or not 0 < float(target_flops) <= 1:
        raise SensipruneError(f"target_flops must be in (0, 1], got {target_flops!r}")

    def levels(counts: list[int]) -> list[float]:
        return [k / n for k, n in zip(counts, table.sizes)]

    def gain(table: SensitivityTable, counts: list[int], layer: int, count: int) -> float:
        after = list(counts)
        after[layer] += count
        return model.kept(levels(counts)) - model.kept(levels(after))

    wanted = (1.0 - target_flops) * model.total
    if model.total - model.kept(levels(limits)) < wanted:
        reachable = model.kept(levels(limits)) / model.total
        raise SensipruneError(
            f"target_flops {target_flops} cannot be met: every measured family at its limit "
            f"still keeps {reachable:.0%} of the FLOPs"
        )
    return gain, wanted


def _predicted(table: SensitivityTable, counts: list[int]) -> float:
    return sum(table.drop(i, k / n) for i, (k, n) in enumerate(zip(counts, table.sizes)))


def _cheapest_step(
    table: SensitivityTable, counts: list[int], limits: list[int], gain: Gain
) -> tuple[int, int, float] | None:
    """The layer whose next 1% costs the least predicted drop per unit of the target
    (a weight, or a FLOP): (layer, units, drop)."""
    best, best_cost = None, math.inf
    for i, n in enumerate(table.sizes):
        count = min(max(1, round(0.01 * n)), limits[i] - counts[i])
        if count <= 0:
            continue
        extra = table.drop(i, (counts[i] + count) / n) - table.drop(i, counts[i] / n)
        gained = gain(table, counts, i, count)
        cost = extra / gained if gained > 0 else math.inf
        if cost < best_cost:
            best, best_cost = (i, count, extra), cost
    return best


def _check_sparsities(sparsities: Sequence[float]) -> tuple[float, ...]:
    points = tuple(sparsities)
    if not points:
        raise SensipruneError("sparsities is empty: give at least one value in (0, 1)")
    for s in points:
        selection.check_sparsity(s)
    return tuple(sorted(set(points)))


def _checked(value: object, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SensipruneError(
            f"evaluate() returned {value!r} for {what}: it must return a number (higher = better)"
        )
    return float(value)
