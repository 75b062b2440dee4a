"""The rooms import one way, with no circle, read from the source (ast: nothing is imported):

    datamodules  ←  lightning_modules (components ← the rest)  ←  experiments  ←  ablations

and the code uses no private attribute of a library where a public API exists."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

ROOMS = ("datamodules", "lightning_modules", "experiments", "ablations")
#: (importer prefix, imported prefixes it must not use)
FORBIDDEN = [
    ("datamodules", ("lightning_modules", "experiments", "ablations")),
    ("lightning_modules.components", ("lightning_modules.run", "lightning_modules.official",
                                      "lightning_modules.segmentation", "experiments", "ablations")),
    ("lightning_modules", ("experiments", "ablations")),
    ("experiments", ("ablations",)),
]
#: private names of libraries (torch, Lightning, torchvision, wandb) the code once used; their public APIs:
#: `config_init.get`, `F.*` functional calls, the BatchNorm classes, WandbLogger's arguments
PRIVATE_LIBRARY_NAMES = ("_wandb_init", "_get(", "_call_kernel", "_BatchNorm")


def modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules `name` imports, at module level or inside functions (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from a.b import c` where c is a name, not a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_rooms_import_one_way(graph):
    upward = [f"{a} imports {b}" for a, targets in graph.items() for b in targets for room, banned in FORBIDDEN
              if (a == room or a.startswith(room + ".")) and any(b == x or b.startswith(x + ".") for x in banned)]
    assert not upward, "\n".join(upward)
    assert "lightning_modules.components.complexity" in graph["experiments.complexity"]  # the graph sees imports


def test_no_import_cycle(graph):
    """Packages' `__init__` re-exports aside, no module reaches itself through the modules it imports."""
    def edges(name: str) -> set[str]:
        return {t for t in graph[name] if not name.startswith(t + ".")}  # a module's own package is not a cycle

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges(name)):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " → ".join([*stack[stack.index(target):], target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_rooms_are_small_at_the_top():
    top = sorted(p.name for p in (ROOT / "lightning_modules").glob("*.py"))
    assert len(top) <= 8, top
    assert not (ROOT / "experiments/config.py").exists(), "the configs are read by the training CLI only"


def test_no_private_library_attributes():
    hits = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for path in modules().values()
            for i, line in enumerate(path.read_text().splitlines(), 1)
            for name in PRIVATE_LIBRARY_NAMES if name in line]
    assert not hits, "\n".join(hits)
