"""Structured pruning: score coupled channel groups, choose, and cut them out physically."""

from __future__ import annotations

import contextlib
import gc
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sensiprune.apply import surgery
from sensiprune.errors import CutRefused, SensipruneError
from sensiprune.measure import counted_forward
from sensiprune.selection.unstructured import Sparsity, min_kept, normalized
from sensiprune.structure import adapters, counts
from sensiprune.structure.channels import flat_members, indices_by_slice, role_kind
from sensiprune.structure.graph import DependencyGraph, Group, build_graph
from sensiprune.structure.inputs import example_arguments

REDUCTIONS = ("mean", "sum", "max")


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a graph is built or cut. A graph
    makes an object per channel group, and once torch is imported a full collection walks
    millions of objects: it landed inside a prune often and made it take 4x longer. Nothing
    made here forms a cycle, and the collector runs again as usual afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def group_scores(
    model: nn.Module, groups: Sequence[Group], scores: Mapping[str, torch.Tensor], reduce: str
) -> torch.Tensor:
    """Reduce the per-weight scores of every member slice of each group to one number."""
    if reduce not in REDUCTIONS:
        raise SensipruneError(f"group reduction must be one of {', '.join(REDUCTIONS)}")
    keys, owner, key, index = flat_members(groups)
    modules = dict(model.named_modules())
    offset = np.full(len(keys), -1, dtype=np.int64)  # where a slice's values start, if scored
    values: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    length = 0
    for k, (layer, role) in enumerate(keys):
        prefix = f"{layer}." if layer else ""
        reduced = _slice_reductions(modules[layer], role, scores, prefix, reduce)
        if reduced is not None:
            offset[k] = length
            values.append(reduced[0])
            sizes.append(reduced[1])
            length += len(reduced[0])
    scored = offset[key] >= 0
    owners = torch.from_numpy(owner[scored])
    positions = torch.from_numpy(offset[key[scored]] + index[scored])
    result = torch.zeros(len(groups), dtype=torch.float64)
    count = torch.zeros(len(groups), dtype=torch.float64)
    if len(owners):
        picked = torch.cat(values)[positions]
        if reduce == "max":
            result.scatter_reduce_(0, owners, picked, "amax")
        else:
            result.index_add_(0, owners, picked)
        count.index_add_(0, owners, torch.cat(sizes)[positions])
    if reduce == "mean":
        result = result / count.clamp_min(1)
    return result.masked_fill(count == 0, torch.nan)  # nothing scored: not a candidate


