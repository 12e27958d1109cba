"""Crash-safe run state: everything needed to continue a run exactly where it stopped.

A checkpoint is one directory (model via :func:`sensiprune.save`, so new shapes and masks come
back; optimiser, learning-rate schedule and RNG states; progress as JSON) that replaces the
previous one atomically, so a kill at any moment leaves the last complete checkpoint readable.
The trainer file is read with ``weights_only=True``: no pickle with code is ever loaded.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_directory
from sensiprune.io.saving import load, save

MODEL_DIR = "model"
TRAINER_FILE = "trainer.pt"
PROGRESS_FILE = "progress.json"


@dataclass
class Checkpoint:
    model: nn.Module
    progress: dict[str, Any]
    optimizer: dict | None
    scheduler: dict | None
    rng: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch generator states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def write_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    progress: dict[str, Any],
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> None:
    trainer = {
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
    }
    with atomic_directory(directory) as staging:
        save(model, staging / MODEL_DIR)
        torch.save(trainer, staging / TRAINER_FILE)
        (staging / PROGRESS_FILE).write_text(json.dumps(progress, indent=1))


def read_progress(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SensipruneError(
            f"{path} is unreadable ({exc}): pass --restart to start over"
        ) from exc


def read_checkpoint(directory: str | os.PathLike, factory: Callable[[], nn.Module]) -> Checkpoint:
    directory = Path(directory)
    progress = read_progress(directory)
    if progress is None:
        raise SensipruneError(f"{directory} holds no checkpoint")
    try:
        model = load(directory / MODEL_DIR, factory)
    except SensipruneError as exc:
        raise SensipruneError(f"checkpoint unreadable: {exc}; or pass --restart") from exc
    try:
        trainer = torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SensipruneError(
            f"{directory / TRAINER_FILE} is unreadable ({type(exc).__name__}): "
            "pass --restart to start over"
        ) from exc
    return Checkpoint(model, progress, trainer["optimizer"], trainer["scheduler"], trainer["rng"])
