"""Save / load round trips, the compressed format, and refusals."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from torch import nn

import sensiprune as sp
from sensiprune.io.saving import saved_bytes
from tests.conftest import TinyMLP


def test_round_trip_restores_weights_and_masks(mlp, mlp_batches, tmp_path):
    sp.prune(mlp, 0.7, criterion="taylor", data=mlp_batches)
    sp.save(mlp, tmp_path / "run")
    loaded = sp.load(tmp_path / "run", TinyMLP)
    for key, value in mlp.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    original, restored = sp.get_masks(mlp), sp.get_masks(loaded)
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    x = mlp_batches[0][0]
    assert torch.equal(mlp(x), loaded(x))


def test_kept_weights_that_are_zero_stay_kept(mlp, tmp_path):
    sp.prune(mlp, 0.5, criterion="magnitude")
    keep = sp.get_masks(mlp)["fc1.weight"]
    index = keep.nonzero()[0].tolist()
    with torch.no_grad():
        mlp.fc1.weight[tuple(index)] = 0.0
    sp.save(mlp, tmp_path / "run")
    assert torch.equal(sp.get_masks(sp.load(tmp_path / "run", TinyMLP))["fc1.weight"], keep)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_file_shrinks_with_sparsity(tmp_path, sparsity):
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 512, bias=False))
    sp.save(big, tmp_path / "dense")
    sp.prune(big, sparsity, criterion="magnitude")
    sp.save(big, tmp_path / "sparse")
    size = os.path.getsize(tmp_path / "sparse" / "weights.safetensors")
    dense = os.path.getsize(tmp_path / "dense" / "weights.safetensors")
    # kept values in 4 bytes each plus at most one bit per weight, plus a header
    assert size <= dense * ((1 - sparsity) + 1 / 32) + 1024
    restored = sp.load(tmp_path / "sparse", lambda: nn.Sequential(nn.Linear(512, 512, bias=False)))
    assert torch.equal(restored[0].weight, big[0].weight)


def test_saving_over_an_earlier_save_replaces_it_whole(mlp, tmp_path):
    sp.save(mlp, tmp_path / "run")
    sp.prune(mlp, 0.5, criterion="magnitude")
    sp.save(mlp, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "sensiprune.json",
        "weights.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary left behind
    assert sp.get_masks(sp.load(tmp_path / "run", TinyMLP))


def test_a_failed_save_leaves_the_earlier_one_intact(mlp, tmp_path, monkeypatch):
    sp.save(mlp, tmp_path / "run")
    before = (tmp_path / "run" / "weights.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sensiprune.io.saving.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        sp.save(mlp, tmp_path / "run")
    assert (tmp_path / "run" / "weights.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_load_refuses_a_directory_that_is_not_a_save(tmp_path):
    with pytest.raises(sp.SensipruneError, match="not a sensiprune save"):
        sp.load(tmp_path, TinyMLP)


def test_load_refuses_weights_that_do_not_fit(mlp, tmp_path):
    sp.save(mlp, tmp_path / "run")
    with pytest.raises(sp.SensipruneError, match=r"factory\(\) must build the model"):
        sp.load(tmp_path / "run", lambda: nn.Sequential(nn.Linear(8, 2)))


class _TiedLanguageModel(nn.Module):
    """An embedding and an output head sharing one weight, as language models have."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path):
    torch.manual_seed(0)
    model = _TiedLanguageModel()
    sp.save(model, tmp_path / "tied")
    loaded = sp.load(tmp_path / "tied", _TiedLanguageModel)
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)
    stored = (tmp_path / "tied" / "weights.safetensors").stat().st_size
    assert stored < 1.5 * model.embed.weight.numel() * 4  # one copy, not two


@pytest.mark.parametrize(("rows", "sparsity"), [(512, 0.5), (512, 0.98), (64, 0.9)])
def test_saved_bytes_counts_the_tensors_save_writes_before_and_after_pruning(
    tmp_path, rows, sparsity
):
    """Predicted for a sparsity before pruning, and read from the model's masks after, the
    bytes are those of the tensors in the file (indices int16 or int32, or a bitmask; a
    pruned model masks every weight, those it keeps whole too)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(rows, rows), nn.Linear(rows, 4))
    predicted = saved_bytes(model, {"0.weight": sparsity, "1.weight": 0.0})
    sp.prune(model, {"0.weight": sparsity}, criterion="magnitude")
    assert saved_bytes(model) == predicted
    sp.save(model, tmp_path / "pruned")
    with safe_open(tmp_path / "pruned" / "weights.safetensors", "pt") as stored:
        written = sum(stored.get_tensor(k).nbytes for k in stored.keys())  # noqa: SIM118
    assert predicted == written
    assert predicted < saved_bytes(nn.Sequential(nn.Linear(rows, rows), nn.Linear(rows, 4)))
