"""Turning scores into masks: global, per-layer, per-row ranking or an explicit budget.

Scores of different layers are not on one scale. Global ranking can compare them raw
(``normalize="none"``, the classic), divided by the layer's L2 norm (``"l2"``), or as LAMP
scores (``"lamp"``, Lee et al. 2021: s_u / Σ_{v ≥ u} s_v over the layer's sorted scores, which
ranks a weight by the share of the layer's remaining importance that removing it costs).
Whatever the scope, exactly round(sparsity x n) weights are pruned, already-pruned weights stay
pruned and count towards the target, and no layer drops below ``min_density``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from sensiprune.errors import SensipruneError
from sensiprune.smallest import smallest
from sensiprune.targets import Target, resolve_layer_names

SCOPES = ("global", "layer", "row")
NORMALIZATIONS = ("none", "l2", "lamp")
Sparsity = float | Mapping[str, float]


def check_sparsity(sparsity: object) -> None:
    """Validate at the edge: a float in [0, 1) or a {layer: float in [0, 1)} dict."""
    if isinstance(sparsity, Mapping):
        if not sparsity:
            raise SensipruneError("the sparsity budget is an empty dict: name at least one layer")
        for layer, value in sparsity.items():
            _check_fraction(value, f"sparsity[{layer!r}]")
        return
    _check_fraction(sparsity, "sparsity")


def _check_fraction(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SensipruneError(f"{what} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0 or math.isnan(float(value)):
        raise SensipruneError(
            f"{what} must be in [0, 1) (the fraction of weights to remove), got {value!r}"
        )


def select(
    scores: Mapping[str, torch.Tensor],
    targets: Mapping[str, Target],
    sparsity: Sparsity,
    scope: str = "global",
    normalize: str = "lamp",
    min_density: float = 0.01,
    existing: Mapping[str, torch.Tensor] | None = None,
    pattern: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks for every target (True = kept); with an N:M ``pattern``, the N
    lowest-scored of every M consecutive inputs of each row."""
    if scope not in SCOPES:
        raise SensipruneError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if normalize not in NORMALIZATIONS:
        raise SensipruneError(
            f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
        )
    if not 0.0 <= min_density <= 1.0:
        raise SensipruneError(f"min_density must be in [0, 1], got {min_density!r}")

    def ranked(name: str) -> torch.Tensor:  # one layer's at a time, but for a global ranking
        return _rankable(name, scores[name], existing)

    if pattern is not None:
        return {name: _prune_pattern(ranked(name), *pattern, name) for name in targets}
    if isinstance(sparsity, Mapping):
        chosen = resolve_layer_names(targets, sparsity)
        per_target = {t: float(sparsity[user]) for user, hits in chosen.items() for t in hits}
        return {
            name: _prune_lowest(ranked(name), per_target.get(name, 0.0), min_density, name)
            if name in per_target
            else _keep_existing(ranked(name))
            for name in targets
        }
    if scope == "layer":
        return {n: _prune_lowest(ranked(n), sparsity, min_density, n) for n in targets}
    if scope == "row":
        return {n: _prune_lowest_per_row(ranked(n), sparsity, min_density, n) for n in targets}
    return _prune_global({n: ranked(n) for n in targets}, sparsity, normalize, min_density)


def _rankable(
    name: str, score: torch.Tensor, existing: Mapping[str, torch.Tensor] | None
) -> torch.Tensor:
    # ranking happens on the CPU, masks move back; in float32 unless the scores are float64
    # (every lower precision converts exactly: the order is the same, at half the memory)
    score = score.detach().cpu()
    score = score.double() if score.dtype == torch.float64 else score.float()
    if torch.isnan(score).any():
        raise SensipruneError(
            f"the criterion gave NaN scores for {name}: check the data and the model"
        )
    if existing is not None and name in existing:
        score = score.masked_fill(~existing[name].to(score.device), -torch.inf)
    return score


def _keep_existing(score: torch.Tensor) -> torch.Tensor:
    return score != -torch.inf


def min_kept(n: int, min_density: float) -> int:
    return 0 if min_density == 0 else max(1, math.ceil(min_density * n))


def check_shares(targets: Mapping[str, Target], sparsity: Sparsity, min_density: float) -> None:
    """Refuse, before any layer changes, a per-layer share that would leave a layer below
    ``min_density`` (the check each layer's selection makes, made for all of them first)."""
    if isinstance(sparsity, Mapping):
        resolved = resolve_layer_names(targets, sparsity)
        shares = {t: float(sparsity[user]) for user, hits in resolved.items() for t in hits}
    else:
        shares = dict.fromkeys(targets, float(sparsity))
    for name, share in shares.items():
        _count(targets[name].param.numel(), share, min_density, name)


