"""The package's layering (docs/architecture.md): no import circle, lazy imports included, no import that points
up the layers, and nothing imports a command line."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wavedistill"


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at the top or inside functions)."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "wavedistill":
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                graph[mod].add(sub if sub in modules else target)
        graph[mod].discard(mod)
    return graph


def test_there_is_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph[mod]):
            assert state.get(dep) != 1, f"import circle: {' -> '.join(path + [mod, dep])}"
            if dep not in state:
                visit(dep, path + [mod])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])


# The layering of docs/architecture.md, bottom up: a module imports its own layer and the layers below it only.
LAYERS = [("wavedistill.errors", "wavedistill.version"), ("wavedistill.core",), ("wavedistill.mixers",),
          ("wavedistill.surgery",), ("wavedistill.data", "wavedistill.io"), ("wavedistill.kd", "wavedistill.evaluate"),
          ("wavedistill.training",), ("wavedistill.evals",), ("wavedistill.bench", "wavedistill.lab"),
          ("wavedistill.cli", "wavedistill.__main__", "wavedistill")]


def layer(mod: str) -> int:
    for i, names in enumerate(LAYERS):
        # the package's own __init__ (the public API) is the top; every other module sits in its package's layer
        if mod in names or any(mod.startswith(n + ".") for n in names if n != "wavedistill"):
            return i
    raise AssertionError(f"{mod} is in no layer of LAYERS: add it there and to docs/architecture.md")


def test_no_import_points_up_the_layering():
    for mod, deps in import_graph().items():
        up = sorted(d for d in deps if layer(d) > layer(mod))
        assert not up, f"{mod} (layer {layer(mod)}) imports {up} from above"


def test_nothing_imports_a_command_line():
    for mod, deps in import_graph().items():
        if not mod.startswith("wavedistill.cli") and mod != "wavedistill.__main__":
            assert not any(d.startswith("wavedistill.cli") for d in deps), f"{mod} imports a command line"
