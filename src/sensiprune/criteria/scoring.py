"""Scores from a criterion: per weight from one shared pass of statistics, and per group of
coupled channels as one number reduced from its members' scores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sensiprune.criteria import stats
from sensiprune.criteria.base import Criterion, ScoringContext
from sensiprune.data import Batch, LossFn, as_batches, default_loss
from sensiprune.errors import SensipruneError
from sensiprune.handlers.layouts import layout_for
from sensiprune.structure.channels import flat_members
from sensiprune.structure.graph import Group
from sensiprune.targets import Target, find_targets


def score_targets(
    model: nn.Module,
    crit: Criterion,
    targets: dict[str, Target],
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    seed: int,
    show_progress: bool,
) -> dict[str, torch.Tensor]:
    """``crit``'s scores of every weight of ``targets``, from one pass that collects the
    statistics it needs."""
    batches = (
        as_batches(data, f"data (criterion {crit.name!r} needs it)") if crit.needs_data else data
    )
    loss_fn = loss_fn or default_loss
    collected = (
        stats.collect(model, targets, batches, loss_fn, crit.needs, seed, show_progress)
        if crit.needs
        else {name: stats.ParamStats() for name in targets}
    )
    ctx = ScoringContext(model, targets, batches, loss_fn, collected, seed, show_progress)
    return crit.score(ctx)


def score_groups(
    model: nn.Module,
    crit: Criterion,
    groups: list[Group],
    data: Iterable[Batch] | None,
    loss_fn: LossFn | None,
    seed: int,
    scores: Mapping[str, torch.Tensor] | None,
    reduction: str,
    show_progress: bool,
) -> torch.Tensor:
    """One importance per group (NaN where nothing scores it: such groups are left alone)."""
    if crit.scores_groups:
        batches = list(as_batches(data, f"data (criterion {crit.name!r} needs it)"))
        return crit.score_groups(model, groups, batches, loss_fn or default_loss)
    if scores is None:
        # layers the criterion cannot read (an RNN for an input-statistics criterion) go
        # unscored: their groups are left alone rather than failing the whole prune
        scorable = {
            name: t for name, t in find_targets(model).items() if stats.can_collect(t, crit.needs)
        }
        scores = score_targets(model, crit, scorable, data, loss_fn, seed, show_progress)
    return group_scores(model, groups, scores, reduction)


REDUCTIONS = ("mean", "sum", "max")


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
    sizes: list[float] = []  # weights behind each value of a slice
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
    positions = offset[key[scored]] + index[scored]
    result = torch.zeros(len(groups), dtype=torch.float64)
    count = torch.zeros(len(groups), dtype=torch.float64)
    if len(owners):
        picked = torch.cat(values)[torch.from_numpy(positions)]
        if reduce == "max":
            result.scatter_reduce_(0, owners, picked, "amax")
        else:
            result.index_add_(0, owners, picked)
        weights = np.repeat(sizes, [len(v) for v in values])[positions]
        count.index_add_(0, owners, torch.from_numpy(weights))
    if reduce == "mean":
        result = result / count.clamp_min(1)
    return result.masked_fill(count == 0, torch.nan)  # nothing scored: not a candidate


def _slice_reductions(
    module: nn.Module, role: str, scores: Mapping[str, torch.Tensor], prefix: str, reduce: str
) -> tuple[torch.Tensor, float] | None:
    """Per index of ``role``: the sum (or max) of the weight scores it owns (float64, on the
    CPU), and how many weights each index owns; None when no score covers the slice. Few
    torch calls per slice: a model has hundreds of slices."""
    layout = layout_for(module, role)
    n = layout.size(module)
    whole = scores.get(f"{prefix[:-1]}::{role}")  # a criterion that scores channels directly
    if whole is not None:
        return whole.detach().double().cpu(), 1.0
    value = None
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
            part = split.amax(others).double().cpu()
            value = part if value is None else torch.maximum(value, part)
        else:
            at_least_single = torch.promote_types(split.dtype, torch.float32)
            part = split.sum(others, dtype=at_least_single).double().cpu()
            value = part if value is None else value + part
        size += split.numel() // n
    return (value, float(size)) if size else None