def _count(n: int, sparsity: float, min_density: float, name: str) -> int:
    k = round(sparsity * n)
    if n - k < min_kept(n, min_density):
        raise SensipruneError(
            f"sparsity {sparsity} would leave {name} below min_density={min_density}: "
            "lower the sparsity or pass a smaller min_density"
        )
    return k


def _prune_lowest(
    score: torch.Tensor, sparsity: float, min_density: float, name: str
) -> torch.Tensor:
    k = max(_count(score.numel(), sparsity, min_density, name), int((score == -torch.inf).sum()))
    return ~smallest(score, k)


def _prune_lowest_per_row(
    score: torch.Tensor, sparsity: float, min_density: float, name: str
) -> torch.Tensor:
    rows = score.reshape(score.shape[0], -1)
    total = _count(rows.numel(), sparsity, min_density, name)
    base, extra = divmod(total, rows.shape[0])
    order = torch.argsort(rows, dim=1, stable=True)
    already = (rows == -torch.inf).sum(1)
    per_row = torch.full((rows.shape[0],), base) + (torch.arange(rows.shape[0]) < extra)
    per_row = torch.maximum(per_row, already)
    prune = torch.arange(rows.shape[1]).expand_as(rows) < per_row.unsqueeze(1)
    keep = torch.ones_like(rows, dtype=torch.bool)
    keep.scatter_(1, order, ~prune)
    return keep.reshape(score.shape)


def parse_pattern(pattern: object) -> tuple[int, int]:
    """ "N:M" as (N, M): N zeros in every M consecutive inputs, 0 < N < M."""
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        zeros, group = int(parts[0]), int(parts[1])
        if 0 < zeros < group:
            return zeros, group
    raise SensipruneError(
        f'pattern must be "N:M" with 0 < N < M (N zeros in every M consecutive inputs of a '
        f'row, such as "2:4"), got {pattern!r}'
    )


def _prune_pattern(score: torch.Tensor, zeros: int, group: int, name: str) -> torch.Tensor:
    """The ``zeros`` lowest of each ``group`` consecutive inputs of every output row (a
    convolution's row: its inputs times its kernel, as the sparse kernels lay it out); weights
    pruned before stay pruned."""
    rows = score.reshape(score.shape[0], -1)
    if rows.shape[1] % group:
        raise SensipruneError(
            f"{name}: rows of {rows.shape[1]} inputs do not split into groups of {group}; "
            "ignore that layer or choose another N:M pattern"
        )
    groups = rows.reshape(rows.shape[0], -1, group)
    order = torch.argsort(groups, dim=-1, stable=True)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :zeros], False)
    return (keep & (groups != -torch.inf)).reshape(score.shape)


def _prune_global(
    ranked: Mapping[str, torch.Tensor], sparsity: float, normalize: str, min_density: float
) -> dict[str, torch.Tensor]:
    names = list(ranked)
    sizes = [ranked[n].numel() for n in names]
    total = sum(sizes)
    protected = sum(min_kept(n, min_density) for n in sizes)
    k = round(sparsity * total)
    if k > total - protected:
        raise SensipruneError(
            f"sparsity {sparsity} cannot be reached while every layer keeps "
            f"min_density={min_density}: lower one of them"
        )
    flat = []
    for name in names:
        score = ranked[name].reshape(-1).double()  # normalised in float64: a copy
        alive = score != -torch.inf
        if alive.any():
            score[alive] = normalized(score[alive], normalize)
        keep_at_least = min_kept(score.numel(), min_density)
        if keep_at_least:
            score[torch.topk(score, keep_at_least).indices] = torch.inf
        flat.append(score)
    everything = torch.cat(flat)
    k = max(k, int((everything == -torch.inf).sum()))
    keep = torch.ones(total, dtype=torch.bool)
    keep[torch.argsort(everything, stable=True)[:k]] = False
    return {
        name: part.reshape(ranked[name].shape)
        for name, part in zip(names, torch.split(keep, sizes))
    }


def normalized(score: torch.Tensor, how: str) -> torch.Tensor:
    if how == "l2":
        return score / score.norm().clamp_min(1e-300)
    if how == "lamp":
        order = torch.argsort(score, stable=True)
        ascending = score[order]
        tail_sums = ascending.flip(0).cumsum(0).flip(0)  # Σ of every score >= this one
        lamp = torch.empty_like(score)
        lamp[order] = ascending / tail_sums.clamp_min(1e-300)
        return lamp
    return score
