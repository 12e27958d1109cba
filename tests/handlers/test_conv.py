"""Convolutions: the input matrix OBS reads, and how they are cut and counted."""

from __future__ import annotations

import torch

from sensiprune.handlers.base import input_matrix_of


def test_input_matrix_of_conv1d_matches_a_manual_unfold():
    conv = torch.nn.Conv1d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 9)
    rows = input_matrix_of(conv, "weight").matrix(conv, x)
    padded = torch.nn.functional.pad(x, (1, 1))
    windows = padded.unfold(2, 3, 2)  # (2, 3, L_out, 3)
    expected = windows.permute(0, 2, 1, 3).reshape(-1, 9)
    torch.testing.assert_close(rows, expected)
    out = rows @ conv.weight.detach().reshape(5, -1).T + conv.bias.detach()
    torch.testing.assert_close(out, conv(x).transpose(1, 2).reshape(-1, 5))
