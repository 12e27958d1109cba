"""The families a structured prune may cut, as their widths per layer."""

from __future__ import annotations

import torch
from torch import nn

from sensiprune.structured import layer_widths


def test_every_layer_of_a_family_maps_to_its_channel_count():
    """The residual sum couples conv1 and conv3 into one family of 8 channels; conv2 is its
    own; the head's outputs are the model's and are never cut."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
            self.conv3 = nn.Conv2d(12, 8, 3, padding=1)
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1(x)
            y = y + self.conv3(torch.relu(self.conv2(y)))
            return self.head(y.mean((2, 3)))

    widths = layer_widths(Residual(), torch.zeros(1, 3, 6, 6))
    assert widths == {"conv1": 8, "conv3": 8, "conv2": 12}
    assert layer_widths(Residual(), torch.zeros(1, 3, 6, 6), ignore=["conv2"]) == {
        "conv1": 8,
        "conv3": 8,
    }
