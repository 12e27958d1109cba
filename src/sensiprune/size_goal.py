"""A file-size goal: the weight sparsity whose saved file keeps a fraction of the dense one's
bytes. ``sp.save`` stores a masked weight as its kept values plus their indices or a bitmask,
so a file shrinks less than its parameter count does (a bitmask alone is 1/32 of an fp32
tensor), and the bytes a budget saves depend on how it is spread over the layers."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sensiprune.analysis.validation import CrossValidation
from sensiprune.errors import SensipruneError
from sensiprune.io.saving import saved_bytes
from sensiprune.targets import IgnoreSpec, require_targets

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
