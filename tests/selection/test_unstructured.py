"""Scores to masks: exact counts, bounds, existing masks, normalisation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.selection.unstructured import check_sparsity, select
from sensiprune.targets import find_targets


def _setup(sizes=((40, 30), (30, 20), (20, 5))):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(i, o) for i, o in sizes])
    targets = find_targets(model)
    scores = {n: t.param.detach().abs() for n, t in targets.items()}
    return model, targets, scores


@settings(max_examples=40, deadline=None)
@given(
    sparsity=st.floats(0.0, 0.95),
    scope=st.sampled_from(["global", "layer", "row"]),
    normalize=st.sampled_from(["none", "l2", "lamp"]),
)
def test_exactly_the_asked_sparsity(sparsity, scope, normalize):
    _, targets, scores = _setup()
    keep = select(scores, targets, sparsity, scope, normalize, min_density=0.01)
    sizes = {n: t.param.numel() for n, t in targets.items()}
    pruned = {n: int((~k).sum()) for n, k in keep.items()}
    if scope == "global":
        assert sum(pruned.values()) == round(sparsity * sum(sizes.values()))
    else:
        for name in targets:
            assert pruned[name] == round(sparsity * sizes[name])
    for name, k in keep.items():  # no layer emptied: min_density keeps at least 1%
        assert k.sum() >= max(1, 0.01 * sizes[name])


def test_global_ranking_prunes_the_lowest_scores():
    _, targets, scores = _setup()
    keep = select(scores, targets, 0.5, "global", "none", min_density=0)
    everything = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = everything.sort().values[round(0.5 * everything.numel()) - 1]
    for name in targets:
        assert (scores[name][~keep[name]] <= threshold).all()
        assert (scores[name][keep[name]] >= threshold).all()


def test_min_density_protects_a_layer_whose_scores_are_all_tiny():
    _, targets, scores = _setup()
    scores["1.weight"] = scores["1.weight"] * 1e-9
    keep = select(scores, targets, 0.6, "global", "none", min_density=0.05)
    assert keep["1.weight"].sum() == 30  # ceil(5% of 600)
    emptied = select(scores, targets, 0.6, "global", "none", min_density=0)
    assert emptied["1.weight"].sum() == 0


def test_row_scope_prunes_each_row_evenly():
    _, targets, scores = _setup()
    keep = select(scores, targets, 0.5, "row", min_density=0)
    assert (keep["0.weight"].sum(1) == 20).all()


def test_dict_budget_prunes_named_layers_only():
    _, targets, scores = _setup()
    keep = select(scores, targets, {"0": 0.9, "2.weight": 0.2}, min_density=0)
    assert int((~keep["0.weight"]).sum()) == round(0.9 * 1200)
    assert int((~keep["2.weight"]).sum()) == 20
    assert keep["1.weight"].all()


def test_existing_masks_stay_pruned_and_count():
    _, targets, scores = _setup()
    first = select(scores, targets, 0.3, "layer", min_density=0)
    reversed_scores = {n: -s for n, s in scores.items()}  # would choose other weights
    second = select(reversed_scores, targets, 0.5, "layer", min_density=0, existing=first)
    for name in targets:
        assert not (second[name] & ~first[name]).any()
        assert int((~second[name]).sum()) == round(0.5 * targets[name].param.numel())


def test_lamp_prefers_pruning_a_layer_with_many_similar_small_weights():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    targets = find_targets(model)
    scores = {
        "0.weight": torch.full((10, 10), 1.0),
        "1.weight": torch.linspace(0.5, 50, 100).view(10, 10),
    }
    keep = select(scores, targets, 0.5, "global", "lamp", min_density=0)
    # raw ranking would empty layer 0 (all 1.0 < most of layer 1); LAMP spreads the cut
    raw = select(scores, targets, 0.5, "global", "none", min_density=0)
    assert raw["0.weight"].sum() < keep["0.weight"].sum()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None, {}])
def test_bad_sparsity_is_refused(bad):
    with pytest.raises(SensipruneError, match="sparsity"):
        check_sparsity(bad)


def test_unknown_layer_in_budget_names_the_known_ones():
    _, targets, scores = _setup()
    with pytest.raises(SensipruneError, match="prunable layers are: 0, 1, 2"):
        select(scores, targets, {"fc9": 0.5})


def test_unreachable_target_under_min_density_is_refused():
    _, targets, scores = _setup()
    with pytest.raises(SensipruneError, match="min_density"):
        select(scores, targets, 0.99, "layer", min_density=0.05)
