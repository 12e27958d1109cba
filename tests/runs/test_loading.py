"""Starting weights in every format users have, and data factories of every shape."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import sensiprune as sp
from sensiprune.errors import SensipruneError
from sensiprune.runs.loading import (
    build_model,
    call_factory,
    data_splits,
    import_object,
    model_inputs,
)
from sensiprune.zoo import LeNet300100


@pytest.fixture
def trained_state():
    torch.manual_seed(5)
    return LeNet300100().state_dict()


def _same(model, state) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_safetensors_and_plain_checkpoints_load(tmp_path, trained_state):
    save_file(trained_state, tmp_path / "w.safetensors")
    torch.save(trained_state, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        assert _same(build_model(LeNet300100, str(tmp_path / name)), trained_state)


def test_training_checkpoints_and_ddp_prefixes_are_unwrapped(tmp_path, trained_state):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in trained_state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    assert _same(build_model(LeNet300100, str(tmp_path / "ckpt.pth")), trained_state)


def test_a_sensiprune_save_directory_brings_its_masks(tmp_path, trained_state):
    model = LeNet300100()
    model.load_state_dict(trained_state)
    sp.prune(model, 0.5)
    sp.save(model, tmp_path / "saved")
    loaded = build_model(LeNet300100, str(tmp_path / "saved"))
    assert sp.get_masks(loaded).keys() == sp.get_masks(model).keys()


def test_files_that_are_not_weights_are_refused(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not really")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    torch.save({"lr": 0.1}, tmp_path / "settings.pt")
    for name, message in [
        ("junk.safetensors", "not a safetensors file"),
        ("junk.pt", "not a torch checkpoint"),
        ("settings.pt", "does not hold a state_dict"),
    ]:
        with pytest.raises(SensipruneError, match=message):
            build_model(LeNet300100, str(tmp_path / name))


def test_data_factories_may_return_mappings_or_objects():
    splits = SimpleNamespace(train=[1, 2], val=[3], test=None)
    assert data_splits(splits).validation == [3]
    assert data_splits({"train": [1], "validation": [2], "test": [3]}).test == [3]
    with pytest.raises(SensipruneError, match="without train and validation"):
        data_splits({"train": [1]})
    with pytest.raises(SensipruneError, match="must be re-iterable"):
        data_splits({"train": iter([1]), "validation": [2]})


def test_imports_and_inputs():
    assert import_object("sensiprune.zoo:LeNet300100", "model") is LeNet300100
    with pytest.raises(SensipruneError, match="has no attribute 'Nope'"):
        import_object("sensiprune.zoo:Nope", "model")
    x = torch.zeros(2, 3)
    assert model_inputs((x, torch.zeros(2))) == (x,) and model_inputs(x) == (x,)


def test_datasets_are_batched_and_the_training_split_shuffled():
    from torch.utils.data import TensorDataset

    data = TensorDataset(torch.arange(10.0), torch.arange(10))
    splits = data_splits({"train": data, "validation": data}, batch_size=4)
    assert [len(x) for x, _ in splits.validation] == [4, 4, 2]
    torch.manual_seed(0)
    first = torch.cat([x for x, _ in splits.train])
    assert sorted(first.tolist()) == list(range(10)) and first.tolist() != list(range(10))


@pytest.mark.parametrize(
    "path", ["subprocess:run", "os:system", "builtins:exec", "sys:exit", "torch:os.system"]
)
def test_a_recipe_cannot_name_the_standard_library(path):
    with pytest.raises(SensipruneError, match="standard library"):
        call_factory(path, {"args": ["true"]}, "model.factory", [])


def test_a_recipe_names_callables_only():
    with pytest.raises(SensipruneError, match="not a function or class"):
        import_object("sensiprune:zoo", "loss")


def test_the_recipe_folder_does_not_shadow_installed_packages(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mpmath" or m.startswith("mpmath.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh below, then put back
    (tmp_path / "mpmath.py").write_text("raise RuntimeError('shadowed')\n")
    source = "import mpmath\nimport torch\n\ndef build():\n    return torch.nn.Linear(2, 2)\n"
    (tmp_path / "mine.py").write_text(source)
    assert isinstance(call_factory("mine:build", {}, "model.factory", [tmp_path]), nn.Linear)
