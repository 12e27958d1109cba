"""Channel counts that a model's own code keeps in attributes, brought in step with a cut.

Model code passes sizes it stored at construction: ``x.split(self.splits, 1)``,
``reshape(B, N, 3, self.num_heads, self.head_dim)``, ``F.conv2d(x, self.filt,
groups=self.channels)``. Traced, each is a constant. The channel walk records, per constant,
the module whose code ran it and the channel slots it counts (one per index: a channel, a
head). After a cut, every int attribute of that module equal to the old value (or list
attribute equal to the old values) gets the count of what was kept. Code may also add to an
attribute the indices no cut removes (``view(B, T, self.num_heads + 2, D)``: the queries,
then one key and one value): an int attribute that falls short of the constant by at most
that many is kept short of the new count by as much; a product of two attributes
(``self.num_heads * self.head_dim``) follows as its factors do, and the dividend of a
quotient (``self.in_channels // self.num_paths``) as the quotient does; so does a size
held once in a stored shape (``view(self.bias_shape)``). The pruned model's check
catches what this cannot know; the prune then starts again with such channels kept
(``pin_fixed`` in graph.build_graph).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

SIZES = "sensiprune_sizes"  # the sizes set on a module, for sp.save
_NOT_SIZES = ("training", SIZES)


@dataclass(frozen=True)
class Count:
    """Constant ``values`` in the code of ``module``: value i counts what is kept of
    ``parts[i]``, the groups of its indices (-1: an index no group removes), or stays as it
    is where ``parts[i]`` is None (the 1s of a ``(C, 1, 1)`` shape)."""

    module: str
    values: tuple[int, ...]
    parts: tuple[np.ndarray | None, ...]

    def kept(self, removed: np.ndarray) -> tuple[int, ...]:
        return tuple(
            value if part is None else int((~np.isin(part, removed)).sum())
            for value, part in zip(self.values, self.parts)
        )


def follow(
    modules: Mapping[str, nn.Module],
    counts: Sequence[Count],
    removed: Sequence[int],
    skip: Collection[str] = (),
) -> None:
    """Set the attributes that hold each count to what is kept of it (but those named in
    ``skip``)."""
    for name, attr, value, _ in _planned(modules, counts, removed):
        if attr not in skip:
            _set(modules[name], attr, value)


def ambiguous(
    modules: Mapping[str, nn.Module], counts: Sequence[Count], removed: Sequence[int]
) -> list[str]:
    """Attributes :func:`follow` sets where another attribute of the module holds the same
    value: with 4 heads of 4 channels, or 2 key/value heads and 2 queries per key/value head,
    only running the model tells which one counts what was cut."""
    return sorted({attr for _, attr, _, twin in _planned(modules, counts, removed) if twin})


def _planned(
    modules: Mapping[str, nn.Module], counts: Sequence[Count], removed: Sequence[int]
) -> list[tuple[str, str, object, bool]]:
    """(module, attribute, new value, whether another attribute matched too) per change."""
    gone = np.asarray(sorted(removed), dtype=np.int64)
    changes = []
    for count in counts:
        kept = count.kept(gone)
        module = modules.get(count.module)
        if module is None or kept == count.values:
            continue
        matched = []
        extra = _extra(module, count.values, _unremovable(count))
        for attr, value in size_attributes(vars(module)):
            if extra is not None and isinstance(value, int) and value + extra == count.values[0]:
                matched.append((attr, kept[0] - extra))
            elif isinstance(value, (list, tuple)) and tuple(value) == count.values:
                matched.append((attr, type(value)(kept)))
        if not matched and len(kept) == 1:  # ``self.in_channels // self.num_paths``
            matched = [(attr, kept[0] * by) for attr, by in _quotients(module, count.values)]
        if not matched and len(kept) == 1:  # ``view(self.bias_shape)``, (T, T, heads)
            matched = [(attr, _replaced(value, count.values[0], kept[0]))
                       for attr, value in _shapes_holding(module, count.values)]  # fmt: skip
        changes += [(count.module, attr, v, len(matched) > 1) for attr, v in matched]
        if not matched and len(kept) > 1:
            changes += [(count.module, *change) for change in _each(module, count.values, kept)]
    return changes


def _shapes_holding(module: nn.Module, values: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """Tuple attributes (a stored shape) that hold the single constant in ``values`` at
    exactly one place: that place follows the cut."""
    if len(values) != 1:
        return []
    return [
        (attr, value)
        for attr, value in size_attributes(vars(module))
        if isinstance(value, tuple) and value.count(values[0]) == 1
    ]


def _replaced(shape: tuple, old: int, new: int) -> tuple:
    return tuple(new if size == old else size for size in shape)


def _quotients(module: nn.Module, values: tuple[int, ...]) -> list[tuple[str, int]]:
    """The int attributes that, divided by another, give the single constant in ``values``
    (SKNet splits its input into ``self.in_channels // self.num_paths``): (dividend,
    divisor) each; the dividend follows the cut, the divisor stays."""
    ints = [(a, v) for a, v in size_attributes(vars(module)) if isinstance(v, int) and v > 0]
    if len(values) != 1:
        return []
    return [
        (attr, by) for attr, value in ints for _, by in ints if by > 1 and value == values[0] * by
    ]


def _each(module: nn.Module, values: tuple[int, ...], kept: tuple[int, ...]) -> list:
    """Sizes passed one attribute each (``split([self.key_dim, self.key_dim, self.val_dim])``):
    (attribute, new value, whether another attribute held the old value too) per change; an
    attribute whose positions were cut differently is left as it is."""
    ints = [(a, v) for a, v in size_attributes(vars(module)) if isinstance(v, int)]
    news: dict[str, set[int]] = {}
    twins: dict[str, bool] = {}
    for value, new in zip(values, kept):
        holders = [a for a, v in ints if v == value]
        for attr in holders:
            news.setdefault(attr, set()).add(new)
            twins[attr] = len(holders) > 1
    old = dict(ints)
    return [
        (attr, min(new), twins[attr])
        for attr, new in news.items()
        if len(new) == 1 and min(new) != old[attr]
    ]


def _set(module: nn.Module, attr: str, value: object) -> None:
    """Set it, and note it in ``sensiprune_sizes``, which ``sp.save`` records and ``sp.load``
    applies to a freshly built model."""
    setattr(module, attr, value)
    sizes = dict(getattr(module, SIZES, {}))
    sizes[attr] = list(value) if isinstance(value, tuple) else value
    setattr(module, SIZES, sizes)


def held(module: nn.Module, values: tuple[int, ...], unremovable: int = 0) -> bool:
    """Whether an attribute of ``module`` holds these values (one int may fall short by up
    to ``unremovable``, the indices no cut removes), so that :func:`follow` can bring it in
    step."""
    if _extra(module, values, unremovable) is not None or _product(module, values):
        return True
    if _quotients(module, values) or _shapes_holding(module, values):
        return True
    if listed(module, values):
        return True
    attributes = [value for _, value in size_attributes(vars(module))]
    return len(values) > 1 and all(value in attributes for value in values)  # one each


def listed(module: nn.Module, values: tuple[int, ...]) -> bool:
    """Whether a list attribute holds the values (``self.splits``): each then follows its
    own count."""
    return any(
        isinstance(v, (list, tuple)) and tuple(v) == values
        for _, v in size_attributes(vars(module))
    )


def _extra(module: nn.Module, values: tuple[int, ...], unremovable: int) -> int | None:
    """How much the code adds to an int attribute to get the single constant in ``values``:
    the least of 0..``unremovable`` that an attribute matches; None if none does."""
    if len(values) != 1:
        return None
    ints = {v for _, v in size_attributes(vars(module)) if isinstance(v, int)}
    return next((c for c in range(unremovable + 1) if values[0] - c in ints), None)


def _product(module: nn.Module, values: tuple[int, ...]) -> bool:
    """Whether the single constant is a product of two int attributes (``self.num_heads *
    self.head_dim``): it follows as its factors do, which the pruned model's run checks."""
    ints = [v for _, v in size_attributes(vars(module)) if isinstance(v, int) and v > 0]
    return len(values) == 1 and any(values[0] % a == 0 and values[0] // a in ints for a in ints)


def _unremovable(count: Count) -> int:
    """Indices of a single-valued count that no group removes."""
    part = count.parts[0] if len(count.parts) == 1 else None
    return 0 if part is None else int((np.asarray(part) == -1).sum())


def size_attributes(attributes: Mapping[str, object]) -> list[tuple[str, object]]:
    """The attributes that may hold a size: public ones, not flags."""
    return [
        (attr, value)
        for attr, value in attributes.items()
        if not attr.startswith("_") and attr not in _NOT_SIZES and not isinstance(value, bool)
    ]


def holders(modules: Mapping[str, nn.Module], counts: Sequence[Count]) -> list[nn.Module]:
    """The modules :func:`follow` may change (to put back if the cut is refused)."""
    return [modules[c.module] for c in counts if c.module in modules]
