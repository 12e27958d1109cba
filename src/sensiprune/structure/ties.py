"""Channel counts that must shrink together although the channels are not the same.

Model code reshapes with a size read from another tensor: ``qkv(x).reshape(B, N, 3, heads,
C // heads)`` or, after attention, ``out.reshape(B, N, C)``, with ``C = x.shape[-1]`` the
width of the residual stream. The residual channels and the heads are different channels:
the reshape only needs their counts in step. Merging them position by position would bundle
unrelated channels (residual channels 0-7 with head 0 of every block); a *tie* leaves each
side its own groups and asks the selection to remove the same fraction of both, each side's
channels chosen by their scores: with 32 residual channels and 4 heads of 8, every head
removed takes 8 residual channels, the 8 that matter least.

The walk records ties between slot lists (graph.py); :func:`settle` decides, once the
classes are known, whether a tie is kept, holds by itself, or pins its channels, and
selection/ties.py brings the selection in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from sensiprune.structure import split_flow
from sensiprune.structure.channels import Split


@dataclass(frozen=True)
class Side:
    """The groups (numbers) of one side of a tie, and the fraction of the side's channels
    that one of them holds: removing ``r`` of them removes ``r * unit`` of the side."""

    groups: frozenset[int]
    unit: Fraction


@dataclass(frozen=True)
class Tie:
    """Both sides lose the same fraction of their channels."""

    a: Side
    b: Side


def side_classes(classes: np.ndarray, side: list[int] | Split) -> np.ndarray | None:
    """The class of each channel of a side: a split (a reshape into heads) counts one
    channel per hyperplane of the axis it is cut along; None if it cannot be cut whole."""
    if not isinstance(side, Split):
        return classes[np.asarray(side, dtype=np.int64)]
    axis = split_flow.plane_axis(classes, side)
    if axis is None:
        return None
    planes = np.moveaxis(classes[side.slots], axis, 0)
    return planes.reshape(side.slots.shape[axis], -1)[:, 0]


def settle(a: np.ndarray | None, b: np.ndarray | None) -> str:
    """Returns "free" where the selection can keep the tie (each side's removable classes are
    disjoint from the other's and hold equally many of its channels), "held" where any cut
    keeps it (nothing on either side is removable, or both sides are the same channels in
    the same proportions), "pin" otherwise. Classes are -1 where nothing can remove them."""
    if a is None or b is None:
        return "pin"
    free_a, free_b = a[a >= 0], b[b >= 0]
    if not len(free_a) or not len(free_b):  # one side stays whole: so must the other
        return "held" if len(free_a) == len(free_b) else "pin"
    found_a, many_a = np.unique(free_a, return_counts=True)
    found_b, many_b = np.unique(free_b, return_counts=True)
    if np.intersect1d(found_a, found_b).size:
        same = np.array_equal(found_a, found_b) and (many_a * len(b) == many_b * len(a)).all()
        return "held" if same else "pin"
    uniform = len(set(many_a.tolist())) <= 1 and len(set(many_b.tolist())) <= 1
    return "free" if uniform else "pin"


def at_group_level(a: np.ndarray, b: np.ndarray) -> Tie:
    """A "free" tie over group numbers (-1: a class that is not a removable group, such as
    one without a producer). Where one side has no group to remove, the other must keep all
    of its own: a tie of that side with itself, of unit 0, which selection/ties.py keeps whole."""
    sides = []
    for side in (a, b):
        free = side[side >= 0]
        groups = frozenset(np.unique(free).tolist())
        sides.append(Side(groups, Fraction(len(free) // max(len(groups), 1), len(side))))
    empty = [side for side in sides if not side.groups]
    if empty:
        whole = Side(frozenset().union(*(side.groups for side in sides)), Fraction(0))
        return Tie(whole, whole)
    return Tie(*sides)
