"""The verbs: score, prune, iterative_prune. Validation happens here, at the edge."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from sensiprune import criteria
from sensiprune.apply import config_sync, masks
from sensiprune.apply import structured as structured_pruning
from sensiprune.criteria import stats
from sensiprune.criteria.channel import GroupLossChange
from sensiprune.criteria.obs import OptimalBrainSurgeon
from sensiprune.data import Batch, LossFn, as_batches, default_loss
from sensiprune.errors import CutRefused, SensipruneError
from sensiprune.runs import distributed
from sensiprune.runs.train import FinetuneResult, finetune
from sensiprune.selection import unstructured as selection
from sensiprune.selection.schedule import geometric_sparsity, sparsity_at
from sensiprune.selection.unstructured import Sparsity
from sensiprune.structure import adapters, graph_kinds, ties
from sensiprune.structure.graph import DependencyGraph, Group
from sensiprune.targets import IgnoreSpec, Target, find_targets, require_targets


@dataclass(frozen=True)
class PruneResult:
    """What a prune did: parameter counts and the sparsity of every prunable layer."""

    criterion: str
    scope: str
    params_before: int
    params_after: int
    layers: tuple[masks.LayerSparsity, ...]
    flops_before: int | None = None
    flops_after: int | None = None
    untouched: tuple[str, ...] = ()  # structured: what the dependency graph left alone, and why

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zeroed."""
        total = sum(layer.numel for layer in self.layers)
        return 1.0 - sum(layer.kept for layer in self.layers) / total if total else 0.0

    @property
    def per_layer(self) -> dict[str, float]:
        return {layer.name: layer.sparsity for layer in self.layers}

    def __str__(self) -> str:
        width = max([len(layer.name) for layer in self.layers] + [5])
        lines = [
            f"pruned with {self.criterion} ({self.scope}): parameters {self.params_before:,} -> "
            f"{self.params_after:,} ({self.params_before / max(self.params_after, 1):.1f}x fewer), "
            f"prunable sparsity {self.sparsity:.1%}",
        ]
        if self.flops_before is not None and self.flops_after is not None:
            lines.append(
                f"FLOPs {self.flops_before:,} -> {self.flops_after:,} "
                f"({self.flops_before / max(self.flops_after, 1):.2f}x fewer)"
            )
        lines += [f"left alone: {item}" for item in self.untouched]
        lines.append(f"  {'layer':<{width}}  {'weights':>10}  {'kept':>10}  sparsity")
        lines += [
            f"  {layer.name:<{width}}  {layer.numel:>10,}  {layer.kept:>10,}  {layer.sparsity:8.1%}"
            for layer in self.layers
        ]
        return "\n".join(lines)


