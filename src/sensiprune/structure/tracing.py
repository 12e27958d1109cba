"""An fx graph out of any model.

torch.fx traces symbolically first; a submodule it cannot trace becomes an opaque leaf, so the
rest stays prunable. When the model's own forward cannot be traced symbolically (it branches
on tensor values, say), or a submodule with weights had to be left opaque, tracing also runs
the forward on the example inputs while recording it: every recorded operation is also
executed, so a branch, a ``len`` or an ``int`` of a traced value takes the concrete value, and
the graph that leaves fewer weights opaque is used. That graph follows the path those inputs
take: it is refused if a layer with weights is left off that path (its channels could not be
kept consistent on the other path); a parameter a container keeps for itself and the path
does not use (a training-only mask embedding) is reported and left as it is.

Model code as the ecosystem writes it traces too: forwards behind ``(*args, **kwargs)``
decorators, sizes read from tensors given to torch factories (``torch.ones(x.shape[0], n)``),
modules made inside forward, and outputs holding objects fx cannot record (a cache).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from sensiprune.errors import SensipruneError, first_line
from sensiprune.handlers.input_slices import positional_arguments


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, told to treat some submodules as opaque leaves."""

    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.opaque or super().is_leaf_module(
            m, module_qualified_name
        )

    def trace(self, root, concrete_args=None) -> fx.Graph:
        with _sizes_from_proxies(self):
            return super().trace(root, concrete_args)

    def create_arg(self, a: Any) -> Any:
        """An object fx cannot put in a graph (a key/value cache a language model returns)
        is recorded as None: the channel walk never reads one, and a graph that did need it
        fails when it is run, before anything is cut."""
        try:
            return super().create_arg(a)
        except NotImplementedError:
            return None

    def call_module(self, m, forward, args, kwargs):
        """A module made inside forward (``nn.ReLU()(x)``) is not in the model's tree: with
        nothing to own, its operations are recorded inline."""
        installed = self.submodule_paths is None or m in self.submodule_paths
        if not installed and next(itertools.chain(m.parameters(), m.buffers()), None) is None:
            return forward(*args, **kwargs)
        if installed and self.submodule_paths is not None:
            path = self.submodule_paths[m]
            if not self.is_leaf_module(m, path):
                _note_arguments(m, path, args, kwargs)
        return super().call_module(m, forward, args, kwargs)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        """fx reads the parameters of a decorated forward from the function it wraps, then
        rewrites the wrapper's code to take them, which fails for a ``(*args, **kwargs)``
        wrapper (Hugging Face decorates its forwards so). Here each parameter of the wrapped
        function gets a placeholder, in order, and the call goes through the wrapper,
        decorator logic included; ``*args`` and ``**kwargs`` stay empty."""
        inner = inspect.unwrap(root_fn)
        if inner is root_fn:
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        concrete = concrete_args if isinstance(concrete_args, dict) else {}
        params = list(inspect.signature(inner).parameters.values())[1 if is_module else 0 :]
        args: list[Any] = [self.root] if is_module else []
        kwargs: dict[str, Any] = {}
        for param in params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            default = () if param.default is param.empty else (param.default,)
            proxy = self.create_proxy("placeholder", param.name, default, {})
            value = concrete.get(param.name, proxy)
            if param.kind == param.KEYWORD_ONLY:
                kwargs[param.name] = value
            else:
                args.append(value)
        return lambda: root_fn(*args, **kwargs), []


def _note_arguments(module: nn.Module, path: str, args: tuple, kwargs: dict) -> None:
    """Note on each traced value that enters ``module`` which argument of its forward it is
    (``meta["enters"]``): a tensor made outside a block and handed to it (ALiBi biases) can
    then be sliced where it enters (structure/entries.py)."""
    names = positional_arguments(module)
    if names is None or len(args) > len(names):
        return
    for name, value in itertools.chain(zip(names, args), kwargs.items()):
        if isinstance(value, fx.Proxy):
            value.node.meta.setdefault("enters", []).append((path, name))


# attributes of a traced value that are the same for any input of this dtype and device
_METADATA = frozenset({"dtype", "device", "layout", "is_cuda", "is_sparse"})


class _ConcreteProxy(fx.Proxy):
    """A proxy that can answer questions about its value: the value the example inputs gave."""

    def _value(self) -> Any:
        return self.tracer.values[self.node]

    def __getattr__(self, name: str) -> Any:
        if name in _METADATA:  # a constant for these inputs, never a channel
            return getattr(self._value(), name)
        return _ConcreteAttribute(self, name)

    def __len__(self) -> int:
        return len(self._value())

    def __int__(self) -> int:
        return int(self._value())

    def __index__(self) -> int:
        return operator.index(self._value())

    def __float__(self) -> float:
        return float(self._value())


