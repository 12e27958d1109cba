"""Data, losses and recipes that the recipe tests name by import path."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, TensorDataset

from sensiprune.zoo import load_digits_splits

ROOT = Path(__file__).resolve().parents[1]


class SlowBatches:
    """Re-iterable batches that take ``delay`` seconds each: a stand-in for a slow loader,
    so that a test can kill a run in the middle of an epoch."""

    def __init__(self, batches: Iterable, delay: float) -> None:
        self.batches, self.delay = batches, delay

    def __iter__(self):
        for batch in self.batches:
            time.sleep(self.delay)
            yield batch


def digits(batch_size: int = 64, delay: float = 0.0, shuffled: bool = False) -> dict[str, Any]:
    """``shuffled``: the training split as a DataLoader reshuffling every epoch."""
    splits = load_digits_splits(batch_size=batch_size)
    train: Any = splits.train
    if shuffled:
        examples = TensorDataset(*(torch.cat(column) for column in zip(*train)))
        train = DataLoader(examples, batch_size=batch_size, shuffle=True)
    if delay:
        train = SlowBatches(train, delay)
    return {"train": train, "validation": splits.val, "test": splits.test}


def no_training_batches() -> dict[str, Any]:
    splits = load_digits_splits()
    return {"train": [], "validation": splits.val}


class _Calls:
    count = 0


def loss_that_diverges(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy until the 30th call, NaN from then on."""
    _Calls.count += 1
    loss = F.cross_entropy(model(batch[0]), batch[1])
    return loss * float("nan") if _Calls.count >= 30 else loss


def write_recipe(directory: Path, name: str = "recipe.yaml", **sections: Any) -> Path:
    """A small digits recipe; keyword sections replace (or, with None, drop) the defaults."""
    recipe: dict[str, Any] = {
        "output": str(directory / "run"),
        "seed": 0,
        "model": {"factory": "sensiprune.zoo:LeNet300100", "pretrain_epochs": 2},
        "data": {"factory": "tests.recipe_support:digits"},
        "prune": {"criterion": "taylor", "target": {"sparsity": 0.8}, "score_batches": 4},
        "schedule": {"kind": "iterative", "steps": 2},
        "finetune": {"epochs": 1},
        "report": {"latency": False},
    }
    for key, value in sections.items():
        if value is None:
            recipe.pop(key, None)
        else:
            recipe[key] = value
    path = directory / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def digits_datasets() -> dict[str, Any]:
    """The splits as torch Datasets of single examples: the recipe's batch_size batches them."""
    splits = load_digits_splits()
    return {
        name: TensorDataset(*(torch.cat(column) for column in zip(*batches)))
        for name, batches in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
