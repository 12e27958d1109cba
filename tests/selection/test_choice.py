"""A prune step's masks: scored and ranked, or, for a criterion that picks its own weights,
counted without scores where the counts do not depend on them."""

from __future__ import annotations

import pytest
import torch

from sensiprune import criteria
from sensiprune.criteria import obs
from sensiprune.options import PruneOptions
from sensiprune.selection import unstructured
from sensiprune.selection.choice import choose
from sensiprune.targets import find_targets


def _never(subset) -> dict[str, torch.Tensor]:
    raise AssertionError("scored")


def _choose(mlp, criterion: str, scope: str, existing=None, scores=_never, **options):
    targets = find_targets(mlp)
    settings = PruneOptions(criterion, scope, min_density=0.0, **options)
    return choose(criteria.get(criterion), targets, 0.5, settings, existing or {}, scores)


def test_blocked_obs_with_per_layer_shares_is_counted_without_scores(mlp, monkeypatch):
    monkeypatch.setattr(obs, "EXACT_BUDGET", 0)
    before = torch.ones_like(mlp.fc1.weight, dtype=torch.bool)
    before[3] = False  # a row pruned before: those weights count towards the share
    chosen = _choose(mlp, "obs", "layer", {"fc1.weight": before})
    for name, param in mlp.named_parameters():
        if name.endswith("weight"):
            assert int((~chosen[name]).sum()) == round(0.5 * param.numel()), name
    assert not (chosen["fc1.weight"] & ~before).any()
    assert int((~_choose(mlp, "obs", "layer", pattern="2:4")["fc2.weight"]).sum()) == 96


@pytest.mark.parametrize(
    ("criterion", "scope", "budget"),
    [("obs", "layer", obs.EXACT_BUDGET), ("obs", "global", 0), ("magnitude", "layer", 0)],
)
def test_scores_are_used_where_they_place_the_masks(mlp, monkeypatch, criterion, scope, budget):
    """Exact OBS keeps the rows' counts the scores gave, a global ranking spreads the shares
    by score, and a criterion that does not compensate prunes where its scores say."""
    monkeypatch.setattr(obs, "EXACT_BUDGET", budget)
    scores = {name: p.detach().abs() for name, p in mlp.named_parameters() if "weight" in name}
    asked = []

    def scorer(subset):
        asked.append(sorted(subset))
        return scores

    chosen = _choose(mlp, criterion, scope, scores=scorer)
    # every layer's share its own: scored and ranked a layer at a time
    assert asked == ([[name] for name in scores] if scope == "layer" else [sorted(scores)])
    ranked = unstructured.select(scores, find_targets(mlp), 0.5, scope, min_density=0.0)
    assert all(torch.equal(chosen[name], ranked[name]) for name in scores)
