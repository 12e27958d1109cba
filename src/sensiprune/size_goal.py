"""Size goals. A file-size goal: the weight sparsity whose saved file keeps a fraction of the
dense one's bytes. ``sp.save`` stores a masked weight as its kept values plus their indices or
a bitmask, so a file shrinks less than its parameter count does (a bitmask alone is 1/32 of an
fp32 tensor), and the bytes a budget saves depend on how it is spread over the layers. Either
size goal: the lower sparsity that reaches it once the units no layer reads are masked too
(``apply/dead.py``), which frees a share of the budget for weights that matter."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from sensiprune.analysis.validation import CrossValidation
from sensiprune.errors import SensipruneError
from sensiprune.io.saving import saved_bytes
from sensiprune.selection.allocation import allocate
from sensiprune.targets import IgnoreSpec, require_targets

RECLAIM_STEPS = 8  # bisection of the weights kept for a size goal with unread units masked
RECLAIM_RANGE = 3.0  # up to this many times the weights: unread units hold up to 2/3
SEARCH_STEPS = 40  # bisection of the uniform sparsity: 2^-40, far below one weight
SIZE_TRIES = 4  # corrections of a cross-validated budget whose file misses the goal
SLACK = 0.01  # a budget this far under the goal is close enough
PUSH = 0.005  # each correction keeps this much less again than the miss asks, times its number


def file_sparsity(model: nn.Module, kept: float, ignore: IgnoreSpec = ()) -> float:
    """The sparsity, alike in every prunable weight, whose saved tensors take ``kept`` of the
    bytes of ``model``'s as they are now."""
    names = list(require_targets(model, ignore))
    dense = saved_bytes(model)
    goal = kept * dense
    floor = saved_bytes(model, dict.fromkeys(names, 1.0))  # all that pruning cannot remove
    if floor >= goal:
        raise SensipruneError(
            f"keeping {kept:.1%} of the file is out of reach: {floor:,} of its {dense:,} bytes "
            "are not prunable weights (biases, norms, embeddings, ignored layers)"
        )
    low, high = 0.0, 1.0  # saved_bytes(low) > goal >= saved_bytes(high)
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        if saved_bytes(model, dict.fromkeys(names, middle)) > goal:
            low = middle
        else:
            high = middle
    return high


def within_file_size(
    checked: CrossValidation,
    model: nn.Module,
    goal_bytes: float,
    validate: Callable[..., CrossValidation],
) -> CrossValidation:
    """The budget, validated anew where needed, whose file is the nearest under
    ``goal_bytes``: a budget spread unevenly over layers of other sizes and encodings takes
    more or fewer bytes than the same sparsity alike everywhere. Each correction scales the
    density of the prunable weights by the bytes to save (or to spare, past ``SLACK``), and
    reuses the folds' curves; where every try stays over the goal, the last stands (the
    result's ``bytes_kept`` says what it reached)."""
    table = checked.table
    floor = saved_bytes(model, dict.fromkeys(table.layers, 1.0))
    best = None  # (bytes, validation) of the largest budget under the goal
    for tries in range(1, SIZE_TRIES + 2):
        # a pruned model masks every weight, those the budget leaves whole too
        predicted = saved_bytes(model, {n: checked.budget.get(n, 0.0) for n in table.layers})
        if predicted <= goal_bytes and (best is None or predicted > best[0]):
            best = (predicted, checked)
        if (1.0 - SLACK) * goal_bytes <= predicted <= goal_bytes or tries > SIZE_TRIES:
            break
        ratio = (goal_bytes - floor) / (predicted - floor)
        if predicted > goal_bytes:  # whole weights: push past the miss, further each try
            ratio *= 1.0 - PUSH * tries
        density = (1.0 - table.overall_sparsity(checked.budget)) * ratio
        checked = validate(target_sparsity=max(0.0, 1.0 - density), table=table,
                           fold_tables=checked.fold_tables)  # fmt: skip
    return best[1] if best is not None else checked


def reclaimed(
    checked: CrossValidation,
    size: Callable[[dict[str, float]], float],
    goal: float,
    validate: Callable[[float], CrossValidation],
) -> CrossValidation:
    """The budget, validated anew, that keeps the most weights while its ``size`` (of the
    model pruned to it, with the units no layer reads masked) stays under ``goal``, within
    ``SLACK`` where the search gets there. Masking unread units removes a share of what a
    budget keeps that depends on which units its weights feed, so the size is not monotone
    in the weights kept: bisected (geometrically, between the kept share of ``checked``,
    under the goal, and ``RECLAIM_RANGE`` times it), the largest size under the goal kept;
    ``checked`` stands where no try is under the goal."""
    table = checked.table
    low = 1.0 - table.overall_sparsity(checked.budget)  # weights kept, under the goal
    high = min(1.0, low * RECLAIM_RANGE)
    best = None  # (size, weights kept) of the largest try under the goal
    for _ in range(RECLAIM_STEPS):
        middle = math.sqrt(low * high)
        reached = size(dict(allocate(table, target_sparsity=1.0 - middle)))
        if reached > goal:
            high = middle
            continue
        low = middle
        if best is None or reached > best[0]:
            best = (reached, middle)
        if reached >= (1.0 - SLACK) * goal:
            break
    return checked if best is None else validate(1.0 - best[1])
