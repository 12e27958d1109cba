"""Turn a recipe's import paths and files into a model, its weights and its data, or say why not."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import json
import pickle
import re
import site
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sensiprune.data import Batch
from sensiprune.errors import SensipruneError
from sensiprune.io.saving import MANIFEST_FILE, load, mismatch


def import_object(path: str, what: str, search: Sequence[Path] = ()) -> Any:
    """``'pkg.module:attr.sub'`` → a Python function, class or callable object; ``search``
    directories are tried for the module after the installed packages. A recipe is code, but
    it names its own code: the standard library (``os:system``, ``subprocess:run``,
    ``builtins:exec``) is refused."""
    module_name, _, attr = path.partition(":")
    _refuse_standard_library(module_name, what)
    extra = [str(p) for p in search if str(p) not in sys.path]
    sys.path.extend(extra)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is bad input here
        raise SensipruneError(
            f"{what}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        for entry in extra:
            sys.path.remove(entry)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SensipruneError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if inspect.ismodule(obj) or not callable(obj):
        raise SensipruneError(f"{what}: {path} is not a function or class: name a callable")
    if inspect.isroutine(obj) or inspect.isclass(obj):  # reached through a package too:
        _refuse_standard_library(obj.__module__ or "", what)  # ``torch:os.system``
    return obj


def _refuse_standard_library(module_name: str, what: str) -> None:
    """Modules of the interpreter itself (not installed packages, not the user's files)."""
    top = module_name.partition(".")[0]
    spec = importlib.util.find_spec(top) if top else None
    origin = getattr(spec, "origin", None)
    builtin = top in sys.builtin_module_names or origin in (None, "built-in", "frozen")
    if spec is None or not (builtin or _in_standard_library(Path(origin))):
        return
    raise SensipruneError(
        f"{what}: {module_name!r} is part of Python's standard library; a recipe names a "
        "callable of its own, of an installed package or of sensiprune"
    )


def _in_standard_library(file: Path) -> bool:
    paths = sysconfig.get_paths()
    installed = [Path(paths[k]) for k in ("purelib", "platlib")] + [
        Path(p) for p in [*site.getsitepackages(), site.getusersitepackages()]
    ]
    resolved = file.resolve()
    if any(resolved.is_relative_to(p.resolve()) for p in installed):
        return False
    return any(resolved.is_relative_to(Path(paths[k]).resolve()) for k in ("stdlib", "platstdlib"))


def call_factory(path: str, kwargs: Mapping[str, Any], what: str, search: Sequence[Path]) -> Any:
    factory = import_object(path, what, search)
    try:
        return factory(**kwargs)
    except Exception as exc:
        raise SensipruneError(f"{what}: {path}(...) failed: {type(exc).__name__}: {exc}") from exc


def build_model(factory: Callable[[], nn.Module], weights: str | None) -> nn.Module:
    """The model with its starting weights: safetensors, a plain torch checkpoint, or sp.save."""
    if weights is not None and (Path(weights) / MANIFEST_FILE).is_file():
        return load(weights, factory)
    model = factory()
    if weights is not None:
        _load_state(model, _read_state(Path(weights)), weights)
    return model


def _read_state(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise SensipruneError(f"model.weights: {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise SensipruneError(
                f"model.weights: {path} is not a safetensors file: {exc}"
            ) from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        if named is None:
            raise SensipruneError(f"model.weights: {path} is not a torch checkpoint") from exc
        raise SensipruneError(
            f"model.weights: {path} was refused by torch.load(weights_only=True): it would "
            f"run {named.group(1)}, not just load tensors; re-save it as a state_dict"
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise SensipruneError(f"model.weights: {path} is not a torch checkpoint: {exc}") from exc
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SensipruneError(f"model.weights: {path} does not hold a state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SensipruneError(
            f"model.weights: {source} does not fit the model: {mismatch(exc)}"
        ) from exc


@dataclass(frozen=True)
class Splits:
    """The batches a run reads: the test split is touched for final numbers only."""

    train: Iterable[Batch]
    validation: Iterable[Batch]
    test: Iterable[Batch] | None


def data_splits(loaded: Any, batch_size: int = 64) -> Splits:
    """Accept what a data factory returns: attributes or mapping keys train/validation/test,
    each batches or a torch Dataset (batched here; the training split reshuffled each epoch
    from the global torch generator, which runs seed and checkpoints restore)."""

    def part(*names: str) -> Any:
        for name in names:
            value = loaded.get(name) if isinstance(loaded, Mapping) else getattr(loaded, name, None)
            if value is not None:
                return value
        return None

    train, validation, test = part("train"), part("validation", "val"), part("test")
    if train is None or validation is None:
        raise SensipruneError(
            f"data.factory returned {type(loaded).__name__} without train and validation "
            "(or val) batches: return an object or mapping with train, validation and test"
        )
    splits = Splits(
        *(
            DataLoader(part, batch_size=batch_size, shuffle=name == "train")
            if isinstance(part, Dataset)
            else part
            for name, part in (("train", train), ("validation", validation), ("test", test))
        )
    )
    for name in ("train", "validation", "test"):
        batches = getattr(splits, name)
        if batches is None:
            continue
        if not hasattr(batches, "__iter__") or iter(batches) is batches:
            raise SensipruneError(
                f"data: {name} must be re-iterable (a list or a DataLoader), "
                f"got {type(batches).__name__}"
            )
        if next(iter(batches), None) is None:
            raise SensipruneError(f"data: the {name} split yielded no batches")
    return splits


def model_inputs(batch: Batch, model: nn.Module | None = None) -> tuple[torch.Tensor, ...]:
    """The forward arguments in a batch: its first element for (inputs, labels) batches; for
    a dict (a tokenizer's output), its tensors in the order ``model.forward`` takes them."""
    if isinstance(batch, Mapping):
        if model is None:
            raise SensipruneError("dict batches need the model to order their tensors")
        order = list(inspect.signature(model.forward).parameters)
        named = [name for name in order if name in batch]
        return tuple(batch[name] for name in order[: _prefix(order, named)])
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _prefix(order: list[str], present: list[str]) -> int:
    """How many leading forward parameters the batch supplies (positional calls stop there)."""
    count = 0
    while count < len(order) and order[count] in present:
        count += 1
    if count == 0:
        raise SensipruneError(
            f"a dict batch must hold the first forward argument {order[0]!r}; it has none of "
            "the forward's leading arguments"
        )
    return count


def limited(batches: Iterable[Batch], count: int | None) -> list[Batch]:
    return list(itertools.islice(batches, count))


def read_budget(path: str | dict[str, float]) -> dict[str, float]:
    if isinstance(path, dict):  # inline in the recipe, already checked there
        return dict(path)
    try:
        budget = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SensipruneError(f"prune.target.budget: {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SensipruneError(f"prune.target.budget: {path} is not JSON: {exc}") from exc
    if not isinstance(budget, dict) or not all(
        isinstance(v, (int, float)) and 0 <= v < 1 for v in budget.values()
    ):
        raise SensipruneError(
            f"prune.target.budget: {path} must map layer names to sparsities in [0, 1)"
        )
    return {str(k): float(v) for k, v in budget.items()}