def score(
    model: nn.Module,
    criterion: str = "taylor",
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    ignore: IgnoreSpec = (),
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Importance of every prunable weight, by parameter name (higher = more important).

    Channel criteria (``taylor_fm``) give one score per output channel, under ``"layer::out"``.
    """
    crit = criteria.get(criterion)
    targets = require_targets(model, ignore)
    return score_targets(model, crit, targets, data, loss_fn, seed, show_progress)


def score_targets(
    model: nn.Module,
    crit: criteria.Criterion,
    targets: dict[str, Target],
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    seed: int,
    show_progress: bool,
) -> dict[str, torch.Tensor]:
    batches = (
        as_batches(data, f"data (criterion {crit.name!r} needs it)") if crit.needs_data else data
    )
    loss_fn = loss_fn or default_loss
    collected = (
        stats.collect(model, targets, batches, loss_fn, crit.needs, seed, show_progress)
        if crit.needs
        else {name: stats.ParamStats() for name in targets}
    )
    ctx = criteria.ScoringContext(model, targets, batches, loss_fn, collected, seed, show_progress)
    return crit.score(ctx)


def prune(
    model: nn.Module,
    sparsity: Sparsity,
    criterion: str = "magnitude",
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    scope: str = "global",
    ignore: IgnoreSpec = (),
    min_density: float = 0.01,
    normalize: str = "lamp",
    steps: int = 1,
    seed: int = 0,
    scores: Mapping[str, torch.Tensor] | None = None,
    structured: bool = False,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    round_to: int | str = 1,
    group_reduction: str = "mean",
    show_progress: bool = False,
) -> PruneResult:
    """Mask the least important weights in place so that ``sparsity`` of them are zero.

    ``sparsity`` is a fraction of all prunable weights (ranked over the whole model with
    ``scope="global"``, within each layer with ``"layer"``, within each output row with
    ``"row"``) or a ``{layer_name: fraction}`` budget. Weights pruned before stay pruned.
    ``steps > 1`` gets there in geometric steps, re-scoring the masked model before each one:
    a saliency predicts the cost of removing one weight, and is far more reliable for removing
    a fraction of the weights than for removing 90% at once. ``scores`` reuses scores from
    :func:`score` (one step only). Bad input is refused before anything changes, and a
    failure while scoring (say, a NaN gradient) happens before that step's masks are applied.

    ``structured=True`` removes whole channels / neurons instead, so layers physically shrink:
    ``sparsity`` is then the fraction of channels removed from each family of coupled layers
    (``scope="layer"``) or overall (``"global"``), ``example_inputs`` is a batch the model
    accepts (for tracing), ``round_to`` keeps channel counts multiples of N (``"auto"``: of
    the channels one SIMD vector of the model's device holds, see
    :func:`sensiprune.apply.structured.vector_width`), and
    ``group_reduction`` (mean / sum / max) turns the weight scores of a channel group into one.
    In a budget, ``"heads"``, ``"query_heads"`` (inside key/value groups), ``"ffn"`` and
    ``"hidden"`` (the model dimension) stand for every transformer block sensiprune knows.
    A module in ``ignore`` keeps its output channels; its inputs may still shrink. With
    ``steps > 1`` each step removes the same fraction of the channels still there, re-scored.
    """
    selection.check_sparsity(sparsity)
    geometric_sparsity(sparsity, 1, steps)  # validates steps
    if scores is not None and steps != 1:
        raise SensipruneError("scores= cannot be reused across re-scoring steps: pass steps=1")
    if structured:
        # each step removes the same fraction of the channels still there: k steps of
        # 1 - (1 - s)^(1/k) remove s of the original channels, re-scored in between
        step_sparsity = _per_step(sparsity, steps)
        results = [
            _prune_structured(
                model,
                step_sparsity,
                criterion,
                data,
                loss_fn,
                scope,
                ignore,
                min_density,
                normalize,
                seed,
                scores,
                example_inputs,
                round_to,
                group_reduction,
                show_progress,
            )
            for _ in range(steps)
        ]
        steps_text = f", {steps} steps" if steps > 1 else ""
        return _combined(results, f"structured, {_describe(sparsity, scope)}{steps_text}")
    crit = criteria.get(criterion)
    if crit.structured_only:
        raise SensipruneError(
            f"criterion {criterion!r} scores whole channels: pass structured=True"
        )
    targets = require_targets(model, ignore)
    if scores is not None:
        _check_scores(scores, targets)
    if crit.needs_data or isinstance(crit, OptimalBrainSurgeon):
        data = as_batches(data, f"data (criterion {crit.name!r} needs it)")
    params_before = sum(p.numel() for p in model.parameters())
    for step in range(1, steps + 1):
        step_sparsity = geometric_sparsity(sparsity, step, steps)
        step_scores = (
            scores
            if scores is not None
            else score_targets(model, crit, targets, data, loss_fn, seed, show_progress)
        )
        chosen = selection.select(
            step_scores,
            targets,
            step_sparsity,
            scope,
            normalize,
            min_density,
            masks.get_masks(model),
        )
        if isinstance(crit, OptimalBrainSurgeon):
            _compensate(model, crit, targets, chosen, data, loss_fn, show_progress)
        masks.apply_masks(targets, chosen)
        distributed.broadcast_module(model)  # rank 0 decides: the ranks never disagree
    layers = masks.layer_sparsity(model, targets)
    pruned = sum(layer.numel - layer.kept for layer in layers)
    return PruneResult(
        crit.name, _describe(sparsity, scope), params_before, params_before - pruned, layers
    )


def _per_step(sparsity: Sparsity, steps: int) -> Sparsity:
    if isinstance(sparsity, Mapping):
        return {k: 1.0 - (1.0 - v) ** (1.0 / steps) for k, v in sparsity.items()}
    return 1.0 - (1.0 - sparsity) ** (1.0 / steps)


def _combined(results: list[PruneResult], scope: str) -> PruneResult:
    """One result for several structured steps: sizes before the first and after the last."""
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


def _compensate(
    model: nn.Module,
    crit: OptimalBrainSurgeon,
    targets: dict[str, Target],
    chosen: dict[str, torch.Tensor],
    data: Iterable[Batch],
    loss_fn: LossFn | None,
    show_progress: bool,
) -> None:
    """Let OBS pick the weights within the chosen per-row counts and move the rest."""
    chosen_by_obs, new_weights = crit.compensate(
        model,
        targets,
        chosen,
        masks.get_masks(model),
        list(data),
        loss_fn or default_loss,
        show_progress,
    )
    chosen.update(chosen_by_obs)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in new_weights.items():
            params[name].copy_(value)


def _prune_structured(
    model: nn.Module,
    sparsity: Sparsity,
    criterion: str,
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    scope: str,
    ignore: IgnoreSpec,
    min_density: float,
    normalize: str,
    seed: int,
    scores: Mapping[str, torch.Tensor] | None,
    example_inputs: object,
    round_to: int | str,
    group_reduction: str,
    show_progress: bool,
) -> PruneResult:
    selection.check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise SensipruneError(
            f"structured pruning ranks with scope 'global' or 'layer', got {scope!r}"
        )
    if normalize not in selection.NORMALIZATIONS:
        raise SensipruneError(
            f"normalize must be one of {', '.join(selection.NORMALIZATIONS)}, got {normalize!r}"
        )
    if round_to == "auto":
        round_to = structured_pruning.vector_width(model)
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise SensipruneError(f"round_to must be a positive integer or 'auto', got {round_to!r}")
    crit = criteria.get(criterion)
    if isinstance(crit, OptimalBrainSurgeon):
        raise SensipruneError("criterion 'obs' prunes single weights: use structured=False")
    targets = require_targets(model, ignore)
    blocks = adapters.find_blocks(model)
    asked = set(sparsity) & set(adapters.KINDS) if isinstance(sparsity, Mapping) else set()
    # "heads" / "ffn" stand for every block's: with known layouts, found before anything runs
    known = adapters.kind_layers(sparsity, blocks, model) if asked and blocks else None
    query_heads = adapters.QUERY_HEADS in asked
    if example_inputs is None and data is not None:  # the first batch stands in: read it once
        data = as_batches(data)

    def attempt(blocks: list[adapters.Block], pin_fixed: bool) -> PruneResult:
        graph, inputs = structured_pruning.build(
            model, example_inputs, blocks, asked, data, pin_fixed
        )
        target, kinds = sparsity, {}
        if asked:
            by_kind = (known if blocks else None) or graph_kinds.kind_layers(sparsity, graph, model)
            kinds = {kind: (sparsity[kind], set(names)) for kind, names in by_kind.items()}
            target = adapters.expand_budget(sparsity, by_kind)
        named = set(target) if isinstance(target, Mapping) else set()
        groups = candidate_groups(model, graph, ignore, named)
        if named:  # a budget: only what it names is scored (measured criteria cost per group)
            groups = [g for g in groups if g.producers & named] or groups
        group_values = score_groups(
            model, crit, groups, data, loss_fn, seed, scores, group_reduction, show_progress
        )
        if query_heads:  # every key/value group keeps as many query heads as the others
            groups, group_values = adapters.pair_query_heads(blocks, groups, group_values)
        distributed.broadcast_([group_values])  # rank 0 decides: every rank cuts the same
        choice = (groups, group_values, scope, normalize, min_density, round_to)
        removed = (
            _choose_by_kind(choice, target, kinds)
            if kinds and scope == "global"
            else structured_pruning.choose_groups(
                groups, group_values, target, scope, normalize, min_density, round_to
            )
        )
        numbers = [group.number for group in groups]
        removed = ties.honor(numbers, group_values, removed, graph.ties, min_density)
        params_before = sum(p.numel() for p in model.parameters())
        before = {name: t.param.numel() for name, t in targets.items()}
        kept_graph = replace(graph, groups=groups)
        if blocks:  # what the model's code and config read follows the new shapes
            bookkeeping = functools.partial(adapters.after_surgery, model, blocks)
            kept_in_step = adapters.bookkeepers(model, blocks)
        else:
            bookkeeping, kept_in_step = config_sync.follower(model), config_sync.configs(model)
        flops_after = structured_pruning.remove_groups(
            model, kept_graph, removed, inputs, bookkeeping, kept_in_step
        )
        after = {  # tied weights (a language model's head and embedding) under both names
            name: p.numel() for name, p in model.named_parameters(remove_duplicate=False)
        }
        layers = tuple(masks.LayerSparsity(n, before[n], after[n]) for n in before)
        return PruneResult(
            crit.name,
            "structured, " + _describe(target, scope),
            params_before,
            sum(p.numel() for p in model.parameters()),
            layers,
            graph.flops,
            flops_after,
            _by_reason(graph.untouched),
        )

    def cut(blocks: list[adapters.Block]) -> PruneResult:
        try:
            return attempt(blocks, pin_fixed=False)
        except CutRefused as refused:
            if not refused.fixed:
                raise
            # sizes the model's code fixes did not follow the cut through its attributes: cut
            # again with those channels kept
            return attempt(blocks, pin_fixed=True)

    try:
        return cut(blocks)
    except CutRefused:
        if not blocks or query_heads:
            raise
        # a known layout is a fast path; where the model holds more than it knows (a bias
        # table per head), the traced graph decides
        return cut([])


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


def _choose_by_kind(
    choice: tuple, budget: Mapping[str, float], kinds: dict[str, tuple[float, set[str]]]
) -> list[int]:
    """``{"heads": s}`` with ``scope="global"``: s of all heads, ranked across the blocks (a
    sensitive block keeps more of its heads), and likewise for FFN neurons; the rest of the
    budget per layer as usual."""
    groups, values, _, normalize, min_density, round_to = choice
    removed: list[int] = []
    parts = [(s, "global", layers) for s, layers in kinds.values()]
    claimed = set().union(*(layers for _, layers in kinds.values()))
    rest = {layer: s for layer, s in budget.items() if layer not in claimed}
    if rest:
        parts.append((rest, "layer", set(rest)))
    for sparsity, scope, layers in parts:
        subset = [i for i, g in enumerate(groups) if g.producers & layers]
        chosen = structured_pruning.choose_groups(
            [groups[i] for i in subset], values[subset], sparsity, scope, normalize,
            min_density, round_to,
        )  # fmt: skip
        removed += [subset[j] for j in chosen]
    return removed


def candidate_groups(
    model: nn.Module, graph: DependencyGraph, ignore: IgnoreSpec, named: set[str]
) -> list[Group]:
    """The groups that may go: none produced by an ignored layer, and embedding widths only
    when a budget names the embedding (they change what every token vector means)."""
    kept = {t.layer for t in require_targets(model, ignore).values()}
    ignored = {t.layer for t in find_targets(model).values()} - kept
    unasked = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)} - named
    excluded = ignored | unasked
    return [g for g in graph.groups if excluded.isdisjoint(g.producers)]


def score_groups(
    model: nn.Module,
    crit: criteria.Criterion,
    groups: list[Group],
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    seed: int,
    scores: Mapping[str, torch.Tensor] | None,
    reduction: str,
    show_progress: bool,
) -> torch.Tensor:
    """One importance per group (NaN where nothing scores it: such groups are left alone)."""
    if isinstance(crit, GroupLossChange):
        batches = list(as_batches(data, "data (criterion 'group_loss' needs it)"))
        return crit.score_groups(model, groups, batches, loss_fn or default_loss)
    if scores is None:
        # layers the criterion cannot read (an RNN for an input-statistics criterion) go
        # unscored: their groups are left alone rather than failing the whole prune
        scorable = {
            name: t for name, t in find_targets(model).items() if stats.can_collect(t, crit.needs)
        }
        scores = score_targets(model, crit, scorable, data, loss_fn, seed, show_progress)
    return structured_pruning.group_scores(model, groups, scores, reduction)


def iterative_prune(
    model: nn.Module,
    sparsity: Sparsity,
    train_data: Iterable[Batch],
    criterion: str = "magnitude",
    data: Iterable[Batch] | None = None,
    steps: int = 3,
    epochs_per_step: int = 1,
    schedule: str = "cubic",
    loss_fn: LossFn | None = None,
    scope: str = "global",
    ignore: IgnoreSpec = (),
    lr: float = 1e-3,
    show_progress: bool = False,
) -> list[tuple[PruneResult, FinetuneResult]]:
    """Prune → fine-tune in ``steps`` rounds along ``schedule`` up to ``sparsity``.

    Scores are recomputed every round on ``data`` (default: the training data), so each round
    sees the model as the previous fine-tuning left it.
    """
    selection.check_sparsity(sparsity)
    sparsity_at(sparsity, 1, steps, schedule)  # validates steps and schedule before any work
    train_batches = as_batches(train_data, "train data")
    history = []
    for step in range(1, steps + 1):
        result = prune(
            model,
            sparsity_at(sparsity, step, steps, schedule),
            criterion,
            data if data is not None else train_batches,
            loss_fn,
            scope,
            ignore,
            show_progress=show_progress,
        )
        tuned = finetune(
            model, train_batches, epochs_per_step, loss_fn, lr=lr, show_progress=show_progress
        )
        history.append((result, tuned))
    return history


def _check_scores(scores: Mapping[str, torch.Tensor], targets: dict[str, Target]) -> None:
    for name, target in targets.items():
        if name not in scores:
            raise SensipruneError(f"scores has no entry for {name}: score the same model first")
        if tuple(scores[name].shape) != tuple(target.param.shape):
            raise SensipruneError(
                f"scores[{name!r}] has shape {tuple(scores[name].shape)}, the weight has "
                f"{tuple(target.param.shape)}"
            )


def _describe(sparsity: Sparsity, scope: str) -> str:
    return "per-layer budget" if isinstance(sparsity, Mapping) else f"{scope}, {sparsity:.0%}"
