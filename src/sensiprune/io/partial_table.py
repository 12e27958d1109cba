"""The partial sensitivity table on disk: the rows measured so far, tied to the model,
criterion and sparsities they were measured for, so that a stopped run resumes and a
changed one never reads another model's rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_write_bytes


def fingerprint(model: nn.Module) -> str:
    """A hash of every tensor in the state: a resumed table must describe this very model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def read_partial(path: str | Path | None, identity: dict) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SensipruneError(f"cannot read the partial table {path}: {exc}") from exc
    if any(state.get(k) != (list(v) if isinstance(v, tuple) else v) for k, v in identity.items()):
        raise SensipruneError(
            f"{path} holds a partial table for another model, criterion or sparsity list: "
            "delete it, or pass another resume path"
        )
    return state


def write_partial(path: str | Path, state: dict) -> None:
    atomic_write_bytes(path, json.dumps(state).encode())
