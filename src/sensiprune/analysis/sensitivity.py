"""Per-layer sensitivity curves, and per-layer budgets allocated from them.

Layers differ enormously in how much pruning they tolerate. ``sensitivity`` prunes one layer at
a time to each sparsity, measures the model, and puts the layer back exactly (only that layer's
tensors are kept aside, so memory stays about 1x the model). ``allocate`` then chooses the
per-layer sparsities that reach a global target with the least predicted loss of the metric.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sensiprune import criteria, distributed
from sensiprune.criteria.scoring import score_groups, score_targets
from sensiprune.data import Batch, LossFn, as_batches, default_loss
from sensiprune.errors import SensipruneError
from sensiprune.handlers.layouts import layout_for
from sensiprune.io.partial_table import fingerprint, read_partial, write_partial
from sensiprune.measure import module_flops
from sensiprune.progress import progress
from sensiprune.selection import unstructured as selection
from sensiprune.selection.groups import candidate_groups
from sensiprune.structure.build import build
from sensiprune.structure.channels import Group
from sensiprune.structure.zeroing import zeroed
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

    def overall_sparsity(self, budget: Mapping[str, float]) -> float:
        """The share of all the table's weights (or channels) that ``budget`` removes."""
        pruned = sum(budget.get(name, 0.0) * size for name, size in zip(self.layers, self.sizes))
        return pruned / sum(self.sizes)

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
    identity = {"fingerprint": fingerprint(model), "criterion": crit.name, "sparsities": points}
    done = read_partial(resume, identity)
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
            write_partial(resume, state)

    # under torch.distributed each rank measures its share of the layers
    for name in progress(distributed.mine(todo), "sensitivity, layer by layer", show_progress):
        order = torch.argsort(scores[name].reshape(-1).double().cpu(), stable=True)
        row = []
        levels = _pruned_levels(model, targets[name], order, points, crit, batches, loss_fn)
        for s, write in zip(points, levels):
            with _layer_restored(targets[name]):
                write()
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


def _pruned_levels(
    model: nn.Module,
    target: Target,
    order: torch.Tensor,
    points: Sequence[float],
    crit: criteria.Criterion,
    batches: list[Batch],
    loss_fn: LossFn | None,
) -> Iterator[Callable[[], None]]:
    """For each sparsity, what prunes the layer to it (with OBS, its remaining weights and
    bias also move), asked for in turn with the layer restored in between: a compensating
    criterion computes the levels together where it can."""
    param = target.param
    counts = [round(s * param.numel()) for s in points]
    if not crit.compensates:
        for count in counts:
            yield functools.partial(_zeroed, param, order[:count].to(param.device))
        return
    keeps = []
    for count in counts:
        keep = torch.ones(param.numel(), dtype=torch.bool)
        keep[order[:count]] = False
        keeps.append(keep.view(param.shape))
    for moved in crit.compensate_levels(model, target, keeps, batches, loss_fn or default_loss):
        yield functools.partial(_written, target.module, moved)


def _zeroed(param: torch.Tensor, indices: torch.Tensor) -> None:
    with torch.no_grad():
        param.view(-1)[indices] = 0


def _written(module: nn.Module, moved: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for full_name, value in moved.items():
            getattr(module, full_name.rpartition(".")[2]).copy_(value)


@contextlib.contextmanager
def _layer_restored(target: Target) -> Iterator[None]:
    """Every tensor of the layer that pruning may change, restored bit for bit on the way
    out, even if the body fails."""
    module = target.module
    touched = [
        a for a in (target.attr, "bias") if isinstance(getattr(module, a, None), torch.Tensor)
    ]
    saved = {a: getattr(module, a).detach().clone() for a in touched}
    try:
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
    groups = candidate_groups(model, graph, require_targets(model, ignore), {})
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
        (layer, role): n / layout_for(modules[layer], role).size(modules[layer])
        for (layer, role), n in counts.items()
    }


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
