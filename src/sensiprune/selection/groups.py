"""Which channel groups go: a share of each family of coupled layers, or of all of them ranked
together, in counts the hardware runs well."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.options import PruneOptions
from sensiprune.selection.unstructured import Sparsity, min_kept, normalized
from sensiprune.structure.graph import DependencyGraph, Group
from sensiprune.targets import Target, find_targets


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


def channel_multiple(model: nn.Module, round_to: int | str) -> int:
    """``round_to`` as a count: ``"auto"`` is one SIMD vector of the model's device
    (:func:`vector_width`)."""
    return vector_width(model) if round_to == "auto" else int(round_to)


def kept_count(n: int, wanted_removed: int, min_density: float, round_to: int) -> int:
    """Up to the next multiple of ``round_to``, never down: on vector hardware a layer's time
    steps at multiples of the vector width (on an AVX-512 CPU a convolution keeping 17 to 32
    channels takes the time of 32, one keeping 16 two thirds of that), so the channels up to the
    next multiple cost about no time and keep accuracy."""
    kept = max(n - wanted_removed, min_kept(n, min_density))
    if round_to > 1 and n >= round_to:
        kept = math.ceil(kept / round_to) * round_to
    return min(kept, n)


def _per_family(
    families, values: list[float], budget, min_density: float, round_to: int
) -> list[int]:
    removed = []
    for family, members in families.items():
        n = len(members)
        kept = kept_count(n, round(budget[family] * n), min_density, round_to)
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


def candidate_groups(
    model: nn.Module, graph: DependencyGraph, targets: Mapping[str, Target], budget: Sparsity
) -> list[Group]:
    """The groups that may go: none produced by a layer outside ``targets`` (the prunable
    weights once ``ignore`` is applied), and embedding widths only when a budget names the
    embedding (they change what every token vector means). With a budget, only the groups of
    the layers it names (measured criteria cost per group)."""
    named = set(budget) if isinstance(budget, Mapping) else set()
    kept = {t.layer for t in targets.values()}
    ignored = {t.layer for t in find_targets(model).values()} - kept
    unasked = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)} - named
    excluded = ignored | unasked
    groups = [g for g in graph.groups if excluded.isdisjoint(g.producers)]
    if not named:
        return groups
    return [g for g in groups if g.producers & named] or groups


def select_groups(
    groups: Sequence[Group],
    values: torch.Tensor,
    budget: Sparsity,
    by_kind: Mapping[str, tuple[float, set[str]]],
    options: PruneOptions,
    round_to: int,
) -> list[int]:
    """Indices of the groups to remove. ``{"heads": s}`` with ``scope="global"``: s of all
    heads, ranked across the blocks (a sensitive block keeps more of its heads), and likewise
    for FFN neurons; the rest of the budget per layer as usual."""
    choose = functools.partial(
        choose_groups, normalize=options.normalize, min_density=options.min_density,
        round_to=round_to,
    )  # fmt: skip
    if not by_kind or options.scope != "global":
        return choose(groups, values, budget, options.scope)
    parts = [(s, "global", layers) for s, layers in by_kind.values()]
    claimed = set().union(*(layers for _, layers in by_kind.values()))
    rest = {layer: s for layer, s in budget.items() if layer not in claimed}
    if rest:
        parts.append((rest, "layer", set(rest)))
    removed: list[int] = []
    for sparsity, scope, layers in parts:
        subset = [i for i, g in enumerate(groups) if g.producers & layers]
        chosen = choose([groups[i] for i in subset], values[subset], sparsity, scope)
        removed += [subset[j] for j in chosen]
    return removed
