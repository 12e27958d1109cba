"""One prune step's keep-masks: the criterion's scores ranked as the options say, or, for a
criterion that picks the weights itself as it compensates, only how many each layer loses.

SparseGPT-style OBS on a wide layer chooses its own weights column block by column block;
the masks it is handed only set each layer's count. Where those counts do not depend on the
scores (every layer's share is its own), scoring is skipped: for a language model that is one
pass of the data per layer saved, and one Hessian inverse per layer. Where every layer's
share is its own, layers are also scored and ranked one at a time: one layer's scores held.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from sensiprune import criteria
from sensiprune.options import PruneOptions
from sensiprune.selection import unstructured
from sensiprune.selection.unstructured import Sparsity
from sensiprune.targets import Target, resolve_layer_names

Scorer = Callable[[dict[str, Target]], Mapping[str, torch.Tensor]]


def choose(
    crit: criteria.Criterion,
    targets: dict[str, Target],
    sparsity: Sparsity,
    options: PruneOptions,
    existing: Mapping[str, torch.Tensor],
    scores: Scorer,
) -> dict[str, torch.Tensor]:
    """Keep-masks for ``targets`` (True = kept). ``scores(subset)`` gives the scores of
    (at least) the targets in ``subset``; it is called only where they are needed."""

    def select(
        ranked: Mapping[str, torch.Tensor], subset: dict[str, Target], share: Sparsity
    ) -> dict[str, torch.Tensor]:
        return unstructured.select(
            ranked, subset, share, options.scope, options.normalize, options.min_density,
            existing, options.nm(),
        )  # fmt: skip

    if not options.shares_per_layer(sparsity):
        return select(scores(targets), targets, sparsity)
    if isinstance(sparsity, Mapping):  # a layer it does not know is refused before scoring
        resolve_layer_names(targets, sparsity)
    if crit.compensates:
        # one zero seen at every weight (no memory): the counts, placed in index order
        zeros = {name: torch.zeros(()).expand(t.param.shape) for name, t in targets.items()}
        counted = select(zeros, targets, sparsity)
        if crit.picks_own_weights(targets, counted, options.nm()):
            return counted
        del counted
    chosen: dict[str, torch.Tensor] = {}
    for name, target in targets.items():
        one = {name: target}
        chosen.update(select(scores(one), one, _share_of(sparsity, target)))
    return chosen


def _share_of(sparsity: Sparsity, target: Target) -> Sparsity:
    """One target's share: a fraction as it is; of a budget, the entries that name it (none:
    it keeps what it has)."""
    if not isinstance(sparsity, Mapping):
        return sparsity
    return {key: value for key, value in sparsity.items() if key in (target.layer, target.name)}