class _ConcreteAttribute(fx.proxy.Attribute, _ConcreteProxy):
    """``x.shape`` or a method of a traced value, answering as it does: ``len(x.shape)``."""


class _ConcreteTracer(_LeafTracer):
    """Records the forward as fx does, and runs every recorded operation on real values."""

    def __init__(self, opaque: set[str], inputs: Sequence[torch.Tensor]) -> None:
        super().__init__(opaque)
        self.inputs = list(inputs)
        self.values: dict[fx.Node, Any] = {}
        self.placeholders = 0
        self.own_tensors: set[int] = set()  # the parameters and buffers of the model

    def trace(self, root, concrete_args=None) -> fx.Graph:
        own = itertools.chain(root.parameters(), root.buffers())
        self.own_tensors = {id(t) for t in own}
        return super().trace(root, concrete_args)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def call_module(self, m, forward, args, kwargs):
        """A tensor the model made from constants alone (MPT's ALiBi table) and hands to a
        block enters it as a traced value, not a constant folded into what the block does
        with it: what the block reads of it can then be followed to that argument."""
        if self.submodule_paths and not self.is_leaf_module(m, self.submodule_paths.get(m, "")):
            args = tuple(self._traced(a) for a in args)
            kwargs = {k: self._traced(v) for k, v in kwargs.items()}
        return super().call_module(m, forward, args, kwargs)

    def _traced(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or id(value) in self.own_tensors:
            return value  # a traced value already, or a parameter or buffer
        node = self.create_arg(value)  # fx keeps it as a constant of the root
        self.values[node] = value
        return self.proxy(node)

    def create_proxy(
        self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None
    ):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        # torch's own functions and tensor methods call no module: only the rest need the
        # module methods fx patched put back, which costs a type-cache flush each time
        eager = kind in ("call_module", "get_attr") or (
            kind == "call_function" and not _is_torch_builtin(target)
        )
        with torch.no_grad(), _eager_modules() if eager else contextlib.nullcontext():
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


# torch functions and methods of a tensor that take sizes: a traced size (x.shape[0]) given to
# them is an object with __torch_function__ in an int slot, which torch's argument parser
# refuses instead of dispatching, so they are routed to the tracer by hand
_SIZE_FUNCTIONS = (
    "ones", "zeros", "empty", "full", "rand", "randn", "randint", "arange", "eye", "tensor",
    "as_tensor",
)  # fmt: skip
_SIZE_METHODS = ("expand", "view", "reshape", "repeat", "new_ones", "new_zeros", "new_full")


@contextlib.contextmanager
def _sizes_from_proxies(tracer: fx.Tracer) -> Iterator[None]:
    """While tracing, those functions record a node when given a traced value, and run as
    usual otherwise."""

    def routed(original: Any, kind: str, target: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if any(isinstance(a, fx.Proxy) for a in pytree.tree_leaves((args, kwargs))):
                return tracer.create_proxy(kind, target, args, kwargs)
            return original(*args, **kwargs)

        return call

    patched = [(torch, name, getattr(torch, name)) for name in _SIZE_FUNCTIONS]
    patched += [(torch.Tensor, name, torch.Tensor.__dict__.get(name)) for name in _SIZE_METHODS]
    for owner, name, original in patched:
        if owner is torch:
            setattr(owner, name, routed(original, "call_function", original))
        else:
            setattr(owner, name, routed(getattr(torch.Tensor, name), "call_method", name))
    try:
        yield
    finally:
        for owner, name, original in patched:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


# fx patches these two while it traces; real values must run through the originals
_MODULE_CALL = nn.Module.__dict__["__call__"]
_MODULE_GETATTR = nn.Module.__dict__["__getattr__"]


def _is_torch_builtin(target: Any) -> bool:
    """A function of torch or of Python's operator module (no module is called inside)."""
    owner = getattr(target, "__module__", None) or ""
    return owner.split(".")[0] in ("torch", "_operator", "operator") or (
        type(target).__name__ == "builtin_function_or_method"
    )


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
    cost as much again), and the submodules left opaque with the reason. Symbolic tracing
    comes first; when it fails at the root, or leaves layers with weights opaque, tracing on
    the example inputs is tried too, and the graph that leaves fewer weights opaque wins."""
    with _caches_kept(model):
        return _trace(model, example_inputs)


@contextlib.contextmanager
def _caches_kept(model: nn.Module) -> Iterator[None]:
    """Put back what a forward stored in its modules while being traced: a cache of
    attention biases keyed by device, or a window size set from the input's size, would
    keep a traced value, and the next trace would read a value of another graph. (fx's own
    tensor constants, new attributes of the model, stay: the graph reads them.)"""
    saved = []
    for module in model.modules():
        state = vars(module)
        saved.append((state, dict(state), {
            attr: copy.copy(value) for attr, value in state.items()
            if attr[0] != "_" and isinstance(value, (dict, list))
        }))  # fmt: skip
    try:
        yield
    finally:
        for state, before, contents in saved:
            for attr, value in list(state.items()):
                if attr not in before and isinstance(value, fx.Proxy):
                    del state[attr]
                elif attr in before and value is not before[attr]:
                    state[attr] = before[attr]
            for attr, items in contents.items():
                value = state[attr]
                value.clear()
                value.extend(items) if isinstance(value, list) else value.update(items)


def _trace(
    model: nn.Module, example_inputs: Sequence[torch.Tensor]
) -> tuple[fx.Graph, dict[str, str]]:
    concrete = _concrete_arguments(model, list(example_inputs))
    try:
        symbolic = _trace_with_leaves(model, lambda opaque: _LeafTracer(opaque), concrete)
    except _RootUntraceable as failed:
        symbolic, why_not = None, failed.reason
    if symbolic is not None and not _opaque_weights(model, symbolic[1]):
        return symbolic
    inputs = list(example_inputs)
    try:
        graph, opaque = _trace_with_leaves(model, lambda o: _ConcreteTracer(o, inputs), concrete)
    except _RootUntraceable as failed:
        if symbolic is not None:
            return symbolic
        raise SensipruneError(
            "structured pruning needs a model torch.fx can trace; its forward failed "
            f"symbolically ({why_not}) and on example_inputs ({failed.reason}): "
            "move that code out of forward, or prune unstructured"
        ) from failed
    if symbolic is not None and _opaque_weights(model, opaque) >= _opaque_weights(
        model, symbolic[1]
    ):
        return symbolic
    # what only decided a branch (x.sum() > 0, x.shape[0]) is dead code now: drop it, so
    # it does not pin the channels it read
    graph = fx.GraphModule(model, graph).graph  # dead-code removal asks the module
    graph.eliminate_dead_code()
    for name in _unreached(model, graph):
        opaque[name] = "not used on example_inputs"
    return graph, opaque


def _opaque_weights(model: nn.Module, opaque: dict[str, str]) -> int:
    """How many parameters sit inside the submodules a trace left opaque."""
    return sum(p.numel() for name in opaque for p in model.get_submodule(name).parameters())


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
    concrete: dict[str, Any] = {}
    for i, param in enumerate(params):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind == param.KEYWORD_ONLY:
            if param.default is not param.empty:
                concrete[param.name] = param.default
        elif i < len(inputs) and not isinstance(inputs[i], torch.Tensor):
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
            opaque[inner] = f"could not be traced ({reason})"


def _unreached(model: nn.Module, graph: fx.Graph) -> list[str]:
    """Parameters ``graph`` never uses (under any of their names: a shared
    embedding is reached through whichever name ran). A layer off the traced path is refused:
    a cut of the channels it shares would not fit it on the path not taken. A parameter a
    container keeps for itself (a mask token, a training-only embedding) is only reported."""
    reached: set[int] = set()
    for node in graph.nodes:
        if node.op == "call_module":
            reached.update(map(id, model.get_submodule(node.target).parameters()))
        elif node.op == "get_attr":
            owner, _, attr = node.target.rpartition(".")
            value = getattr(model.get_submodule(owner), attr, None)
            if isinstance(value, torch.Tensor):
                reached.add(id(value))
            elif isinstance(value, nn.Module):
                reached.update(map(id, value.parameters()))
    unreached = []
    for name, module in model.named_modules():
        unused = [a for a, p in module.named_parameters(recurse=False) if id(p) not in reached]
        if not unused:
            continue
        if next(module.children(), None) is not None:
            unreached += [f"{name}.{attr}" if name else attr for attr in unused]
            continue
        raise SensipruneError(
            f"the model's forward branches on tensor values, and layer {name!r} is not "
            "used on example_inputs: structured pruning cannot keep it consistent; pass "
            "example_inputs that take every branch, or prune unstructured"
        )
    return unreached
