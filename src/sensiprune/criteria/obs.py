"""Optimal Brain Surgeon, one layer at a time, with compensation of the remaining weights.

Hassibi & Stork 1993 remove the weight q with the least w_q² / [H⁻¹]_qq and move the others by
δw = −(w_q / [H⁻¹]_qq) · H⁻¹[:, q]. For a layer y = W x the Hessian of the squared output error
is shared by all rows, H = X Xᵀ (Frantar & Alistarh 2022, "Optimal Brain Compression"), so
every row is pruned greedily with its own running inverse, all rows in one batched tensor.

Two refinements make the difference on small networks:
- bias correction: the bias is an extra input column of ones that is never removed, so it
  absorbs the mean error of the removed weights;
- sequential reconstruction: each layer is fitted to the *dense* model's output of that layer
  given the inputs the already-pruned preceding layers produce. The least-squares refit
  W' = W XᵀX̃ H̃⁻¹ is exact, and ‖W X − Ŵ X̃‖² = const + ‖(W' − Ŵ) X̃‖², so OBS on
  (W', H̃) minimises the true error.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress

import torch
from torch import nn

from sensiprune import memory
from sensiprune.criteria.base import Criterion, register
from sensiprune.criteria.sparsegpt import prune_blocked, upper_factor
from sensiprune.criteria.stats import ParamStats, Stat, precise
from sensiprune.data import Batch, LossFn
from sensiprune.errors import SensipruneError
from sensiprune.handlers.base import input_matrix_of
from sensiprune.modes import eval_mode
from sensiprune.progress import progress
from sensiprune.targets import Target

DAMPING = 0.01  # of the mean diagonal of H, as in SparseGPT; keeps H invertible
# rows x removed x columns² above which a layer is pruned blocked (sparsegpt.py), not exactly:
# about a minute of exact OBS on 2 cores
EXACT_BUDGET = 5e10
_MAX_BATCHED_ELEMENTS = 1 << 25  # rows x columns² held at once while pruning
_REFIT_ROWS = 256  # rows of a layer refitted at once
# dense inputs up to this size are kept for every group whatever the layers' size (a small
# model's; a language model's are bounded by its largest second-moment matrix)
_CACHE_FLOOR = 64 << 20


def damped_inverse(cov: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """(H + λI)⁻¹ on the CPU, in H's dtype (stats.precise: float64, or float32 for 16-bit
    models), through its Cholesky factor, computed in place: one matrix held beside H, where
    ``inv`` holds three (an identity, an LU copy and the result). ``overwrite`` turns H
    itself into the inverse: a language model's layer then holds one such matrix, not two."""
    inverse = cov.detach() if overwrite and cov.device.type == "cpu" else cov.detach().cpu().clone()
    inverse.diagonal().add_(DAMPING * inverse.diagonal().mean().clamp_min(1e-12))
    info = torch.empty((), dtype=torch.int32)
    # LAPACK works on column-major matrices, and torch copies a row-major ``out`` into one;
    # H is symmetric, so its transpose is the same matrix, already column-major: no copy
    columns = inverse.mT
    torch.linalg.cholesky_ex(columns, out=(columns, info))
    if int(info) != 0:
        if overwrite:
            raise SensipruneError(
                "a layer's input second moments are not positive definite even damped: use "
                "more calibration data, or criterion='activation'"
            )
        damped = cov.detach().cpu().clone()
        damped.diagonal().add_(DAMPING * damped.diagonal().mean().clamp_min(1e-12))
        return torch.linalg.inv(damped)
    torch.cholesky_inverse(columns, out=columns)
    return inverse


def obs_saliency(weight: torch.Tensor, stats: ParamStats) -> torch.Tensor:
    """w_q² / [H⁻¹]_qq: the output-error increase of removing each weight alone."""
    assert stats.input_cov is not None
    # the statistics are this scoring's own: the inverse takes their place (one matrix held)
    inverse_diag = damped_inverse(stats.input_cov, overwrite=True).diagonal()
    stats.input_cov = None
    rows = weight.detach().to(inverse_diag.dtype).cpu().reshape(weight.shape[0], -1)
    return (rows.pow(2) / inverse_diag).to(weight.dtype).reshape(weight.shape)


