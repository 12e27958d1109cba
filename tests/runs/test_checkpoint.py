"""Checkpoints bring back weights, optimiser, schedule and every random generator exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import sensiprune as sp
from sensiprune.runs.checkpoint import read_checkpoint, read_progress, restore_rng, write_checkpoint
from sensiprune.zoo import LeNet5


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_a_checkpoint_round_trip_is_exact(tmp_path, digits):
    torch.manual_seed(0)
    model = LeNet5()
    sp.prune(model, 0.5, structured=True, example_inputs=digits.val[0][0])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    sp.finetune(model, digits.train[:3], optimizer=optimizer, show_progress=False)
    scheduler.step()
    write_checkpoint(tmp_path / "ckpt", model, {"completed": 3}, optimizer, scheduler)
    expected = _draws()
    back = read_checkpoint(tmp_path / "ckpt", LeNet5)
    assert back.progress == {"completed": 3} == read_progress(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  back.model.state_dict().values()))  # fmt: skip
    state = optimizer.state_dict()
    assert back.optimizer["param_groups"] == state["param_groups"]
    assert torch.equal(back.optimizer["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back.scheduler == scheduler.state_dict()
    restore_rng(back.rng)
    assert _draws() == expected


def test_no_checkpoint_reads_as_none(tmp_path):
    assert read_progress(tmp_path) is None


def test_a_damaged_checkpoint_model_says_how_to_start_over(tmp_path):
    write_checkpoint(tmp_path / "ckpt", LeNet5(), {"completed": 1}, None, None)
    weights = tmp_path / "ckpt" / "model" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(sp.SensipruneError, match=r"weights.safetensors .* --restart"):
        read_checkpoint(tmp_path / "ckpt", LeNet5)
