"""One prune step's keep-masks: the criterion's scores ranked as the options say, or, for a
criterion that picks the weights itself as it compensates, only how many each layer loses.

SparseGPT-style OBS on a wide layer chooses its own weights column block by column block;
the masks it is handed only set each layer's count. Where those counts do not depend on the
scores (every layer's share is its own), scoring is skipped: for a language model that is one
pass of the data per layer saved, and one Hessian inverse per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from sensiprune import criteria
from sensiprune.options import PruneOptions
from sensiprune.selection import unstructured
from sensiprune.selection.unstructured import Sparsity
from sensiprune.targets import Target


def choose(
    crit: criteria.Criterion,
    targets: dict[str, Target],
    sparsity: Sparsity,
    options: PruneOptions,
    existing: Mapping[str, torch.Tensor],
    scores: Callable[[], Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Keep-masks for ``targets`` (True = kept); ``scores`` is called only where the
    criterion needs them."""

    def select(ranked: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return unstructured.select(
            ranked, targets, sparsity, options.scope, options.normalize, options.min_density,
            existing, options.nm(),
        )  # fmt: skip

    if crit.compensates and options.shares_per_layer(sparsity):
        # one zero seen at every weight (no memory): the counts, placed in index order
        counted = select(
            {name: torch.zeros(()).expand(t.param.shape) for name, t in targets.items()}
        )
        if crit.picks_own_weights(targets, counted, options.nm()):
            return counted
    return select(scores())