def prune_rows(
    weight: torch.Tensor,
    hessian_inverse: torch.Tensor,
    counts: torch.Tensor,
    frozen: int = 0,
    pruned_before: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS per row: remove ``counts[r]`` weights of row r, updating the rest.

    ``weight`` is (rows, columns) in the algebra's dtype (stats.precise); the last ``frozen``
    columns (the bias) are updated but never removed; weights marked in ``pruned_before`` are
    removed first, so a pruned weight is never revived. Returns the new weights and the
    boolean mask of kept weights.
    """
    ((result, kept),) = prune_rows_levels(
        weight, hessian_inverse, counts[None], frozen, pruned_before
    )
    return result, kept


def prune_rows_levels(
    weight: torch.Tensor,
    hessian_inverse: torch.Tensor,
    counts: torch.Tensor,
    frozen: int = 0,
    pruned_before: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`prune_rows` to several levels in one greedy pass: ``counts`` is (levels, rows),
    and each level's weights and mask are those a pass stopped at its counts would give.
    A row's greedy choices do not depend on where it stops, so a sensitivity curve costs
    its sparsest point's pass, not the sum over its points."""
    rows, cols = weight.shape
    if pruned_before is None:
        pruned_before = torch.zeros(rows, cols, dtype=torch.bool)
    levels = [(weight.clone(), torch.ones(rows, cols, dtype=torch.bool)) for _ in counts]
    chunk = max(1, _MAX_BATCHED_ELEMENTS // (cols * cols))
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        snapshots = _prune_chunk(
            weight[start:stop].clone(),
            hessian_inverse,
            counts[:, start:stop],
            frozen,
            pruned_before[start:stop].clone(),
        )
        for (result, kept), (w, k) in zip(levels, snapshots):
            result[start:stop], kept[start:stop] = w, k
    return levels


def _prune_chunk(
    w: torch.Tensor,
    hessian_inverse: torch.Tensor,
    counts: torch.Tensor,
    frozen: int,
    first: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Greedy OBS on a chunk of rows (``counts``: levels x rows); each level's weights and
    kept-mask. Every row still pruning loses one column a step, so all of them hold the
    same number of live columns: once a quarter of the held ones are removed, the finished
    rows are let go and the rest compacted to their live columns, and each rank-1 downdate
    costs the live columns², not all columns² (about half the time pruning to 95%)."""
    rows, cols = w.shape
    most = counts.max(0).values
    snapshots = [(w.clone(), torch.ones(rows, cols, dtype=torch.bool)) for _ in counts]
    ids = torch.arange(rows)  # the chunk's rows still held
    live = torch.arange(cols).expand(rows, cols)  # the columns each held row still holds
    hinv = hessian_inverse.expand(rows, cols, cols).clone()
    removable = torch.ones(rows, cols, dtype=torch.bool)
    if frozen:
        removable[:, cols - frozen :] = False
    kept = torch.ones(rows, cols, dtype=torch.bool)
    held = cols  # columns held per row since the last compaction

    def snapshot(removed: int) -> None:  # the rows whose level stops at ``removed``
        for (level_w, level_kept), level_counts in zip(snapshots, counts):
            done = level_counts[ids] == removed
            if done.any():
                full_w = torch.zeros(int(done.sum()), cols, dtype=w.dtype)
                full_kept = torch.zeros(int(done.sum()), cols, dtype=torch.bool)
                level_w[ids[done]] = full_w.scatter_(1, live[done], w[done])
                level_kept[ids[done]] = full_kept.scatter_(1, live[done], kept[done])

    arange = torch.arange(rows)
    for step in range(int(most.max().item()) if rows else 0):
        if 4 * (held - (cols - step)) >= held:  # a quarter of the held columns are gone
            stay = most[ids] > step
            alive = kept[stay].nonzero()[:, 1].view(int(stay.sum()), cols - step)
            ids, live = ids[stay], live[stay].gather(1, alive)
            w, kept = w[stay].gather(1, alive), kept[stay].gather(1, alive)
            first, removable = first[stay].gather(1, alive), removable[stay].gather(1, alive)
            kept_rows = stay.nonzero()[:, 0]  # one new matrix, smaller than the last
            hinv = hinv[kept_rows[:, None, None], alive[:, :, None], alive[:, None, :]]
            held, arange = cols - step, torch.arange(len(ids))
        active = most[ids] > step
        diag = hinv.diagonal(dim1=1, dim2=2)
        saliency = w.pow(2) / diag
        saliency[first] = -torch.inf
        saliency[~removable] = torch.inf
        q = saliency.argmin(dim=1)
        pivot = diag[arange, q]
        column = hinv[arange, :, q]  # (rows, cols): H⁻¹[:, q] of each row
        scale = torch.where(active, w[arange, q] / pivot, torch.zeros_like(pivot))
        w -= scale.unsqueeze(1) * column
        downdate = torch.where(active, 1.0 / pivot, torch.zeros_like(pivot))
        hinv.baddbmm_((column * -downdate.unsqueeze(1)).unsqueeze(2), column.unsqueeze(1))
        rows_now = arange[active]
        w[rows_now, q[active]] = 0.0
        removable[rows_now, q[active]] = False
        first[rows_now, q[active]] = False
        kept[rows_now, q[active]] = False
        # A removed column must never be chosen again nor move: pin its inverse to identity.
        hinv[rows_now, q[active], :] = 0.0
        hinv[rows_now, :, q[active]] = 0.0
        hinv[rows_now, q[active], q[active]] = 1.0
        snapshot(step + 1)
    return snapshots


class OptimalBrainSurgeon(Criterion):
    """Scores by w²/[H⁻¹]_qq; when pruning, also moves the remaining weights (see module doc)."""

    compensates = True
    fills_patterns = True

    def __init__(self) -> None:
        super().__init__(
            "obs",
            "w²/[H⁻¹]_qq, compensated: layer-wise Optimal Brain Surgeon (Hassibi & Stork 1993)",
            needs=[Stat.INPUT_COV],
            per_param=obs_saliency,
        )

    def compensate(
        self,
        model: nn.Module,
        targets: dict[str, Target],
        masks: dict[str, torch.Tensor],
        existing: dict[str, torch.Tensor],
        batches: Sequence[Batch],
        loss_fn: LossFn,
        show_progress: bool = False,
        pattern: tuple[int, int] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Prune each layer to the per-row counts of ``masks`` with OBS, layer after layer;
        with an N:M ``pattern``, N of every M consecutive inputs, chosen as SparseGPT does.

        Weights pruned before (``existing`` masks) are removed first and stay removed.

        Works on a copy: returns (new masks, new weights and biases by parameter name), and the
        caller writes them into the model, so a failure leaves the model untouched.
        """
        pruned = copy.deepcopy(model).eval()
        new_masks: dict[str, torch.Tensor] = {}
        new_tensors: dict[str, torch.Tensor] = {}
        modules = dict(pruned.named_modules())
        counts = _row_counts(targets, masks)
        exact = pattern is None and _exact_cost(targets, counts) <= EXACT_BUDGET
        with eval_mode(model) as dense:
            groups, once = _execution_groups(dense, targets, batches[0], loss_fn)
            # the dense model's inputs never change: caught once where they fit (the groups
            # then run only the pruned copy), else the dense model runs with every group
            cached = _dense_inputs(dense, targets, groups, batches, loss_fn, exact, once)
            for group in progress(groups, "OBS layer by layer", show_progress):
                dense_inputs = None if cached is None else {n: cached.pop(n) for n in group}
                group = [name for name in group if counts[name].sum() > 0]
                if not group:
                    continue
                layers = {name: modules[targets[name].layer] for name in group}
                moments = _layer_moments(
                    {name: targets[name].module for name in group},
                    layers, dense, pruned, batches, loss_fn, exact, stop_early=once,
                    dense_inputs=dense_inputs,
                )  # fmt: skip
                for shared in _sharing(moments):
                    solver, weights = _solve(layers, moments, shared, exact)
                    for name in shared:
                        before = existing.get(name)
                        kept = _prune_layer(
                            layers[name],
                            weights.pop(name),
                            solver,
                            counts[name],
                            None if before is None else ~before.cpu().reshape(before.shape[0], -1),
                            pattern,
                            exact,
                        )
                        new_masks[name] = kept
                        # the copy's own parameters: no second copy of the block's weights
                        new_tensors[name] = layers[name].weight.detach()
                        if getattr(layers[name], "bias", None) is not None:
                            layer_name = targets[name].layer
                            bias_name = f"{layer_name}.bias" if layer_name else "bias"
                            new_tensors[bias_name] = layers[name].bias.detach()
                        memory.give_back()
                    del solver, weights  # before the next layers' moments are collected
        return new_masks, new_tensors

    def compensate_levels(
        self,
        model: nn.Module,
        target: Target,
        keeps: Sequence[torch.Tensor],
        batches: Sequence[Batch],
        loss_fn: LossFn,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The levels exact OBS prunes (its cost grows with the count, so they come first)
        from one greedy pass, bit for bit what one :meth:`compensate` each gives; the rest
        one by one, blocked."""
        name = target.name
        counts = [_row_counts({name: target}, {name: keep})[name] for keep in keeps]
        exact = sum(_exact_cost({name: target}, {name: c}) <= EXACT_BUDGET for c in counts)
        shared = exact if exact > 1 else 0
        if shared:
            yield from _levels_in_one_pass(model, target, torch.stack(counts[:shared]),
                                           batches, loss_fn)  # fmt: skip
        yield from super().compensate_levels(model, target, keeps[shared:], batches, loss_fn)

    def picks_own_weights(
        self,
        targets: dict[str, Target],
        masks: dict[str, torch.Tensor],
        pattern: tuple[int, int] | None,
    ) -> bool:
        """Blocked OBS (and any N:M pattern) picks the weights itself; exact OBS keeps each
        row's count. Blocked is certain where even the cheapest spread of the counts over
        the rows (as even as it gets) costs more than the exact budget."""
        counts = _row_counts(targets, masks)
        return pattern is not None or _exact_cost(targets, counts, spread=True) > EXACT_BUDGET


def _algebra(dtype: torch.dtype, exact: bool) -> torch.dtype:
    """The dtype of a layer's OBS algebra: blocked OBS runs in float32, as SparseGPT does
    (half the time and memory of float64, and each column's error is pushed on once);
    exact greedy OBS, which downdates its inverse hundreds of times, in stats.precise's."""
    return precise(dtype) if exact else torch.float32


def _row_counts(
    targets: dict[str, Target], masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """How many weights each row of each target loses."""
    return {n: (~m).reshape(m.shape[0], -1).sum(1) for n, m in masks.items() if n in targets}


def _exact_cost(
    targets: dict[str, Target], counts: dict[str, torch.Tensor], spread: bool = False
) -> float:
    """rows x removed x columns² of exact greedy OBS over every layer it is given: the whole
    model's cost decides, not one layer's (a decoder of small layers adds up to hours).
    The most a row loses sets a layer's steps; ``spread`` takes the mean instead (the
    least the cost can be, wherever the counts fall)."""
    total = 0.0
    for name, per_row in counts.items():
        weight = targets[name].param
        columns = weight[0].numel() + 1
        steps = float(per_row.float().mean() if spread else per_row.max())
        total += weight.shape[0] * steps * columns * columns
    return total


def _sharing(
    moments: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
) -> list[list[str]]:
    """The layers of a group by the second moments they share (layers that read one input
    and see it as one matrix share one H̃, so one inverse)."""
    shared: dict[int, list[str]] = {}
    for name, (h, _) in moments.items():
        shared.setdefault(id(h), []).append(name)
    return list(shared.values())


def _solve(
    layers: dict[str, nn.Module],
    moments: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
    names: list[str],
    exact: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """For layers sharing one H̃: H̃⁻¹ (exact OBS) or its upper factor (blocked), computed
    once, and each layer's weight to prune as (outputs, inputs + bias), refitted to the dense
    layer's output where the inputs differ from the dense model's (W' = K H̃⁻¹). The moments
    are let go as they are used, and H̃ becomes its inverse in place."""
    hinv = damped_inverse(moments[names[0]][0], overwrite=True)
    weights = {}
    for name in names:
        _, cross = moments.pop(name)
        layer = layers[name]
        if cross is None:
            weights[name] = augmented_weight(layer, _algebra(layer.weight.dtype, exact))
        else:  # K H̃⁻¹ in K's own memory, a slab of rows at a time: no second matrix held
            for start in range(0, cross.shape[0], _REFIT_ROWS):
                cross[start : start + _REFIT_ROWS] = cross[start : start + _REFIT_ROWS] @ hinv
            weights[name] = cross
        del cross
    return (hinv if exact else upper_factor(hinv, overwrite=True)), weights


def _prune_layer(
    layer: nn.Module,
    weight: torch.Tensor,
    solver: torch.Tensor,
    counts: torch.Tensor,
    pruned_before: torch.Tensor | None,
    pattern: tuple[int, int] | None,
    exact: bool,
) -> torch.Tensor:
    """Prune one layer's augmented ``weight`` with ``solver`` (H̃⁻¹ for exact OBS, its
    upper factor for blocked), write the result into ``layer``, and return its keep-mask."""
    has_bias = getattr(layer, "bias", None) is not None
    if pruned_before is not None and has_bias:
        pruned_before = torch.cat([pruned_before, torch.zeros_like(pruned_before[:, :1])], 1)
    frozen = 1 if has_bias else 0
    if exact:
        new, kept = prune_rows(weight, solver, counts, frozen, pruned_before)
    else:  # too long for exact greedy OBS, or N:M groups: blocked, with one shared factor
        count = int(counts.sum())
        new, kept = prune_blocked(weight, solver, count, frozen, pruned_before, pattern, True)
    with torch.no_grad():
        for attr, value in _layer_tensors(layer, new).items():
            getattr(layer, attr).copy_(value)
    return kept[:, : layer.weight[0].numel()].reshape(layer.weight.shape)


def _layer_tensors(layer: nn.Module, augmented: torch.Tensor) -> dict[str, torch.Tensor]:
    """An augmented (outputs, inputs + bias) matrix as the layer's weight and bias."""
    cols = layer.weight[0].numel()
    tensors = {"weight": augmented[:, :cols].reshape(layer.weight.shape)}
    if getattr(layer, "bias", None) is not None:
        tensors["bias"] = augmented[:, cols]
    return {attr: value.to(getattr(layer, attr)) for attr, value in tensors.items()}


def _levels_in_one_pass(
    model: nn.Module,
    target: Target,
    counts: torch.Tensor,
    batches: Sequence[Batch],
    loss_fn: LossFn,
) -> Iterator[dict[str, torch.Tensor]]:
    """``target``'s layer alone pruned by exact greedy OBS to each row of ``counts``
    (levels x rows) in one pass: its new tensors by parameter name, level by level. Alone,
    the layer reads the dense inputs, so no refit."""
    layer, name = target.module, target.name
    with eval_mode(model):
        _, once = _execution_groups(model, {name: target}, batches[0], loss_fn)
        moments = _layer_moments({name: layer}, {name: layer}, model, model, batches, loss_fn,
                                 exact=True, stop_early=once)  # fmt: skip
    solver, weights = _solve({name: layer}, moments, [name], exact=True)
    frozen = 1 if getattr(layer, "bias", None) is not None else 0
    prefix = f"{target.layer}." if target.layer else ""
    for new, _ in prune_rows_levels(weights.pop(name), solver, counts, frozen):
        yield {prefix + attr: value for attr, value in _layer_tensors(layer, new).items()}


class _Captured(Exception):
    """Raised by the last hook a pass needs: the rest of the model need not run."""


class _Inputs:
    """Pre-hooks on some layers that catch, in one pass, the matrix each layer multiplies
    its weight by (rows in the OBS algebra's dtype, a column of ones for a bias); with
    ``stop_early`` the pass stops once every layer has been reached."""

    def __init__(self, layers: dict[str, nn.Module], exact: bool, stop_early: bool) -> None:
        self.layers, self.exact, self.stop_early = layers, exact, stop_early
        self.caught: dict[str, torch.Tensor] = {}
        self.active = False  # only in its own runs (another may run the same modules)
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not self.active:
                return
            rows = input_matrix_of(module, "weight").matrix(module, args[0].detach())
            rows = rows.to(_algebra(rows.dtype, self.exact)).cpu()
            if getattr(module, "bias", None) is not None:
                rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)
            held = self.caught.get(name)
            self.caught[name] = rows if held is None else torch.cat([held, rows])
            if self.stop_early and len(self.caught) == len(self.layers):
                raise _Captured

        return hook

    def run(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """Every layer's input matrix on ``batch``."""
        self.caught, self.active = {}, True
        try:
            with torch.no_grad(), suppress(_Captured):
                loss_fn(model, batch)
        finally:
            self.active = False
        return self.caught

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _dense_inputs(
    dense: nn.Module,
    targets: dict[str, Target],
    groups: list[list[str]],
    batches: Sequence[Batch],
    loss_fn: LossFn,
    exact: bool,
    stop_early: bool,
) -> dict[str, list[torch.Tensor | None]] | None:
    """Every target's dense input matrix on every batch, from one pass of the dense model,
    where they take no more memory than the largest layer's H̃ will, or than
    ``_CACHE_FLOOR`` (None otherwise: each group's moments then run the dense model again).
    Layers of one execution group that read their input as one matrix hold one matrix; each
    is let go once its moments used it."""
    largest = max(
        (t.param[0].numel() + 1) ** 2 * _algebra(t.param.dtype, exact).itemsize
        for t in targets.values()
    )
    limit = max(largest, _CACHE_FLOOR)
    inputs = _Inputs({name: t.module for name, t in targets.items()}, exact, stop_early)
    held: dict[str, list[torch.Tensor | None]] = {name: [] for name in targets}
    try:
        for batch in batches:
            caught = inputs.run(dense, batch, loss_fn)
            if len(caught) < len(targets):
                return None  # a layer this batch never reached: the groups run it again
            caught = _deduplicated(caught, groups)
            size = sum(x.numel() * x.itemsize for x in {id(x): x for x in caught.values()}.values())
            if size * len(batches) > limit:
                return None
            for name, rows in caught.items():
                held[name].append(rows)
    finally:
        inputs.remove()
    return held


def _deduplicated(
    caught: dict[str, torch.Tensor], groups: list[list[str]]
) -> dict[str, torch.Tensor]:
    """The same matrices, each equal to an earlier one of its group replaced by it (held
    once); only layers of one group read one tensor, so only they are compared."""
    owner = {name: first for group in groups for name, first in _owners(group, caught).items()}
    return {name: caught[owner[name]] for name in caught}


def _layer_moments(
    dense_layers: dict[str, nn.Module],
    layers: dict[str, nn.Module],
    dense: nn.Module,
    pruned: nn.Module,
    batches: Sequence[Batch],
    loss_fn: LossFn,
    exact: bool,
    stop_early: bool = False,
    dense_inputs: dict[str, list[torch.Tensor | None]] | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per layer, H̃ = X̃ᵀX̃ / n and, where the pruned inputs X̃ differ from the dense X,
    K = W XᵀX̃ / n = Σ (X Wᵀ)ᵀ X̃ / n, the dense layer's outputs against the pruned inputs
    (the refit is W' = K H̃⁻¹; K is rows x columns, no larger than the weight, where XᵀX̃
    would be columns²). One pass of each model for layers that read one input (none of the
    dense model where ``dense_inputs`` holds its inputs by batch); with ``stop_early``
    (every layer runs once per pass), each pass stops as soon as the layers have read their
    inputs: the first layers of a block cost next to nothing. Layers that read one input as
    one matrix get the same H̃ tensor (see :func:`_sharing`)."""
    pruned_inputs = _Inputs(layers, exact, stop_early)
    dense_run = None if dense_inputs is not None else _Inputs(dense_layers, exact, stop_early)
    owner: dict[str, str] = {}  # the layer whose H̃ each layer shares (its own, or an earlier)
    hessians: dict[str, torch.Tensor | int] = {}
    cross: dict[str, torch.Tensor | int | None] = dict.fromkeys(layers)  # None while X̃ = X
    rows = 0
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                xts = pruned_inputs.run(pruned, batch, loss_fn)
                if dense_run is not None:
                    xs = dense_run.run(dense, batch, loss_fn)
                else:
                    xs = {name: dense_inputs[name][index] for name in layers}
                    for name in layers:  # used once: let go with this batch
                        dense_inputs[name][index] = None
                owner = owner or _owners(layers, xts)
                for name in layers:
                    x, xt = xs[name], xts[name]
                    if cross[name] is None and not torch.equal(x, xt):  # K = W H̃ up to here
                        so_far = hessians.get(owner[name])
                        dense_layer = dense_layers[name]
                        cross[name] = 0 if so_far is None else _times_weight(dense_layer, so_far)
                    if cross[name] is not None:
                        outputs = _times_weight(dense_layers[name], x.T)  # (X W̃ᵀ)ᵀ
                        cross[name] = _add_product(cross[name], outputs, xt)
                for name in dict.fromkeys(owner.values()):
                    hessians[name] = _add_product(hessians.get(name, 0), xts[name].T, xts[name])
                rows += xts[next(iter(layers))].shape[0]
    finally:
        pruned_inputs.remove()
        if dense_run is not None:
            dense_run.remove()
    for h in hessians.values():
        h.div_(rows)
    return {
        name: (hessians[owner[name]], None if cross[name] is None else cross[name].div_(rows))
        for name in layers
    }


def _owners(names: Iterable[str], caught: dict[str, torch.Tensor]) -> dict[str, str]:
    """For each name, the first whose caught matrix (on this batch) is its own: layers that
    read one tensor as one matrix (query, key and value) share one H̃."""
    owner: dict[str, str] = {}
    for name in names:
        rows = caught[name]
        owner[name] = next(
            (
                first
                for first in dict.fromkeys(owner.values())
                if caught[first].shape == rows.shape and torch.equal(caught[first], rows)
            ),
            name,
        )
    return owner


def augmented_weight(
    layer: nn.Module, dtype: torch.dtype, rows: slice = slice(None)
) -> torch.Tensor:
    """The layer's weight as (outputs, inputs) on the CPU in ``dtype``, its bias (if any) as
    one more column: the matrix OBS works on (``rows`` of it)."""
    weight = layer.weight.detach()[rows].to(dtype).cpu().reshape(-1, layer.weight[0].numel())
    if getattr(layer, "bias", None) is None:
        return weight
    return torch.cat([weight, layer.bias.detach()[rows].to(dtype).cpu().unsqueeze(1)], dim=1)


def _times_weight(layer: nn.Module, right: torch.Tensor) -> torch.Tensor:
    """W̃ @ ``right``, W̃ the layer's augmented weight converted to ``right``'s dtype a slab
    of rows at a time: a language model's weight is never held whole in float32."""
    outputs = layer.weight.shape[0]
    product = torch.empty(outputs, right.shape[1], dtype=right.dtype)
    for start in range(0, outputs, _REFIT_ROWS):
        rows = slice(start, start + _REFIT_ROWS)
        torch.mm(augmented_weight(layer, right.dtype, rows), right, out=product[rows])
    return product


def _add_product(total: torch.Tensor | int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``total + a @ b``, in place once ``total`` is a tensor (no second matrix held)."""
    return total.addmm_(a, b) if torch.is_tensor(total) else a @ b


def _execution_groups(
    model: nn.Module, targets: dict[str, Target], batch: Batch, loss_fn: LossFn
) -> tuple[list[list[str]], bool]:
    """Targets in the order the forward pass reaches them (registration order may differ),
    those that read one input tensor together (query, key and value): pruning one of them
    cannot change what the others read, so one pass serves them all. Also whether every
    target ran exactly once (none shared between calls): a pass may then stop as soon as
    the targets it needs have run."""
    order: list[tuple[str, object]] = []  # the input itself: held, so no id is reused
    calls = dict.fromkeys(targets, 0)
    handles = []
    for name, target in targets.items():

        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            calls[name] += 1
            if calls[name] == 1:
                order.append((name, args[0]))

        handles.append(target.module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            loss_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[int, list[str]] = {}
    for name, source in order:
        groups.setdefault(id(source), []).append(name)
    reached = {name for name, _ in order}
    once = all(count == 1 for count in calls.values())
    return [*groups.values(), *([n] for n in targets if n not in reached)], once


register(OptimalBrainSurgeon())
