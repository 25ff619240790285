"""The package's layering (docs/architecture.md): no import circle, lazy imports included, and the low packages
import nothing above them."""

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


# package -> the only parts of wavedistill its modules may import
BELOW = {"wavedistill.core": ("wavedistill.core", "wavedistill.errors", "wavedistill.version"),
         "wavedistill.mixers": ("wavedistill.mixers", "wavedistill.core", "wavedistill.errors"),
         "wavedistill.kd": ("wavedistill.kd", "wavedistill.errors")}


def test_the_low_packages_import_nothing_above_them():
    for mod, deps in import_graph().items():
        for package, allowed in BELOW.items():
            if mod == package or mod.startswith(package + "."):
                above = sorted(d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed))
                assert not above, f"{mod} imports {above}, above {package}"


def test_nothing_imports_a_command_line():
    for mod, deps in import_graph().items():
        for cli in ("wavedistill.cli", "wavedistill.lab.cli"):
            assert cli not in deps or mod in ("wavedistill.__main__", "wavedistill.cli"), f"{mod} imports {cli}"
