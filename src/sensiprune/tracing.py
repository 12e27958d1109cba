"""An fx graph out of any model.

torch.fx traces symbolically first; a submodule it cannot trace becomes an opaque leaf, so the
rest stays prunable. When the model's own forward cannot be traced symbolically (it branches
on tensor values, say), tracing falls back to running the forward on the example inputs while
recording it: every recorded operation is also executed, so a branch, a ``len`` or an ``int``
of a traced value takes the concrete value. The graph then follows the path those inputs take,
and the trace is refused if any layer with weights is left off that path (its channels could
not be kept consistent on the other path).
"""

from __future__ import annotations

import contextlib
import inspect
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

from .errors import SensipruneError, first_line


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, told to treat some submodules as opaque leaves."""

    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.opaque or super().is_leaf_module(
            m, module_qualified_name
        )


class _ConcreteProxy(fx.Proxy):
    """A proxy that can answer questions about its value: the value the example inputs gave."""

    def _value(self) -> Any:
        return self.tracer.values[self.node]

    def __len__(self) -> int:
        return len(self._value())

    def __int__(self) -> int:
        return int(self._value())

    def __index__(self) -> int:
        return operator.index(self._value())

    def __float__(self) -> float:
        return float(self._value())


class _ConcreteTracer(_LeafTracer):
    """Records the forward as fx does, and runs every recorded operation on real values."""

    def __init__(self, opaque: set[str], inputs: Sequence[torch.Tensor]) -> None:
        super().__init__(opaque)
        self.inputs = list(inputs)
        self.values: dict[fx.Node, Any] = {}
        self.placeholders = 0

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def create_proxy(
        self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None
    ):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        with torch.no_grad(), _eager_modules():
            self.values[proxy.node] = self._evaluate(kind, target, args, kwargs)
        return proxy

    def _evaluate(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        args, kwargs = self._real(args), self._real(kwargs)
        if kind == "placeholder":
            index, self.placeholders = self.placeholders, self.placeholders + 1
            return self.inputs[index] if index < len(self.inputs) else (args[0] if args else None)
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        if kind == "get_attr":
            value: Any = self.root
            for part in target.split("."):
                value = getattr(value, part)
            return value
        return None  # the output node

    def _real(self, value: Any) -> Any:
        return fx.node.map_aggregate(
            value, lambda v: self.values[v.node] if isinstance(v, fx.Proxy) else v
        )

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.values[obj.node])

    def iter(self, obj: fx.Proxy):
        return iter([obj[i] for i in range(len(self.values[obj.node]))])


# fx patches these two while it traces; real values must run through the originals
_MODULE_CALL = nn.Module.__dict__["__call__"]
_MODULE_GETATTR = nn.Module.__dict__["__getattr__"]


@contextlib.contextmanager
def _eager_modules() -> Iterator[None]:
    patched = nn.Module.__dict__["__call__"], nn.Module.__dict__["__getattr__"]
    nn.Module.__call__, nn.Module.__getattr__ = _MODULE_CALL, _MODULE_GETATTR
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = patched


def trace(
    model: nn.Module, example_inputs: Sequence[torch.Tensor] = ()
) -> tuple[fx.Graph, dict[str, str]]:
    """The model's fx graph (over the model itself: no GraphModule is generated, which would
    cost as much again), and the submodules left opaque with the reason."""
    concrete = _concrete_arguments(model, list(example_inputs))
    try:
        return _trace_with_leaves(model, lambda opaque: _LeafTracer(opaque), concrete)
    except _RootUntraceable as symbolic:
        inputs = list(example_inputs)
        try:
            graph, opaque = _trace_with_leaves(
                model, lambda o: _ConcreteTracer(o, inputs), concrete
            )
        except _RootUntraceable as concrete:
            raise SensipruneError(
                "structured pruning needs a model torch.fx can trace; its forward failed "
                f"symbolically ({symbolic.reason}) and on example_inputs ({concrete.reason}): "
                "move that code out of forward, or prune unstructured"
            ) from concrete
        # what only decided a branch (x.sum() > 0, x.shape[0]) is dead code now: drop it, so
        # it does not pin the channels it read
        graph = fx.GraphModule(model, graph).graph  # dead-code removal asks the module
        graph.eliminate_dead_code()
        _require_all_weights_reached(model, graph)
        return graph, opaque


class _RootUntraceable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _concrete_arguments(model: nn.Module, inputs: list[Any]) -> dict[str, Any] | None:
    """The forward's arguments that are not tensors (a flag, a scale) or not given (an
    optional mask left None): traced as the values they have, so ``if mask is None`` takes
    the branch these inputs take instead of failing on a proxy."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    concrete = {}
    for i, param in enumerate(params):
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            break
        if i < len(inputs) and not isinstance(inputs[i], torch.Tensor):
            concrete[param.name] = inputs[i]
        elif i >= len(inputs) and param.default is not param.empty:
            concrete[param.name] = param.default
    return concrete or None


def _trace_with_leaves(
    model: nn.Module, make_tracer, concrete: dict[str, Any] | None = None
) -> tuple[fx.Graph, dict[str, str]]:
    """Trace; each submodule that fails becomes an opaque leaf and tracing starts again."""
    opaque: dict[str, str] = {}
    while True:
        tracer = make_tracer(set(opaque))
        try:
            return tracer.trace(model, concrete_args=concrete), opaque
        except Exception as exc:  # fx raises many types for code it cannot trace
            reason = first_line(exc)
            inner = next((name for name in reversed(tracer.module_stack) if name), None)
            if inner is None or inner in opaque:
                raise _RootUntraceable(reason) from exc
            opaque[inner] = reason


def _require_all_weights_reached(model: nn.Module, graph: fx.Graph) -> None:
    """Every layer with weights is called, or its weights read, somewhere in ``graph``."""
    used = [n.target for n in graph.nodes if n.op in ("call_module", "get_attr")]
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        prefix = f"{name}." if name else ""
        if not any(u == name or name.startswith(f"{u}.") or u.startswith(prefix) for u in used):
            raise SensipruneError(
                f"the model's forward branches on tensor values, and layer {name!r} is not "
                "used on example_inputs: structured pruning cannot keep it consistent; pass "
                "example_inputs that take every branch, or prune unstructured"
            )
