"""The files of an ``sp.save`` directory, read back as untrusted input.

A save can be damaged (a truncated copy, a flipped bit) or edited by hand, so nothing in it
is applied before it has been checked against what :func:`sensiprune.save` writes: the
manifest's types, the attribute names it may set, a checksum of the weights, and sizes that
pruning can have made. Pruning only ever shrinks a model, so every saved size and tensor
dimension is at most the one of the model the factory builds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors.torch import load_file
from torch import nn

from sensiprune.errors import SensipruneError
from sensiprune.structure.adapters import CONFIG_FIELDS

FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "sensiprune.json"
# the module attributes that structured surgery may change (see surgery.py and counts.py)
SHAPE_ATTRS = (
    "in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
    "hidden_size", "input_size", "num_heads", "kept_heads", "embedding_dim", "num_groups",
    "num_channels", "num_attention_heads", "all_head_size", "nf", "nx", "split_size",
    "num_key_value_heads", "num_key_value_groups", "sensiprune_config", "normalized_shape",
    "sensiprune_sizes",
)  # fmt: skip
_ENCODINGS = ("index", "bits")
_REMEDY = "the save is damaged or was edited: save the model again, or restore a copy"
_MISFIT = "factory() must build the model the save came from (or the save is damaged)"


def digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks: a flipped bit in the weights is found on load."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, with every section of the types ``sp.save`` writes."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SensipruneError(f"{path} is not readable JSON ({exc}); {_REMEDY}") from exc
    if not isinstance(manifest, dict):
        _bad(path, "it is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise SensipruneError(f"{path} has format {manifest.get('format')!r}; this reads {FORMAT}")
    sections = {"masked": dict, "tied": dict, "modules": dict, "config": dict, "sha256": str}
    unknown = sorted(set(manifest) - {"format", *sections})
    if unknown:
        _bad(path, f"it has sections sp.save never writes: {', '.join(unknown)}")
    for key, kind in sections.items():
        if key in manifest and not isinstance(manifest[key], kind):
            _bad(path, f"'{key}' is not a {kind.__name__}")
    for key, encoding in manifest.get("masked", {}).items():
        if (not isinstance(encoding, dict) or encoding.get("encoding") not in _ENCODINGS
                or not _sizes(encoding.get("shape"))):  # fmt: skip
            _bad(path, f"the mask entry of {key!r} is not a shape and an encoding")
    if not all(isinstance(v, str) for v in manifest.get("tied", {}).values()):
        _bad(path, "'tied' does not map names to names")
    for name, attrs in manifest.get("modules", {}).items():
        if not isinstance(attrs, dict):
            _bad(path, f"the entry of module {name!r} is not an object")
        unknown = sorted(set(attrs) - set(SHAPE_ATTRS))
        if unknown:
            _bad(path, f"module {name!r} sets {', '.join(unknown)}, which sp.save never writes")
    config = manifest.get("config", {})
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        _bad(path, f"it sets config fields sp.save never writes: {', '.join(unknown)}")
    if not all(_count(v) or _sizes(v) for v in config.values()):  # Swin: a count per stage
        _bad(path, "a 'config' value is not a size or a list of sizes")
    return manifest


def read_weights(path: Path, manifest: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The stored tensors, after the file matches the checksum the manifest holds."""
    expected = manifest.get("sha256")
    if expected is not None and digest(path) != expected:
        raise SensipruneError(f"{path} does not match the checksum in {MANIFEST_FILE}; {_REMEDY}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type, or OSError
        raise SensipruneError(
            f"{path} is not a readable safetensors file ({exc}); {_REMEDY}"
        ) from exc


def check_sizes(model: nn.Module, manifest: Mapping[str, Any], where: Path) -> None:
    """Every recorded module attribute and config field exists on the freshly built model, is
    a size of the same kind, and is no larger than there."""
    modules = dict(model.named_modules())
    for name, attrs in manifest.get("modules", {}).items():
        module = modules.get(name)
        if module is None:
            _misfit(where, f"it names module {name!r}, which the model from factory() lacks")
        for attr, value in attrs.items():
            if attr == "sensiprune_sizes":
                if not isinstance(value, dict):
                    _misfit(where, f"{name}.{attr} is not an object")
                for held, size in value.items():
                    _no_larger(where, f"{name}.{held}", getattr(module, held, None), size)
            elif attr == "sensiprune_config":
                config = getattr(module, "config", None)
                if not isinstance(value, dict) or config is None:
                    _misfit(where, f"{name}.{attr} does not fit the model from factory()")
                for field, size in value.items():
                    _no_larger(where, f"{name}.config.{field}", getattr(config, field, None), size)
            elif attr == "kept_heads":
                heads = getattr(module, "num_heads", None)
                if not (_sizes(value) and isinstance(heads, int) and max(value, default=0) < heads):
                    _misfit(where, f"{name}.kept_heads are not heads of that module")
            else:
                _no_larger(where, f"{name}.{attr}", getattr(module, attr, None), value)
    config = getattr(model, "config", None)
    for field, value in manifest.get("config", {}).items():
        held = getattr(config, field, None)
        if held is not None or config is None:  # unset (a head size pruning wrote) takes any
            _no_larger(where, f"config.{field}", held, value)


def check_tensors(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], where: Path) -> None:
    """Each saved tensor (by its shape, before anything is decoded) has the model's number of
    dimensions, and none larger."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for key, shape in shapes.items():
        fresh = own.get(key)
        if fresh is None:
            continue  # load_state_dict names what is missing or unexpected
        if len(shape) != fresh.dim() or any(s > f for s, f in zip(shape, fresh.shape)):
            raise SensipruneError(
                f"{where} holds {key} of shape {shape}, but the model from factory() has "
                f"{tuple(fresh.shape)}: pruning only shrinks a model; {_MISFIT}"
            )


def _no_larger(where: Path, name: str, held: object, saved: object) -> None:
    """``saved`` is a size like ``held`` (an int, or a sequence of as many ints), and no
    larger."""
    if isinstance(held, bool) or not isinstance(held, (int, list, tuple)):
        _misfit(where, f"it sets {name}, which the model from factory() does not hold as a size")
    if isinstance(held, int):
        ok = _count(saved) and saved <= held
    else:
        ok = _sizes(saved) and len(saved) == len(held) and all(
            isinstance(h, int) and s <= h for s, h in zip(saved, held)
        )  # fmt: skip
    if not ok:
        _misfit(where, f"{name} is {saved!r} where the model from factory() has {held!r}")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _sizes(value: object) -> bool:
    return isinstance(value, list) and all(_count(v) for v in value)


def _bad(where: Path, what: str) -> NoReturn:
    raise SensipruneError(f"{where}: {what}; {_REMEDY}")


def _misfit(where: Path, what: str) -> NoReturn:
    raise SensipruneError(f"{where}: {what}; {_MISFIT}")
