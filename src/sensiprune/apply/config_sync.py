"""A Hugging Face config brought in step with a cut found on the traced graph.

``save_pretrained`` / ``from_pretrained`` rebuild a model from its config, so the config must
describe the pruned shapes. A model no adapter knows names its sizes in its own fields
(``n_heads``, ``ffn_dim``, ``d_ff``, ...), so nothing here lists field names: every size the cut
changed the same way everywhere (a parameter dimension, or a count the model keeps in an
attribute, as 4 heads becoming 3) is a candidate for the config fields that held the old value;
each change is kept only if a model built from the config (on the meta device) then has more
parameters of the pruned shapes, so a field that merely held the same number (a maximum
distance equal to the FFN width) stays. When the shapes still differ (blocks cut
differently, a head size the config derives from the width), the config is left as it was
and the advice is to use ``sp.save`` / ``sp.load``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn

from sensiprune.handlers import input_slices
from sensiprune.structure.counts import size_attributes

log = logging.getLogger(__name__)


def configs(model: nn.Module) -> list[object]:
    """The model's config and the configs nested in it (a text and a vision part)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return []
    nested = [v for v in vars(config).values() if hasattr(v, "to_dict")]
    return [config, *nested]


def follower(model: nn.Module) -> Callable[[], None] | None:
    """Read the sizes now; the returned function, called after the cut, updates the config.
    None for a model without a config: there is nothing to follow."""
    if not configs(model):
        return None
    shapes = _shapes(model)
    counts = _int_attributes(model)
    return lambda: _follow(model, shapes, counts)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _int_attributes(model: nn.Module) -> dict[tuple[str, str], int]:
    return {
        (name, attr): value
        for name, module in model.named_modules()
        for attr, value in size_attributes(vars(module))
        if isinstance(value, int)
    }


def _follow(model: nn.Module, shapes: dict[str, tuple], counts: dict[tuple[str, str], int]) -> None:
    changed: dict[int, set[int]] = {}
    for name, param in model.named_parameters():
        for old, new in zip(shapes.get(name, ()), param.shape):
            if old != new:
                changed.setdefault(old, set()).add(int(new))
    for key, value in _int_attributes(model).items():
        if key in counts and counts[key] != value:
            changed.setdefault(counts[key], set()).add(value)
    uniform = {old: news.pop() for old, news in changed.items() if len(news) == 1}
    fields = [
        (config, field, uniform[value])
        for config in configs(model)
        for field, value in vars(config).items()
        if isinstance(value, int) and not isinstance(value, bool) and value in uniform
    ]
    if not fields:
        return
    if input_slices.sliced(model):
        log.warning(
            "the model's config cannot describe the pruned model: a block reads only the kept "
            "heads of a tensor the model makes from its head count (ALiBi); save with sp.save "
            "and load with sp.load, not save_pretrained"
        )
        return
    saved = [(config, dict(vars(config))) for config in configs(model)]
    pruned = _shapes(model)
    mismatches = _mismatches(model, pruned)
    for config, field, value in fields:  # kept only where it brings the shapes closer
        old = getattr(config, field)
        setattr(config, field, value)
        fewer = _mismatches(model, pruned)
        if fewer < mismatches:
            mismatches = fewer
        else:
            setattr(config, field, old)
    if mismatches:
        for config, state in saved:
            vars(config).clear()
            vars(config).update(state)
        log.warning(
            "the model's config cannot describe the pruned shapes (blocks cut differently, or "
            "sizes it does not name): save with sp.save and load with sp.load, not "
            "save_pretrained"
        )


def _mismatches(model: nn.Module, pruned: dict[str, tuple[int, ...]]) -> int:
    """How many parameters of a model built from its config would differ in shape from the
    pruned model's, ``pruned`` (built on the meta device: no memory, no time)."""
    try:
        with torch.device("meta"):
            built = _shapes(type(model)(copy.deepcopy(model.config)))
    except Exception:  # a config the model's own code refuses
        return len(pruned) + 1
    return sum(built.get(name) != shape for name, shape in pruned.items()) + len(
        set(built) - set(pruned)
    )
