"""Statistics collection leaves the model exactly as it was."""

from __future__ import annotations

import torch

from sensiprune.criteria.stats import Stat, collect
from sensiprune.data import default_loss
from sensiprune.targets import find_targets


def test_collect_does_not_touch_weights_grads_buffers_or_mode(cnn, cnn_batches):
    cnn.train()
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    needs = frozenset(Stat)
    collected = collect(cnn, find_targets(cnn, ["conv2"]), cnn_batches, default_loss, needs)
    assert all(torch.equal(state[k], v) for k, v in cnn.state_dict().items())
    assert all(p.grad is None for p in cnn.parameters())
    assert cnn.training and cnn.bn.training
    stats = collected["conv1.weight"]
    assert stats.input_cov.shape == (18, 18)
    assert stats.input_rms.shape == cnn.conv1.weight.shape


def test_input_covariance_of_a_conv_matches_unfold(cnn, cnn_batches):
    x = torch.cat([b[0] for b in cnn_batches])
    collected = collect(
        cnn,
        find_targets(cnn, ["conv2", "fc"]),
        cnn_batches,
        default_loss,
        frozenset({Stat.INPUT_COV}),
    )
    cols = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18)
    cols = cols.double()  # second moments are kept in float64 for a float32 model
    torch.testing.assert_close(collected["conv1.weight"].input_cov, cols.T @ cols / len(cols))
