"""Criteria say what they can do; a new one works through prune with no edit elsewhere."""

from __future__ import annotations

import pytest
import torch

import sensiprune as sp
from sensiprune.criteria import base
from sensiprune.criteria.base import Criterion


class HalvingCompensation(Criterion):
    """Keeps the chosen masks and halves every weight that stays: easy to see from outside."""

    compensates = True

    def compensate(self, model, targets, masks, existing, batches, loss_fn, show_progress=False):
        moved = {name: t.param.detach() * 0.5 for name, t in targets.items()}
        return dict(masks), moved


class FirstGroupsFirst(Criterion):
    """Scores group i as i: the lowest-numbered groups go first."""

    scores_groups = True

    def score_groups(self, model, groups, batches, loss_fn):
        return torch.arange(len(groups), dtype=torch.float64)


@pytest.fixture
def registered(monkeypatch):
    def register(criterion: Criterion) -> str:
        monkeypatch.setitem(base._REGISTRY, criterion.name, criterion)
        return criterion.name

    return register


def test_a_new_compensating_criterion_moves_the_weights_that_stay(mlp, mlp_batches, registered):
    name = registered(HalvingCompensation("halving", "test", per_param=lambda w, s: w.abs()))
    dense = mlp.fc1.weight.detach().clone()
    sp.prune(mlp, 0.5, criterion=name, data=mlp_batches, scope="layer")
    kept = mlp.fc1.weight != 0
    assert kept.sum() == dense.numel() // 2
    assert torch.allclose(mlp.fc1.weight[kept], dense[kept] * 0.5)


def test_a_compensating_criterion_needs_data_and_refuses_structured(mlp, registered):
    name = registered(HalvingCompensation("halving", "test", per_param=lambda w, s: w.abs()))
    with pytest.raises(sp.SensipruneError, match="data"):
        sp.prune(mlp, 0.5, criterion=name)
    with pytest.raises(sp.SensipruneError, match="use structured=False"):
        sp.prune(mlp, 0.5, criterion=name, structured=True, example_inputs=torch.randn(1, 8))


def test_a_compensating_criterion_fills_n_m_patterns_only_if_it_says_so(
    mlp, mlp_batches, registered
):
    name = registered(HalvingCompensation("halving", "test", per_param=lambda w, s: w.abs()))
    with pytest.raises(sp.SensipruneError, match="cannot choose within N:M groups: use obs"):
        sp.prune(mlp, 0.5, criterion=name, data=mlp_batches, pattern="2:4")
    assert "fills N:M patterns" in base.get("obs").capabilities
    assert "fills N:M patterns" not in base._REGISTRY[name].capabilities


def test_a_new_group_criterion_decides_which_channels_go(mlp, mlp_batches, registered):
    name = registered(FirstGroupsFirst("first_groups", "test", structured_only=True))
    weight = mlp.fc1.weight.detach().clone()
    sp.prune(mlp, {"fc1": 0.25}, criterion=name, data=mlp_batches, structured=True,
             example_inputs=torch.randn(1, 8))  # fmt: skip
    assert mlp.fc1.out_features == 12
    assert torch.equal(mlp.fc1.weight, weight[4:])  # groups 0-3 are fc1's first four channels
