"""The library's layout shows its flow: imports point one way (cli -> report -> methods ->
training -> evaluation -> data -> core), there is no import cycle, and no module imports another's private names. (A former
300-line cap per module is gone: it shaped the code instead of its concerns.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "atlas_lib"
LAYERS = {"core": 0, "data": 1, "evaluation": 2, "training": 3, "methods": 4, "report": 5, "cli": 6}
MODULES = sorted(p for p in LIB.rglob("*.py"))


def _name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every atlas_lib import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atlas_lib"):
            names = [a.name for a in node.names]
            if node.module in ("atlas_lib", *(f"atlas_lib.{k}" for k in LAYERS)):  # from atlas_lib.x import module
                out += [(f"{node.module}.{n}", [], node.lineno) for n in names]
            else:
                out.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("atlas_lib")]
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _name(p))
def test_imports_point_down_the_layers(path):
    here = _layer(_name(path))
    if here is None:
        return
    upward = [f"{path.name}:{line} imports {mod}" for mod, _, line in _imports(path)
              if (there := _layer(mod)) is not None and there > here]
    assert upward == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _name(p))
def test_no_private_name_is_imported_from_another_module(path):
    private = [f"{path.name}:{line} {mod}.{n}" for mod, names, line in _imports(path) for n in names
               if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_there_is_no_import_cycle():
    known = {_name(p): p for p in MODULES}
    graph = {m: {mod for mod, _, _ in _imports(p) if mod in known and mod != m} for m, p in known.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle.extend(stack[stack.index(n):] + [n] if n in stack else [m, n])
                return True
            if state.get(n) is None and visit(n, stack + [n]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and visit(m, [m]):
            break
    assert cycle == []
