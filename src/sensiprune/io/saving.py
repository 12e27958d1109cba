"""Save and load pruned models with safetensors; no pickle anywhere.

A structurally pruned model loads into the model its factory builds: the sizes surgery changed
(``out_channels``, ``in_features`` ...) are recorded and the fresh modules are resized first.
Masked weights are stored compressed: the kept values plus either a bitmask (1 bit per weight)
or the flat indices of kept weights, whichever is smaller, so the file shrinks with sparsity
and loads back to identical weights and masks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from sensiprune.apply import masks
from sensiprune.apply.block_sync import own_config
from sensiprune.apply.sparse_kernels import refuse_sparse_layers
from sensiprune.apply.surgery import refresh_loaded, retie, tied_parameters
from sensiprune.errors import SensipruneError
from sensiprune.handlers import input_slices
from sensiprune.io.atomic import atomic_directory
from sensiprune.io.manifest import (
    FORMAT,
    MANIFEST_FILE,
    SHAPE_ATTRS,
    WEIGHTS_FILE,
    check_sizes,
    check_tensors,
    digest,
    read_manifest,
    read_weights,
)
from sensiprune.structure.adapters import CONFIG_FIELDS
from sensiprune.structure.counts import SIZES
from sensiprune.targets import Target

INT16_INDICES = 32767  # tensors of at most this many weights store their indices as int16


def save(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the model's state and masks to ``directory`` (replaced atomically)."""
    refuse_sparse_layers(model, "save")
    state, aliases = _without_ties(model.state_dict())
    model_masks = masks.lazy_masks(model)  # each unpacked as it is encoded, not all at once
    tensors: dict[str, torch.Tensor] = {}
    encodings: dict[str, dict] = {}
    for key, value in state.items():
        if key in model_masks:
            encodings[key] = _encode(key, value, model_masks[key].cpu(), tensors)
        else:
            tensors[key] = value
    shapes = {
        name: {a: getattr(module, a) for a in SHAPE_ATTRS if _recordable(getattr(module, a, None))}
        for name, module in model.named_modules()
    }
    config = getattr(model, "config", None)
    manifest = {
        "format": FORMAT,
        "masked": encodings,
        "tied": aliases,
        "modules": {name: attrs for name, attrs in shapes.items() if attrs},
        "config": {
            field: value
            for field in CONFIG_FIELDS
            if not _derived(config, field) and _recordable(value := getattr(config, field, None))
        },
    }
    with atomic_directory(directory) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE))
        manifest["sha256"] = digest(staging / WEIGHTS_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return Path(directory)


def load(directory: str | os.PathLike, factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with ``factory()`` and restore the saved weights and masks into it."""
    path = Path(directory)
    manifest_path, weights_path = path / MANIFEST_FILE, path / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights_path.is_file():
        raise SensipruneError(
            f"{path} is not a sensiprune save (expected {MANIFEST_FILE} and {WEIGHTS_FILE})"
        )
    manifest = read_manifest(manifest_path)
    stored = read_weights(weights_path, manifest)
    model = factory() if callable(factory) else None
    if not isinstance(model, nn.Module):
        raise SensipruneError(
            f"factory must be a function that returns the model to load into (an nn.Module); "
            f"got {type(factory if model is None else model).__name__}"
        )
    check_sizes(model, manifest, manifest_path)
    input_slices.reinstall(model, stored)  # the hooks that read a block's kept heads only
    shapes = {k: tuple(v.shape) for k, v in stored.items() if "::" not in k}
    shapes.update({k: tuple(e["shape"]) for k, e in manifest.get("masked", {}).items()})
    check_tensors(model, shapes, weights_path)
    state, model_masks = _state(stored, manifest, weights_path)
    config = getattr(model, "config", None)
    for field, value in manifest.get("config", {}).items() if config is not None else ():
        if not _derived(config, field):
            setattr(config, field, value)  # read by the blocks' own code
    _resize(model, manifest.get("modules", {}), state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SensipruneError(
            f"{path}: the saved weights do not fit the model from factory(): {mismatch(exc)}"
        ) from exc
    targets = {name: _target(model, name) for name in model_masks}
    masks.apply_masks(targets, model_masks)
    return model


def _derived(config: object, field: str) -> bool:
    """A config property computed from other fields (Falcon's ``head_dim``): it follows them,
    and it cannot be set."""
    return isinstance(getattr(type(config), field, None), property)


def _state(
    stored: dict[str, torch.Tensor], manifest: dict, where: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model state and masks the stored tensors encode."""
    state = {k: v for k, v in stored.items() if "::" not in k}
    model_masks = {}
    try:
        for key, encoding in manifest.get("masked", {}).items():
            state[key], model_masks[key] = _decode(key, encoding, stored)
        for alias, key in manifest.get("tied", {}).items():
            state[alias] = state[key]
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        raise SensipruneError(
            f"{where} does not hold the tensors its manifest describes ({type(exc).__name__}: "
            f"{exc}); save the model again, or restore a copy"
        ) from exc
    return state, model_masks


def _without_ties(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state with each tied tensor (a language model's head and its embedding) stored once,
    and which names are the same tensor as which stored one: safetensors refuses shared
    memory, and loading the state back ties them again."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for key, value in state.items():
        identity = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape,
                    value.stride(), value.dtype, value.device)  # fmt: skip
        if value.numel() and identity in first:
            aliases[key] = first[identity]
            continue
        first[identity] = key
        kept[key] = value.detach().cpu().contiguous()
    return kept, aliases


def mismatch(exc: RuntimeError) -> str:
    """The specific lines of a load_state_dict error (missing, unexpected, wrong shapes)."""
    lines = [" ".join(line.split()) for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[1:3] or lines[:1])[:300]


def _recordable(value: object) -> bool:
    """An int, a list or tuple of ints (kept heads, a norm's shape) or a {config field: int}
    mapping."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _recordable(v) for k, v in value.items())
    return is_int or (isinstance(value, (list, tuple)) and all(_recordable(v) for v in value))


def _resize(model: nn.Module, recorded: dict, state: dict[str, torch.Tensor]) -> None:
    """Give every module the saved attributes and, where the saved tensors are smaller, new
    tensors of their shapes (a norm over a pruned model dimension records no attribute, only
    its smaller weight); ties between parameters hold afterwards as before."""
    ties = tied_parameters(model)
    for name, module in model.named_modules():
        attrs = {  # JSON gave lists back where the module holds tuples
            a: tuple(v) if isinstance(getattr(module, a, None), tuple) else v
            for a, v in recorded.get(name, {}).items()
        }
        changed = any(getattr(module, a, None) != v for a, v in attrs.items())
        for attr, value in attrs.items():
            if attr == "sensiprune_config":
                own_config(module, value)
            elif attr == SIZES:  # sizes the module's own code reads (counts.py)
                for name_, size in value.items():
                    held = getattr(module, name_, None)
                    setattr(module, name_, tuple(size) if isinstance(held, tuple) else size)
                setattr(module, attr, value)
            elif attr != "kept_heads":
                setattr(module, attr, value)
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            key = f"{name}.{attr}" if name else attr
            if tensor is None or key not in state or state[key].shape == tensor.shape:
                continue
            changed = True
            fresh = torch.empty(state[key].shape, dtype=tensor.dtype, device=tensor.device)
            if isinstance(tensor, nn.Parameter):
                module._parameters[attr] = nn.Parameter(fresh, requires_grad=tensor.requires_grad)
            else:
                module._buffers[attr] = fresh
        if changed:
            refresh_loaded(module, attrs.get("kept_heads"))
    retie(ties)


def saved_bytes(model: nn.Module, sparsities: Mapping[str, float] | None = None) -> int:
    """Bytes of the tensors ``save`` writes for ``model`` (the file, less its small headers),
    with the weights named in ``sparsities`` pruned that far and the rest masked as they are:
    what a file-size goal counts, known before anything is pruned."""
    sparsities = sparsities or {}
    state, _ = _without_ties(model.state_dict())
    model_masks = masks.lazy_masks(model)
    total = 0
    for key, value in state.items():
        numel, itemsize = value.numel(), value.element_size()
        if key in sparsities:
            total += masked_bytes(numel, numel - round(sparsities[key] * numel), itemsize)
        elif key in model_masks:
            total += masked_bytes(numel, int(model_masks[key].sum()), itemsize)
        else:
            total += numel * itemsize
    return total


def masked_bytes(numel: int, kept: int, itemsize: int) -> int:
    """Bytes ``save`` writes for a masked tensor of ``numel`` weights, ``kept`` of them kept:
    the kept values, plus their flat indices or a bitmask, whichever is smaller."""
    return kept * itemsize + min(_index_bytes(numel, kept), math.ceil(numel / 8))


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int16 if numel <= INT16_INDICES else torch.int32


def _index_bytes(numel: int, kept: int) -> int:
    return kept * _index_dtype(numel).itemsize


def _encode(key: str, value: torch.Tensor, keep: torch.Tensor, out: dict) -> dict:
    flat_keep = keep.reshape(-1)
    out[f"{key}::values"] = value.reshape(-1)[flat_keep].clone()
    n, kept = flat_keep.numel(), int(flat_keep.sum())
    if _index_bytes(n, kept) < math.ceil(n / 8):
        out[f"{key}::index"] = flat_keep.nonzero().reshape(-1).to(_index_dtype(n))
        kind = "index"
    else:
        out[f"{key}::bits"] = torch.from_numpy(np.packbits(flat_keep.numpy().astype(np.uint8)))
        kind = "bits"
    return {"shape": list(value.shape), "encoding": kind}


def _decode(key: str, encoding: dict, stored: dict) -> tuple[torch.Tensor, torch.Tensor]:
    shape = encoding["shape"]
    n = math.prod(shape)
    values = stored[f"{key}::values"]
    if encoding["encoding"] == "index":
        keep = torch.zeros(n, dtype=torch.bool)
        keep[stored[f"{key}::index"].long()] = True
    else:
        bits = np.unpackbits(stored[f"{key}::bits"].numpy())[:n]
        keep = torch.from_numpy(bits.astype(bool))
    dense = torch.zeros(n, dtype=values.dtype)
    dense[keep] = values
    return dense.reshape(shape), keep.reshape(shape)


def _target(model: nn.Module, name: str) -> Target:
    layer, _, attr = name.rpartition(".")
    return Target(name=name, layer=layer, attr=attr, module=model.get_submodule(layer))
