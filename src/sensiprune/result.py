"""What a prune did, as a frozen result a user prints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sensiprune.apply import masks
from sensiprune.selection.unstructured import Sparsity


@dataclass(frozen=True)
class PruneResult:
    """What a prune did: parameter counts and the sparsity of every prunable layer."""

    criterion: str
    scope: str
    params_before: int
    params_after: int
    layers: tuple[masks.LayerSparsity, ...]
    flops_before: int | None = None
    flops_after: int | None = None
    untouched: tuple[str, ...] = ()  # structured: what the dependency graph left alone, and why

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zeroed."""
        total = sum(layer.numel for layer in self.layers)
        return 1.0 - sum(layer.kept for layer in self.layers) / total if total else 0.0

    @property
    def per_layer(self) -> dict[str, float]:
        return {layer.name: layer.sparsity for layer in self.layers}

    def __str__(self) -> str:
        width = max([len(layer.name) for layer in self.layers] + [5])
        lines = [
            f"pruned with {self.criterion} ({self.scope}): parameters {self.params_before:,} -> "
            f"{self.params_after:,} ({self.params_before / max(self.params_after, 1):.1f}x fewer), "
            f"prunable sparsity {self.sparsity:.1%}",
        ]
        if self.flops_before is not None and self.flops_after is not None:
            lines.append(
                f"FLOPs {self.flops_before:,} -> {self.flops_after:,} "
                f"({self.flops_before / max(self.flops_after, 1):.2f}x fewer)"
            )
        lines += [f"left alone: {item}" for item in self.untouched]
        lines.append(f"  {'layer':<{width}}  {'weights':>10}  {'kept':>10}  sparsity")
        lines += [
            f"  {layer.name:<{width}}  {layer.numel:>10,}  {layer.kept:>10,}  {layer.sparsity:8.1%}"
            for layer in self.layers
        ]
        return "\n".join(lines)


def describe(sparsity: Sparsity, scope: str) -> str:
    return "per-layer budget" if isinstance(sparsity, Mapping) else f"{scope}, {sparsity:.0%}"
