"""Structured pruning, stage by stage: group the coupled channels, score the groups, select,
cut, and check that the pruned model still runs with its output shapes."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from sensiprune import criteria, distributed
from sensiprune.apply import config_sync, masks
from sensiprune.apply.block_sync import after_surgery, bookkeepers
from sensiprune.apply.cut import remove_groups
from sensiprune.criteria.scoring import score_groups
from sensiprune.data import Batch, LossFn, as_batches
from sensiprune.errors import CutRefused
from sensiprune.options import PruneOptions
from sensiprune.result import PruneResult, describe
from sensiprune.selection.groups import candidate_groups, channel_multiple, select_groups
from sensiprune.selection.ties import honor
from sensiprune.selection.unstructured import Sparsity
from sensiprune.structure import adapters, graph_kinds
from sensiprune.structure.build import build
from sensiprune.structure.graph import DependencyGraph
from sensiprune.targets import IgnoreSpec, require_targets


def prune_structured(
    model: nn.Module,
    sparsity: Sparsity,
    options: PruneOptions,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    scores: Mapping[str, torch.Tensor] | None,
) -> PruneResult:
    """``options.steps`` cuts, each removing the same fraction of the channels still there
    (k steps of 1 - (1 - s)^(1/k) remove s of the original channels), re-scored in between."""
    if options.structured.example_inputs is None and data is not None:
        data = as_batches(data)  # the first batch stands in: read it once
    step = _per_step(sparsity, options.steps)
    results = [_step(model, step, options, data, loss_fn, scores) for _ in range(options.steps)]
    steps_text = f", {options.steps} steps" if options.steps > 1 else ""
    return _combined(results, f"structured, {describe(sparsity, options.scope)}{steps_text}")


def _step(
    model: nn.Module,
    sparsity: Sparsity,
    options: PruneOptions,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    scores: Mapping[str, torch.Tensor] | None,
) -> PruneResult:
    """One cut. A known transformer layout is a fast path; where the model holds more than it
    knows (a bias table per head), the traced graph decides. Where sizes the model's code
    fixes did not follow the cut through its attributes, it cuts again with those kept."""
    cut = functools.partial(_cut, model, sparsity, options, data, loss_fn, scores)

    def cut_or_keep_fixed(blocks: list[adapters.Block]) -> PruneResult:
        try:
            return cut(blocks, pin_fixed=False)
        except CutRefused as refused:
            if not refused.fixed:
                raise
            return cut(blocks, pin_fixed=True)

    blocks = adapters.find_blocks(model)
    try:
        return cut_or_keep_fixed(blocks)
    except CutRefused:
        if not blocks or adapters.QUERY_HEADS in _kinds(sparsity):
            raise
        return cut_or_keep_fixed([])


def _cut(
    model: nn.Module,
    sparsity: Sparsity,
    options: PruneOptions,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    scores: Mapping[str, torch.Tensor] | None,
    blocks: list[adapters.Block],
    pin_fixed: bool,
) -> PruneResult:
    crit, shape = criteria.get(options.criterion), options.structured
    targets = require_targets(model, options.ignore)
    kinds = _kinds(sparsity)
    graph, inputs = build(model, shape.example_inputs, blocks, kinds, data, pin_fixed)
    budget, by_kind = _budget(model, sparsity, kinds, blocks, graph)
    groups = candidate_groups(model, graph, targets, budget)
    values = score_groups(
        model, crit, groups, data, loss_fn, options.seed, scores, shape.group_reduction,
        options.show_progress,
    )  # fmt: skip
    if adapters.QUERY_HEADS in kinds:  # every key/value group keeps as many query heads
        groups, values = adapters.pair_query_heads(blocks, groups, values)
    distributed.broadcast_([values])  # rank 0 decides: every rank cuts the same
    round_to = channel_multiple(model, shape.round_to)
    removed = select_groups(groups, values, budget, by_kind, options, round_to)
    numbers = [group.number for group in groups]
    removed = honor(numbers, values, removed, graph.ties, options.min_density)
    params_before = sum(p.numel() for p in model.parameters())
    before = {name: t.param.numel() for name, t in targets.items()}
    flops_after = remove_groups(
        model, replace(graph, groups=groups), removed, inputs, *_bookkeeping(model, blocks)
    )
    after = {  # tied weights (a language model's head and embedding) under both names
        name: p.numel() for name, p in model.named_parameters(remove_duplicate=False)
    }
    return PruneResult(
        crit.name,
        "structured, " + describe(budget, options.scope),
        params_before,
        sum(p.numel() for p in model.parameters()),
        tuple(masks.LayerSparsity(n, before[n], after[n]) for n in before),
        graph.flops,
        flops_after,
        _by_reason(graph.untouched),
    )


def _kinds(sparsity: Sparsity) -> set[str]:
    """The budget keys that stand for every block's heads, FFN neurons or model dimension."""
    return set(sparsity) & set(adapters.KINDS) if isinstance(sparsity, Mapping) else set()


