"""A model and data defined outside sensiprune, as yours would be.

`my_model.yaml` names them as `my_model:SmallConvNet` and `my_model:wine_loaders`: import paths
are also looked up in the recipe's directory, so nothing needs installing.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SmallConvNet(nn.Module):
    """A 1-D conv net over the 13 wine measurements, treated as a short sequence."""

    def __init__(self, width: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(width * 13, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


def wine_loaders(batch_size: int = 16, seed: int = 0) -> dict[str, DataLoader]:
    """scikit-learn's bundled wine data, standardised on the training split; shuffled loaders."""
    bunch = load_wine()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target)
    index = torch.arange(len(y)).numpy()
    rest, test = train_test_split(index, test_size=0.25, random_state=seed, stratify=y)
    train, val = train_test_split(rest, test_size=0.2, random_state=seed, stratify=y[rest])
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std

    def loader(part, shuffle: bool) -> DataLoader:
        return DataLoader(TensorDataset(x[part], y[part]), batch_size=batch_size, shuffle=shuffle)

    return {
        "train": loader(train, True),
        "validation": loader(val, False),
        "test": loader(test, False),
    }
