"""PruneOptions: the one settings object behind prune, recipes, sweeps and runs."""

from __future__ import annotations

import copy
import dataclasses
import inspect

import pytest

import sensiprune as sp
from sensiprune.errors import SensipruneError
from sensiprune.options import PruneOptions, StructuredOptions
from sensiprune.pruning import prune_with
from sensiprune.runs.recipe import PruneSpec

# what prune takes besides its settings: the data, and scores computed before
NOT_SETTINGS = {"model", "sparsity", "data", "loss_fn", "scores", "structured"}


def test_prune_takes_every_setting_by_keyword_with_the_options_defaults():
    params = inspect.signature(sp.prune).parameters
    settings = {n: p for n, p in params.items() if n not in NOT_SETTINGS}
    fields = {
        f.name: f.default
        for kind in (PruneOptions, StructuredOptions)
        for f in dataclasses.fields(kind)
        if f.name != "structured"
    }
    assert {n: p.default for n, p in settings.items()} == fields
    positional = [n for n, p in params.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == ["model", "sparsity"]


def test_prune_refuses_positional_settings(mlp):
    with pytest.raises(TypeError):
        sp.prune(mlp, 0.5, "magnitude")


def test_prune_with_options_equals_prune_with_keywords(mlp, mlp_batches):
    other = copy.deepcopy(mlp)
    a = sp.prune(mlp, 0.6, criterion="taylor", data=mlp_batches, scope="layer", seed=3)
    options = PruneOptions(criterion="taylor", scope="layer", seed=3)
    b = prune_with(other, 0.6, options, mlp_batches)
    assert a == b
    assert all((p == q).all() for p, q in zip(mlp.parameters(), other.parameters(), strict=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (PruneOptions(criterion="nope"), "unknown criterion 'nope'"),
        (PruneOptions(criterion="taylor_fm"), "pass structured=True"),
        (PruneOptions(criterion="obs", structured=StructuredOptions()), "use structured=False"),
        (PruneOptions(scope="row", structured=StructuredOptions()), "scope 'global' or 'layer'"),
        (PruneOptions(structured=StructuredOptions(round_to=0)), "round_to must be"),
        (PruneOptions(structured=StructuredOptions(round_to=True)), "round_to must be"),
        (PruneOptions(structured=StructuredOptions(group_reduction="median")), "reduction"),
    ],
)
def test_options_refuse_what_no_prune_can_use_before_anything_runs(mlp, options, message):
    before = [p.clone() for p in mlp.parameters()]
    with pytest.raises(SensipruneError, match=message):
        prune_with(mlp, 0.5, options)
    assert all((p == q).all() for p, q in zip(before, mlp.parameters(), strict=True))


def test_a_recipe_builds_the_options_of_its_prunes():
    spec = PruneSpec(
        criterion="magnitude",
        target={"sparsity": 0.5},
        structured=True,
        scope="layer",
        ignore=["head"],
        min_density=0.2,
        round_to=8,
    )
    options = spec.options("inputs", seed=7, show_progress=True)
    assert options == PruneOptions(
        criterion="magnitude",
        scope="layer",
        ignore=("head",),
        min_density=0.2,
        seed=7,
        structured=StructuredOptions(example_inputs="inputs", round_to=8),
        show_progress=True,
    )
    assert PruneSpec(target={"sparsity": 0.5}).options(None, 0, False).structured is None