def _budget(
    model: nn.Module,
    sparsity: Sparsity,
    kinds: set[str],
    blocks: list[adapters.Block],
    graph: DependencyGraph,
) -> tuple[Sparsity, dict[str, tuple[float, set[str]]]]:
    """The budget per layer, with "heads" / "ffn" read as the layers of every block (from a
    known layout, else from the traced graph), and what each kind claims."""
    if not kinds:
        return sparsity, {}
    layers = (adapters.kind_layers(sparsity, blocks, model) if blocks else None) or (
        graph_kinds.kind_layers(sparsity, graph, model)
    )
    by_kind = {kind: (sparsity[kind], set(names)) for kind, names in layers.items()}
    return adapters.expand_budget(sparsity, layers), by_kind


def _bookkeeping(model: nn.Module, blocks: list[adapters.Block]) -> tuple:
    """What brings the attributes the model's code and config read in step with the new
    shapes, and the objects it may change."""
    if blocks:
        return functools.partial(after_surgery, model, blocks), bookkeepers(model, blocks)
    return config_sync.follower(model), config_sync.configs(model)


def _per_step(sparsity: Sparsity, steps: int) -> Sparsity:
    if isinstance(sparsity, Mapping):
        return {k: 1.0 - (1.0 - v) ** (1.0 / steps) for k, v in sparsity.items()}
    return 1.0 - (1.0 - sparsity) ** (1.0 / steps)


def _combined(results: list[PruneResult], scope: str) -> PruneResult:
    """One result for several steps: sizes before the first and after the last."""
    first, last = results[0], results[-1]
    before = {layer.name: layer.numel for layer in first.layers}
    layers = tuple(
        masks.LayerSparsity(layer.name, before.get(layer.name, layer.numel), layer.kept)
        for layer in last.layers
    )
    return replace(
        last,
        scope=scope,
        params_before=first.params_before,
        flops_before=first.flops_before,
        layers=layers,
        untouched=tuple(dict.fromkeys(u for r in results for u in r.untouched)),
    )


def _by_reason(untouched: Mapping[str, str], shown: int = 3) -> tuple[str, ...]:
    """One line per reason, naming the first few places it applies to: a large model can
    leave hundreds of operations alone for the same reason."""
    places: dict[str, list[str]] = {}
    for what, why in untouched.items():
        places.setdefault(why, []).append(what)
    return tuple(
        f"{', '.join(found[:shown])}"
        + (f" and {len(found) - shown} more" if len(found) > shown else "")
        + f": {why}"
        for why, found in places.items()
    )


def layer_widths(
    model: nn.Module, example_inputs: object, ignore: IgnoreSpec = ()
) -> dict[str, int]:
    """The channels a structured prune may cut, per layer: every layer of a family of coupled
    layers maps to the family's count (a budget may name any of them). Iterative steps read
    it off the unpruned model to move whole counts toward what one step would keep."""
    graph, _ = build(model, example_inputs)
    groups = candidate_groups(model, graph, require_targets(model, ignore), {})
    counts = Counter(group.producers for group in groups)
    return {layer: count for family, count in counts.items() for layer in family}
