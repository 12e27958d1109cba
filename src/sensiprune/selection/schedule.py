"""Sparsity schedules: pure functions of the step, they never touch weights."""

from __future__ import annotations

from collections.abc import Mapping

from sensiprune.errors import SensipruneError
from sensiprune.options import PruneOptions
from sensiprune.selection.groups import kept_count
from sensiprune.selection.unstructured import Sparsity

SCHEDULES = ("cubic", "linear", "geometric")


def fraction_done(step: int, steps: int, kind: str = "cubic") -> float:
    """How far along the sparsity path step ``step`` (1..steps) is, from 0 to 1.

    ``cubic`` is Zhu & Gupta 2017 (AGP): s_t = s_f · (1 − (1 − t/n)³), pruning fast while
    redundancy is plentiful and slowly near the target; ``linear`` spaces steps evenly.
    (``geometric`` is no fraction of one path: see :func:`sparsity_at`.)
    """
    if kind not in ("cubic", "linear"):
        raise SensipruneError(f"schedule must be cubic or linear here, got {kind!r}")
    if not isinstance(steps, int) or steps < 1:
        raise SensipruneError(f"steps must be a positive integer, got {steps!r}")
    t = min(max(step, 0), steps) / steps
    return 1.0 - (1.0 - t) ** 3 if kind == "cubic" else t


def sparsity_at(target: Sparsity, step: int, steps: int, kind: str = "cubic") -> Sparsity:
    """The sparsity to reach at ``step``; a per-layer budget moves every layer along together.
    ``geometric`` keeps the same share of what is left at every step (:func:`geometric_sparsity`):
    equal ratios of density, so a run stopped at any step has gone an equal ratio further."""
    if kind == "geometric":
        return geometric_sparsity(target, step, steps)
    if kind not in SCHEDULES:
        raise SensipruneError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    done = fraction_done(step, steps, kind)
    if isinstance(target, Mapping):
        return {layer: value * done for layer, value in target.items()}
    return target * done


def share_of_remaining(target: Sparsity, step: int, steps: int, kind: str = "cubic") -> Sparsity:
    """What step ``step`` removes of what the steps before it left. A structured step cuts
    channels out, so it names a share of those still there, not the total of :func:`sparsity_at`."""
    now, before = sparsity_at(target, step, steps, kind), sparsity_at(target, step - 1, steps, kind)
    if isinstance(now, Mapping):
        return {k: 1.0 - (1.0 - v) / (1.0 - before[k]) for k, v in now.items()}
    return 1.0 - (1.0 - now) / (1.0 - before)


def channel_shares(
    sizes: Mapping[str, int],
    budget: Mapping[str, float],
    step: int,
    steps: int,
    kind: str = "cubic",
    round_to: int = 1,
    min_density: float = PruneOptions.min_density,
) -> dict[str, float]:
    """:func:`share_of_remaining` for families of ``sizes`` channels, from whole counts: the
    path's count at every step, never under the last step's, which alone is rounded up to a
    multiple of ``round_to`` (what one step to ``budget`` keeps). A share rounded up at
    every step stalls: 32 channels to 8 in multiples of 8 would come back to 24 at each of
    four steps. Prune each step's shares with ``round_to`` 1."""

    def kept(name: str, at: int) -> int:
        n, sparsity = sizes[name], budget[name]
        final = kept_count(n, round(sparsity * n), min_density, round_to)
        if at >= steps:
            return final
        return max(final, n - round(sparsity_at(sparsity, at, steps, kind) * n))

    return {name: 1.0 - kept(name, step) / kept(name, step - 1) for name in budget}


def structured_step(
    target: Sparsity,
    step: int,
    steps: int,
    kind: str,
    widths: Mapping[str, int] | None,
    round_to: int,
    min_density: float = PruneOptions.min_density,
) -> tuple[Sparsity, int]:
    """What structured step ``step`` of ``steps`` to ``target`` cuts, and the channel multiple
    to cut it with. With each family's channel count (``widths``: a budget per layer decides
    the counts), :func:`channel_shares` without the families already at this step's count,
    cut to any count; without (a global ranking decides them step by step),
    :func:`share_of_remaining`, rounded to ``round_to`` at the last step only."""
    if widths is None:
        return share_of_remaining(target, step, steps, kind), round_to if step == steps else 1
    named = target if isinstance(target, Mapping) else dict.fromkeys(widths, target)
    shares = channel_shares(widths, named, step, steps, kind, round_to, min_density)
    return {name: share for name, share in shares.items() if share > 0}, 1


def geometric_sparsity(target: Sparsity, step: int, steps: int) -> Sparsity:
    """Sparsity after ``step`` of ``steps`` equal *ratios* of density: 1 − (1 − s)^(t/n).

    Each step removes the same fraction of what is left, so saliencies re-measured between
    steps only ever have to predict a moderate removal.
    """
    if not isinstance(steps, int) or steps < 1:
        raise SensipruneError(f"steps must be a positive integer, got {steps!r}")
    done = min(max(step, 0), steps) / steps
    if isinstance(target, Mapping):
        return {layer: 1.0 - (1.0 - value) ** done for layer, value in target.items()}
    return 1.0 - (1.0 - target) ** done
