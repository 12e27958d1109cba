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
    torch.testing.assert_close(collected["conv1.weight"].input_cov, cols.T @ cols / len(cols))


def test_input_matrix_of_conv1d_matches_a_manual_unfold():
    from sensiprune.criteria.features import input_matrix

    conv = torch.nn.Conv1d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 9)
    rows = input_matrix(conv, x)
    padded = torch.nn.functional.pad(x, (1, 1))
    windows = padded.unfold(2, 3, 2)  # (2, 3, L_out, 3)
    expected = windows.permute(0, 2, 1, 3).reshape(-1, 9)
    torch.testing.assert_close(rows, expected)
    out = rows @ conv.weight.detach().reshape(5, -1).T + conv.bias.detach()
    torch.testing.assert_close(out, conv(x).transpose(1, 2).reshape(-1, 5))
