"""The layout ARCHITECTURE.md describes, held: no import cycles, and stages that import only
the stages below them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sensiprune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[tuple[str, str]]:
    """(module, name) for every ``from sensiprune... import name`` that runs: those under
    ``if TYPE_CHECKING:`` only feed type checkers."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for child in block.body
        for node in ast.walk(child)
    }
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and id(node) not in skipped
            and (node.module or "").startswith("sensiprune")
        ):
            found |= {(node.module, alias.name) for alias in node.names}
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _target(module: str, name: str) -> str:
    """The module an import reads: ``from sensiprune.x import y`` reads sensiprune.x.y where
    that is a module, else sensiprune.x."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


GRAPH = {
    name: {_target(m, n) for m, n in _runtime_imports(path)} - {name}
    for name, path in MODULES.items()
}


def test_no_module_imports_itself_through_others():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(GRAPH.get(module, ())):
            if other.startswith(module + "."):
                continue  # a package importing its own modules to register them
            if state.get(other) == "open":
                cycle = [*path[path.index(other) :], other] if other in path else [other]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other, [*path, other])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


# what each stage may not import (at run time)
FORBIDDEN = {
    "sensiprune.handlers": ("criteria", "selection", "apply", "analysis", "runs", "io", "report",
                            "commands", "pruning", "structured", "options"),
    "sensiprune.structure": ("criteria", "selection", "apply", "analysis", "runs", "io",
                             "report", "commands", "pruning", "structured", "options"),
    "sensiprune.criteria": ("selection", "apply", "analysis", "runs", "io", "report", "commands",
                            "pruning", "structured", "options"),
    "sensiprune.selection": ("apply", "analysis", "runs", "io", "report", "commands", "pruning",
                             "structured"),
    "sensiprune.apply": ("analysis", "runs", "io", "report", "commands", "pruning",
                         "structured"),
    "sensiprune.analysis": ("report", "commands"),
    "sensiprune.io": ("analysis", "runs", "report", "commands"),
}  # fmt: skip


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_a_stage_imports_only_the_stages_below_it(stage):
    found = [
        f"{module} imports {other}"
        for module, others in GRAPH.items()
        if module == stage or module.startswith(stage + ".")
        for other in others
        if other.split(".")[1] in FORBIDDEN[stage]
    ]
    assert not found


def test_nothing_imports_a_private_name_of_another_module():
    found = [
        f"{name} imports {module}.{imported}"
        for name, path in MODULES.items()
        for module, imported in _runtime_imports(path)
        if imported.startswith("_") and module != name
    ]
    assert not found
