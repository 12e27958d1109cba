"""Which parameters can be pruned, and how user-facing layer names map onto them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from sensiprune.errors import SensipruneError

# Embedding rows are looked up, not multiplied: zeroing single entries saves nothing and
# removing whole tokens is a structured decision, so they are left dense unless named.
_NEVER_BY_DEFAULT = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class Target:
    """One prunable weight tensor and the module that owns it."""

    name: str  # full parameter name, e.g. "features.0.weight"
    layer: str  # owning module name, e.g. "features.0"
    attr: str  # attribute on the module, e.g. "weight"
    module: nn.Module

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.attr)


IgnoreSpec = Iterable["nn.Module | str"]


def find_targets(model: nn.Module, ignore: IgnoreSpec = ()) -> dict[str, Target]:
    """Every weight matrix / kernel (ndim >= 2) of the model, minus ignored modules.

    Biases and normalisation scales are 1-d and cost little; they stay dense.
    """
    ignored_modules, ignored_names = _split_ignore(model, ignore)
    targets: dict[str, Target] = {}
    for layer, module in model.named_modules():
        if isinstance(module, _NEVER_BY_DEFAULT) or _is_ignored(
            layer, module, ignored_modules, ignored_names
        ):
            continue
        for attr, param in module._parameters.items():  # named_parameters costs 10x more
            if param is None:
                continue
            name = f"{layer}.{attr}" if layer else attr
            if param.ndim >= 2 and param.requires_grad and name not in ignored_names:
                targets[name] = Target(name=name, layer=layer, attr=attr, module=module)
    return targets


def require_targets(model: nn.Module, ignore: IgnoreSpec = ()) -> dict[str, Target]:
    targets = find_targets(model, ignore)
    if not targets:
        raise SensipruneError(
            "the model has nothing prunable: no trainable weight with 2 or more dimensions "
            "outside `ignore` (pass a model with Linear/Conv/RNN layers, or ignore fewer modules)"
        )
    return targets


def resolve_layer_names(
    targets: Mapping[str, Target], names: Iterable[str]
) -> dict[str, list[str]]:
    """Map user names (a layer like "fc1" or a parameter like "fc1.weight") to target names."""
    resolved: dict[str, list[str]] = {}
    for name in names:
        hits = [t.name for t in targets.values() if name in (t.name, t.layer)]
        if not hits:
            known = ", ".join(sorted({t.layer for t in targets.values()}))
            raise SensipruneError(
                f"unknown layer {name!r} in the sparsity budget; prunable layers are: {known}"
            )
        resolved[name] = hits
    return resolved


def _split_ignore(model: nn.Module, ignore: IgnoreSpec) -> tuple[set[int], set[str]]:
    modules: set[int] = set()
    names: set[str] = set()
    known: set[str] | None = None
    for item in ignore:
        if isinstance(item, nn.Module):
            modules.add(id(item))
        elif isinstance(item, str):
            if known is None:
                known = {n for n, _ in model.named_modules()} | {
                    n for n, _ in model.named_parameters()
                }
            if item not in known:
                raise SensipruneError(
                    f"ignore names {item!r}, which is neither a module nor a parameter of the "
                    "model (use names from model.named_modules())"
                )
            names.add(item)
        else:
            raise SensipruneError(f"ignore must hold modules or names, got {type(item).__name__}")
    return modules, names


def _is_ignored(layer: str, module: nn.Module, modules: set[int], names: set[str]) -> bool:
    if id(module) in modules:
        return True
    # Ignoring a module keeps its whole subtree dense.
    return any(layer == n or layer.startswith(n + ".") for n in names if n)
