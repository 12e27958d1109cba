"""Measurement leaves every submodule in the mode it was in."""

from __future__ import annotations

import pytest

import sensiprune as sp
from sensiprune.modes import eval_mode


def test_a_frozen_batchnorm_in_a_training_model_stays_frozen(cnn, cnn_batches):
    cnn.train()
    cnn.bn.eval()  # a user's frozen BatchNorm
    sp.evaluate(cnn, cnn_batches)
    sp.score(cnn, "taylor", cnn_batches)
    assert cnn.training and cnn.conv1.training and not cnn.bn.training


def test_modes_come_back_when_the_block_raises(mlp):
    mlp.train()
    with pytest.raises(RuntimeError), eval_mode(mlp):
        assert not mlp.fc1.training
        raise RuntimeError("inside")
    assert mlp.training and mlp.fc1.training
