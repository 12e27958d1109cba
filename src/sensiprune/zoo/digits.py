"""scikit-learn's bundled handwritten digits (1,797 8x8 images), split and batched.

No wheel on PyPI was found to ship MNIST itself (the MNIST packages download it at run time),
so the demo uses the digits that ship inside scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DigitsSplits:
    """Train / validation / test batches; images are (N, 1, 8, 8), standardised on train."""

    train: Batches
    val: Batches
    test: Batches

    @property
    def num_classes(self) -> int:
        return 10


def load_digits_splits(
    batch_size: int = 64, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> DigitsSplits:
    """Stratified, seeded splits; the scaling is fitted on the training split only."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    index = torch.arange(len(labels)).numpy()
    rest, test = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=labels.numpy()
    )
    train, val = train_test_split(
        rest,
        test_size=val_fraction / (1 - test_fraction),
        random_state=seed,
        stratify=labels.numpy()[rest],
    )
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.as_tensor(train)[torch.randperm(len(train), generator=generator)]
    return DigitsSplits(
        train=_batch(images, labels, shuffled, batch_size),
        val=_batch(images, labels, torch.as_tensor(val), batch_size),
        test=_batch(images, labels, torch.as_tensor(test), batch_size),
    )


def _batch(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, size: int) -> Batches:
    return [
        (images[index[i : i + size]], labels[index[i : i + size]])
        for i in range(0, len(index), size)
    ]
