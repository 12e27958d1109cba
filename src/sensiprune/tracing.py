"""An fx graph out of any model: submodules fx cannot trace become opaque leaves."""

from __future__ import annotations

from torch import fx, nn

from .errors import SensipruneError


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, told to treat some submodules as opaque leaves."""

    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.opaque or super().is_leaf_module(
            m, module_qualified_name
        )


def trace(model: nn.Module) -> tuple[fx.GraphModule, dict[str, str]]:
    """Trace with torch.fx; a submodule fx cannot trace (data-dependent control flow, say)
    becomes an opaque leaf and tracing starts again, so the rest of the model stays prunable."""
    opaque: dict[str, str] = {}
    while True:
        tracer = _LeafTracer(set(opaque))
        try:
            return fx.GraphModule(model, tracer.trace(model)), opaque
        except Exception as exc:  # fx raises many types for code it cannot trace
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            inner = next((name for name in reversed(tracer.module_stack) if name), None)
            if inner is None or inner in opaque:
                raise SensipruneError(
                    "structured pruning needs a model torch.fx can trace, and tracing its "
                    f"forward failed: {reason} (move data-dependent control flow out of "
                    "forward, or prune unstructured)"
                ) from exc
            opaque[inner] = reason