def _slice_reductions(
    module: nn.Module, role: str, scores: Mapping[str, torch.Tensor], prefix: str, reduce: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per index of ``role``: the sum (or max) of the weight scores it owns, and how many
    weights that is; None when no score covers the slice."""
    layout = surgery.layout_for(module, role)
    n = layout.size(module)
    whole = scores.get(f"{prefix[:-1]}::{role}")  # a criterion that scores channels directly
    if whole is not None:
        return whole.detach().double().cpu(), torch.ones(n, dtype=torch.float64)
    value = torch.zeros(n, dtype=torch.float64)
    size = 0
    for cut in layout.cuts(module):
        score = scores.get(prefix + cut.attr)
        if score is None:
            continue
        # split the cut dimension into (blocks, n, width): a view; reduce all but n in place
        shape = score.shape
        split = score.detach().reshape(*shape[: cut.dim], cut.blocks, n, -1, *shape[cut.dim + 1 :])
        others = [d for d in range(split.ndim) if d != cut.dim + 1]
        if reduce == "max":
            value = torch.maximum(value, split.amax(others).double().cpu())
        else:
            at_least_single = torch.promote_types(split.dtype, torch.float32)
            value += split.sum(others, dtype=at_least_single).double().cpu()
        size += split.numel() // n
    return (value, torch.full((n,), float(size), dtype=torch.float64)) if size else None


def choose_groups(
    groups: Sequence[Group],
    scores: torch.Tensor,
    sparsity: Sparsity,
    scope: str,
    normalize: str,
    min_density: float,
    round_to: int,
) -> list[int]:
    """Indices of the groups to remove: ``sparsity`` of the channels of each family of layers
    (``scope="layer"``) or of all channels ranked together (``"global"``)."""
    families: dict[frozenset[str], list[int]] = defaultdict(list)
    values = scores.tolist()
    for index, group in enumerate(groups):
        if not math.isnan(values[index]):
            families[group.producers].append(index)
    if isinstance(sparsity, Mapping):
        budget = {
            family: max((sparsity[layer] for layer in family if layer in sparsity), default=0.0)
            for family in families
        }
        missing = set(sparsity) - {layer for family in families for layer in family}
        if missing:
            known = ", ".join(sorted({layer for family in families for layer in family}))
            raise SensipruneError(
                f"no prunable channels in {', '.join(sorted(missing))}; layers whose output "
                f"channels can be pruned: {known}"
            )
        return _per_family(families, values, budget, min_density, round_to)
    if scope == "layer":
        return _per_family(
            families, values, dict.fromkeys(families, sparsity), min_density, round_to
        )
    return _global(families, scores, sparsity, normalize, min_density, round_to)


_VECTOR_BITS = {"AVX512": 512, "AVX2": 256, "SVE256": 256}  # else 128: SSE, NEON, a GPU


def vector_width(model: nn.Module) -> int:
    """How many channels of the model's dtype one SIMD vector of its device holds: 16 fp32
    values on an AVX-512 CPU, 8 on AVX2, 4 on NEON; on a GPU, 16 bytes (8 fp16 values, the
    row of a tensor-core fragment). Channel counts that fill whole vectors leave no lane
    idle, so the pruned model's speed follows its FLOPs more closely (benchmarks/structured.py
    measures it)."""
    param = next(model.parameters(), None)
    if param is None:
        return 1
    if param.device.type == "cpu":
        bits = _VECTOR_BITS.get(torch.backends.cpu.get_cpu_capability(), 128)
    else:
        bits = 128
    return max(1, bits // (param.dtype.itemsize * 8))


def _kept_count(n: int, wanted_removed: int, min_density: float, round_to: int) -> int:
    kept = max(n - wanted_removed, min_kept(n, min_density))
    if round_to > 1 and n >= round_to:
        kept = max(round_to, round(kept / round_to) * round_to)
    return min(kept, n)


def _per_family(
    families, values: list[float], budget, min_density: float, round_to: int
) -> list[int]:
    removed = []
    for family, members in families.items():
        n = len(members)
        kept = _kept_count(n, round(budget[family] * n), min_density, round_to)
        order = sorted(members, key=lambda i: (values[i], i))
        removed += order[: n - kept]
    return removed


def _global(families, scores, sparsity: float, normalize: str, min_density: float, round_to: int):
    ranked = []
    for family, members in families.items():
        values = normalized(scores[members], normalize).tolist()
        ranked += [(values[k], i, family) for k, i in enumerate(members)]
    ranked.sort()
    total = len(ranked)
    target = round(sparsity * total)
    per_family: dict[frozenset[str], int] = defaultdict(int)
    chosen = 0
    for _, _, family in ranked:
        if chosen == target:
            break
        n = len(families[family])
        if n - per_family[family] > min_kept(n, min_density):
            per_family[family] += 1
            chosen += 1
    return _per_family(
        families,
        scores.tolist(),
        {f: per_family[f] / len(m) for f, m in families.items()},
        min_density,
        round_to,
    )


@contextlib.contextmanager
def zeroed(groups: Sequence[Group], modules: dict[str, nn.Module]) -> Iterator[None]:
    """Zero everything that produces the groups' channels (output rows and biases, BatchNorm
    scale and shift, every gate block of a hidden unit), then restore it exactly.

    Zeroed groups behave as removed ones (the equivalence tests hold the library to that),
    so this measures a removal without doing surgery."""
    saved = []
    try:
        with torch.no_grad():
            for (layer, role), indices in indices_by_slice(groups).items():
                if role_kind(role) == "in":  # consumers read zeros once the producers are zero
                    continue
                module = modules[layer]
                layout = surgery.layout_for(module, role)
                chosen = torch.from_numpy(indices)
                for cut in layout.cuts(module):
                    tensor = getattr(module, cut.attr, None)
                    if tensor is None:
                        continue
                    where = surgery.positions(cut, chosen, layout.size(module)).to(tensor.device)
                    saved.append((tensor, cut.dim, where, tensor.index_select(cut.dim, where)))
                    tensor.index_fill_(cut.dim, where, 0.0)
        yield
    finally:
        with torch.no_grad():
            for tensor, dim, where, values in reversed(saved):
                tensor.index_copy_(dim, where, values)


@paused_gc()
def remove_groups(
    model: nn.Module,
    graph: DependencyGraph,
    removed: Sequence[int],
    example_inputs: Sequence[torch.Tensor],
    bookkeeping: Callable[[], None] | None = None,
    kept_in_step: Sequence[object] = (),
) -> int:
    """Cut the chosen groups out of ``model`` in place; returns the FLOPs afterwards.

    Sizes the model's code keeps in attributes follow the cut (see counts.py), and
    ``bookkeeping`` then brings the attributes the model's own code reads (head counts, a
    config) in step with the new shapes; it changes nothing but ``kept_in_step``. The pruned
    model is run once before returning; if it fails or its output shapes changed, every
    touched module and object gets its old state back and the error says so.
    """
    cut = indices_by_slice([graph.groups[g] for g in removed])
    modules = dict(model.named_modules())
    touched = [modules[layer] for layer in {layer for layer, _ in cut}]
    holders = counts.holders(modules, graph.counts) + list(kept_in_step)
    saved = [(thing, _snapshot(thing)) for thing in touched + holders]
    ties = surgery.tied_parameters(model)
    try:
        for (layer, role), indices in cut.items():
            module = modules[layer]
            keep = np.ones(surgery.layout_for(module, role).size(module), dtype=bool)
            keep[indices] = False
            surgery.shrink(module, role, torch.from_numpy(np.flatnonzero(keep)))
        surgery.retie(ties)
        numbers = [graph.groups[g].number for g in removed]
        cut_state = [(thing, _snapshot(thing)) for thing in holders]
        # where two attributes held a count's value, the one that counts it is found by
        # running the model with the other left as it was
        twins = counts.ambiguous(modules, graph.counts, numbers)
        refused = None
        for skip in [(), *([name] for name in twins)]:
            _restore(cut_state)
            counts.follow(modules, graph.counts, numbers, skip)
            if bookkeeping is not None:
                bookkeeping()
            try:
                return _checked_run(model, graph, example_inputs)
            except CutRefused as error:
                refused = refused or error
        raise refused
    except BaseException:
        _restore(saved)
        raise


def _checked_run(model: nn.Module, graph: DependencyGraph, example_inputs: Sequence) -> int:
    """The pruned model's FLOPs, once it has run with the output shapes it had."""
    try:
        flops, shapes = counted_forward(
            model,
            example_inputs,
            "the model does not run after structured pruning; this is a bug in sensiprune's "
            "dependency graph: please report it (the model was not modified)",
            layers_only=graph.flops_in_layers_only,
        )
    except SensipruneError as exc:
        raise CutRefused(str(exc), graph.fixed) from exc.__cause__
    if shapes != graph.output_shapes:
        raise CutRefused(
            "structured pruning would change the output shape; this is a bug in "
            "sensiprune's dependency graph: please report it (the model was not modified)",
            graph.fixed,
        )
    return flops


