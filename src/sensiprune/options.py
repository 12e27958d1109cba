"""How to prune, in one frozen, typed object: every setting of :func:`sensiprune.prune` other
than the model, the target sparsity and the data. The verbs, the recipe, the comparison sweep
and the runner all build or carry it, so that a new setting is added in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sensiprune import criteria
from sensiprune.criteria.scoring import REDUCTIONS
from sensiprune.errors import SensipruneError
from sensiprune.selection.unstructured import NORMALIZATIONS, parse_pattern
from sensiprune.targets import IgnoreSpec


@dataclass(frozen=True)
class StructuredOptions:
    """What only structured pruning reads: a batch to trace the model with (None: the first
    batch of the data), channel counts kept multiples of ``round_to`` ("auto": one SIMD vector
    of the model's device), and how a group's weight scores become one."""

    example_inputs: object = None
    round_to: int | str = 1
    group_reduction: str = "mean"

    def check(self) -> None:
        multiple = self.round_to
        if multiple != "auto" and (
            not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1
        ):
            raise SensipruneError(
                f"round_to must be a positive integer or 'auto', got {multiple!r}"
            )
        if self.group_reduction not in REDUCTIONS:
            raise SensipruneError(f"group reduction must be one of {', '.join(REDUCTIONS)}")


@dataclass(frozen=True)
class PruneOptions:
    """The settings of one prune; the defaults are those of :func:`sensiprune.prune`, whose
    docstring says what each does. ``structured`` is None for masks (unstructured)."""

    criterion: str = "magnitude"
    scope: str = "global"
    ignore: IgnoreSpec = ()
    min_density: float = 0.01
    normalize: str = "lamp"
    steps: int = 1
    seed: int = 0
    structured: StructuredOptions | None = None
    show_progress: bool = False
    pattern: str | None = None
    blockwise: bool | None = None

    def nm(self) -> tuple[int, int] | None:
        """The N:M pattern as (N, M), or None."""
        return parse_pattern(self.pattern) if self.pattern is not None else None

    def shares_per_layer(self, sparsity: object) -> bool:
        """Whether every layer's count of pruned weights is its own, whatever the scores
        (an N:M pattern, a per-layer budget, or ranking within a layer or row)."""
        return (
            self.pattern is not None
            or isinstance(sparsity, Mapping)
            or self.scope in ("layer", "row")
        )

    def check(self) -> None:
        """Refuse what no prune can use, before anything runs (the scope and normalization
        of unstructured ranking are checked where it ranks)."""
        crit = criteria.get(self.criterion)
        if self.pattern is not None:
            self.nm()
            if self.structured is not None or self.steps != 1:
                raise SensipruneError(
                    f"pattern {self.pattern!r} is a pattern of single weights filled in one "
                    "step: pass structured=False and steps=1"
                )
            if crit.compensates and not crit.fills_patterns:
                raise SensipruneError(
                    f"criterion {self.criterion!r} moves weights but cannot choose within N:M "
                    "groups: use obs, or a criterion that does not move weights (magnitude, "
                    "taylor, activation)"
                )
        if self.structured is None:
            if crit.structured_only:
                raise SensipruneError(
                    f"criterion {self.criterion!r} scores whole channels: pass structured=True"
                )
            return
        if crit.compensates:
            raise SensipruneError(
                f"criterion {self.criterion!r} prunes single weights: use structured=False"
            )
        if self.scope not in ("global", "layer"):
            raise SensipruneError(
                f"structured pruning ranks with scope 'global' or 'layer', got {self.scope!r}"
            )
        if self.normalize not in NORMALIZATIONS:
            raise SensipruneError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}"
            )
        self.structured.check()
