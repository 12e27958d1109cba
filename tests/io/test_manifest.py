"""A damaged or edited ``sp.save`` directory gives one clear error line, never a traceback:
truncated and bit-flipped files, an oversized safetensors header, wrong JSON types, attributes
sp.save never writes, and sizes larger than the model the factory builds."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

import sensiprune as sp
from sensiprune.io.manifest import MANIFEST_FILE, WEIGHTS_FILE
from tests.architectures import ResNet


def _saved(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A structurally pruned ResNet with masks on top, saved."""
    torch.manual_seed(0)
    model, x = ResNet().eval(), torch.randn(2, 3, 8, 8)
    sp.prune(model, 0.5, criterion="magnitude", structured=True, example_inputs=x)
    sp.prune(model, 0.5, criterion="magnitude")
    sp.save(model, tmp_path / "saved")
    return tmp_path / "saved", {k: v.clone() for k, v in model.state_dict().items()}


def _loads_as_saved_or_says_why(folder: Path, state: dict[str, torch.Tensor]) -> str:
    try:
        loaded = sp.load(folder, ResNet)
    except sp.SensipruneError as exc:
        message = str(exc)
        assert "\n" not in message and str(folder) in message
        return "refused"
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    return "loaded"


def _flip(path: Path, position: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_every_bit_flipped_in_the_weights_is_found(tmp_path):
    folder, state = _saved(tmp_path)
    weights = folder / WEIGHTS_FILE
    original = weights.read_bytes()
    rng = random.Random(0)
    for position in [0, 7, 8, 20, *rng.sample(range(len(original)), 40), len(original) - 1]:
        _flip(weights, position, rng.randrange(8))
        assert _loads_as_saved_or_says_why(folder, state) == "refused"
        weights.write_bytes(original)
    assert _loads_as_saved_or_says_why(folder, state) == "loaded"


def test_a_bit_flipped_anywhere_in_the_manifest_is_refused_or_harmless(tmp_path):
    folder, state = _saved(tmp_path)
    manifest = folder / MANIFEST_FILE
    original = manifest.read_bytes()
    rng = random.Random(1)
    outcomes = set()
    for position in rng.sample(range(len(original)), 150):
        _flip(manifest, position, rng.randrange(8))
        outcomes.add(_loads_as_saved_or_says_why(folder, state))
        manifest.write_bytes(original)
    assert "refused" in outcomes


@pytest.mark.parametrize("checksum", [True, False])
def test_truncated_files_and_an_oversized_header_are_refused(tmp_path, checksum):
    folder, state = _saved(tmp_path)
    manifest_path, weights = folder / MANIFEST_FILE, folder / WEIGHTS_FILE
    if not checksum:  # what safetensors itself finds, in a save that carries no checksum
        manifest = json.loads(manifest_path.read_text())
        del manifest["sha256"]
        manifest_path.write_text(json.dumps(manifest))
    original = weights.read_bytes()
    for damaged in (original[: len(original) // 2], original[:5], b"",
                    (2**62).to_bytes(8, "little") + original[8:]):  # fmt: skip
        weights.write_bytes(damaged)
        assert _loads_as_saved_or_says_why(folder, state) == "refused"
    weights.write_bytes(original)
    text = manifest_path.read_text()
    for damaged_text in (text[: len(text) // 2], "", "\udcff"):
        manifest_path.write_bytes(damaged_text.encode("utf-8", "surrogateescape"))
        assert _loads_as_saved_or_says_why(folder, state) == "refused"


def _edited(folder: Path, edit) -> None:
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


EDITS = {
    "not an object": lambda m: m.clear() or m.update({"format": 1, "masked": []}),
    "modules of a wrong type": lambda m: m.update({"modules": {"stem.0": 3}}),
    "an attribute sp.save never writes": lambda m: m["modules"]["fc"].update({"forward": "x"}),
    "a size far too large": lambda m: m["modules"]["stem.1"].update({"num_features": 10**9}),
    "a size of the wrong type": lambda m: m["modules"]["fc"].update({"in_features": "8"}),
    "a negative size": lambda m: m["modules"]["fc"].update({"in_features": -1}),
    "a flag for a size": lambda m: m["modules"]["fc"].update({"in_features": True}),
    "a module the model lacks": lambda m: m["modules"].update({"nowhere": {"in_features": 1}}),
    "a mask entry of a wrong type": lambda m: m["masked"].update({"fc.weight": "bits"}),
    "a mask encoding that does not exist": lambda m: next(iter(m["masked"].values())).update(
        {"encoding": "zip"}
    ),
    "a mask shape larger than the layer": lambda m: next(iter(m["masked"].values())).update(
        {"shape": [10**6, 10**6]}
    ),
    "a tie to a tensor that is not saved": lambda m: m.update({"tied": {"fc.bias": "nowhere"}}),
    "a config value that is not a size": lambda m: m.update({"config": {"hidden_size": 1.5}}),
    "a config field sp.save never writes": lambda m: m.update({"config": {"num_layers": 1}}),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_an_edited_manifest_is_refused_in_one_line(tmp_path, edit):
    folder, state = _saved(tmp_path)
    _edited(folder, EDITS[edit])
    assert _loads_as_saved_or_says_why(folder, state) == "refused"


def test_a_model_built_larger_than_saved_is_not_grown_to_fit(tmp_path):
    folder, _ = _saved(tmp_path)

    def narrower() -> nn.Module:
        model = ResNet()
        model.fc = nn.Linear(4, 5)
        return model

    with pytest.raises(sp.SensipruneError, match=r"factory\(\) must build the model"):
        sp.load(folder, narrower)


@pytest.mark.parametrize("factory", [3, lambda: 3, None])
def test_a_factory_that_does_not_build_a_module_is_refused(tmp_path, factory):
    folder, _ = _saved(tmp_path)
    with pytest.raises(sp.SensipruneError, match="factory must be a function"):
        sp.load(folder, factory)


def test_the_command_line_exits_2_with_one_line_on_a_damaged_save(tmp_path):
    model = sp.zoo.LeNet300100()
    sp.save(model, tmp_path / "saved")
    weights = tmp_path / "saved" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    recipe = {
        "output": str(tmp_path / "run"),
        "model": {"factory": "sensiprune.zoo:LeNet300100", "weights": str(tmp_path / "saved")},
        "data": {"factory": "tests.recipe_support:digits"},
        "prune": {"criterion": "magnitude", "target": {"sparsity": 0.5}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = subprocess.run(
        [sys.executable, "-m", "sensiprune", "prune", str(tmp_path / "recipe.yaml")],
        capture_output=True, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert WEIGHTS_FILE in run.stderr
    assert not (tmp_path / "run").exists()


class _Staged(nn.Module):
    """A config with a count per stage, as Swin's ``num_attention_heads``."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_attention_heads=[2, 4])
        self.fc = nn.Linear(4, 2)


def test_a_config_list_per_stage_round_trips_and_may_not_grow(tmp_path):
    model = _Staged()
    model.config.num_attention_heads = [1, 4]
    sp.save(model, tmp_path / "saved")
    assert sp.load(tmp_path / "saved", _Staged).config.num_attention_heads == [1, 4]
    _edited(tmp_path / "saved", lambda m: m["config"].update({"num_attention_heads": [3, 4]}))
    with pytest.raises(sp.SensipruneError, match=r"config.num_attention_heads is \[3, 4\]"):
        sp.load(tmp_path / "saved", _Staged)