def _restore(saved: Sequence[tuple[object, dict]]) -> None:
    for thing, state in reversed(saved):
        thing.__dict__.clear()
        thing.__dict__.update(state)


def _snapshot(thing: object) -> dict:
    """Enough of ``thing``'s state to put it back: its attributes, and a module's own
    parameter and buffer tables."""
    state = dict(thing.__dict__)
    for key in ("_parameters", "_buffers"):
        if key in state:
            state[key] = dict(state[key])
    return state


@paused_gc()
def build(
    model: nn.Module,
    example_inputs: object,
    blocks: list[adapters.Block] | None = None,
    kinds: Collection[str] = (),
    data: Iterable[object] | None = None,
    pin_fixed: bool = False,
) -> tuple[DependencyGraph, list[torch.Tensor]]:
    """Validate example_inputs at the edge (see inputs.example_arguments: without them, the
    first batch of ``data``) and build the dependency graph; ``blocks`` are the model's known
    transformer blocks when the caller has already looked for them, and ``kinds`` the budget
    keys that stand for all of them (see adapters.build_graph)."""
    inputs = example_arguments(model, example_inputs, data)
    if blocks is None:
        blocks = adapters.find_blocks(model)  # known transformer layouts need no tracing
    if blocks:
        return adapters.build_graph(model, blocks, inputs, kinds), inputs
    return build_graph(model, inputs, pin_fixed), inputs
