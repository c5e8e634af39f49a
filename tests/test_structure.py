"""The package's shape: its modules import one way (no cycle, counting imports inside
functions too, since they run), nothing below the CLI imports the CLI, and `models/` stands
alone (architectures that any PyTorch code can use without the service)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for d in ("search", "models") for p in (ROOT / d).rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The project modules `name` imports at run time (`if TYPE_CHECKING:` blocks aside)."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_the_imports_inside_functions() -> None:
    assert "search.storage" in GRAPH["search.runner"]  # top level
    assert "search.evidence" in GRAPH["search.study"]  # inside `best_trial`


def test_no_import_cycle_among_the_project_s_modules() -> None:
    cycle = _cycle()
    assert cycle is None, " → ".join(cycle or [])


def test_nothing_below_the_cli_imports_it() -> None:
    up = {
        (name, other)
        for name, targets in GRAPH.items()
        if not name.startswith("search.cli") and name != "search.__main__"
        for other in targets
        if other.startswith("search.cli")
    }
    assert not up


def test_models_stand_alone() -> None:
    assert not {(n, t) for n, ts in GRAPH.items() if n.startswith("models") for t in ts
                if t.startswith("search")}  # fmt: skip
