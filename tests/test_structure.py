"""The package's shape: `search/` is a stack of layers, one sub-package each, and a module
imports only from its own layer or the layers below (imports inside functions and under
`if TYPE_CHECKING:` count too); no import cycle, type-checking imports included; nothing below
the CLI imports the CLI, the benchmarks are imported only by `regsearch bench`, and `models/`
stands alone (architectures that any PyTorch code can use without the service)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for d in ("search", "models") for p in (ROOT / d).rglob("*.py")}


# Bottom to top: what each layer is for is in its `__init__.py`.
LAYERS = (
    "core",  # errors, addresses, attribute keys, statistics: imports nothing of the project
    "config",  # the study file's keys, the search space
    "data",  # data sets and their readers
    "training",  # one model trained: the loop, networks, batch regularizers
    "study",  # the Optuna study: storage, confirm phase, refit, sweeps
    "tracking",  # MLflow: runs, the registry, the champion
    "report",  # what a study says: verdict, tables, dashboard notes, the HTML report
    "run",  # a trial, a worker, a launch
    "api",  # `search.api`, the Python entry points
    "bench",  # `regsearch bench`
    "cli",  # the command line
)


def _layer(name: str) -> int:
    """The layer of module `name` (the package root and `__main__` sit at the ends)."""
    parts = name.split(".")
    if name == "search":
        return 0
    if name == "search.__main__":
        return len(LAYERS)
    return LAYERS.index(parts[1])


def _imports(name: str, *, typing: bool = False) -> set[str]:
    """The project modules `name` imports at run time; `typing`: and under `if
    TYPE_CHECKING:`."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if not typing and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
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
TYPED = {name: _imports(name, typing=True) for name in MODULES}  # type-checking imports too


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_the_imports_inside_functions_and_for_type_checking() -> None:
    assert "search.study.storage" in GRAPH["search.run.runner"]  # top level
    assert "search.study.evidence" in GRAPH["search.study.studies"]  # inside `best_trial`
    assert "search.tracking.runs" not in GRAPH["search.tracking.champion"]
    assert "search.tracking.runs" in TYPED["search.tracking.champion"]  # `Tracker`, typing only


def test_every_module_of_search_lives_in_a_layer() -> None:
    loose = [
        n
        for n, path in MODULES.items()
        if n.startswith("search.") and n.count(".") == 1 and path.name != "__init__.py"
    ]
    assert sorted(loose) == ["search.__main__", "search.api"]
    assert {n.split(".")[1] for n in MODULES if n.count(".") >= 2 and n.startswith("search.")} == (
        set(LAYERS) - {"api"}
    )


def test_no_layer_imports_one_above_it() -> None:
    up = sorted(
        f"{name} → {other}"
        for name, targets in TYPED.items()
        if name.startswith("search")
        for other in targets
        if other.startswith("search") and _layer(other) > _layer(name)
    )
    assert not up, "\n".join(up)


def test_no_import_cycle_among_the_project_s_modules() -> None:
    for graph in (GRAPH, TYPED):
        cycle = _cycle(graph)
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


def test_the_benchmarks_are_imported_only_by_regsearch_bench() -> None:
    users = {
        name
        for name, targets in TYPED.items()
        if not name.startswith("search.bench")
        for other in targets
        if other.startswith("search.bench")
    }
    assert users == {"search.cli._bench"}


def _attr_key_literals(source: str) -> list[int]:
    """The lines of `source` that write a user-attribute key as a string literal: the key of
    `set_user_attr(...)` (and the storage's `set_trial_user_attr` / `set_study_user_attr`), of
    `.user_attrs.get(...)` and of `.user_attrs[...]`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            if name == "set_user_attr" and node.args:
                key = node.args[0]
            elif name in ("set_trial_user_attr", "set_study_user_attr") and len(node.args) > 1:
                key = node.args[1]
            elif name == "get" and isinstance(owner, ast.Attribute) and owner.attr == "user_attrs":
                key = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            key = node.slice if node.value.attr == "user_attrs" else None
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            lines.append(node.lineno)
    return sorted(lines)


def test_attribute_keys_are_written_through_their_constants() -> None:
    """A trial or study user-attribute key is spelt once, by its constant (most of them in
    `search.core.records`): new code names the constant, not the string."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "search").rglob("*.py"))
        for line in _attr_key_literals(path.read_text())
    ]
    assert not found, "attribute keys as string literals:\n" + "\n".join(found)


def test_the_attribute_key_scan_sees_each_form() -> None:
    source = (
        't.set_user_attr("a", 1)\n'
        's.set_trial_user_attr(1, "b", 2)\n'
        'x = t.user_attrs.get("c", None)\n'
        'y = t.user_attrs["d"]\n'
        "t.set_user_attr(KEY, 1)\n"
        "z = t.user_attrs.get(KEY), t.user_attrs[KEY], t.params.get('e')\n"
    )
    assert _attr_key_literals(source) == [1, 2, 3, 4]


def test_each_attribute_key_has_one_constant() -> None:
    """No two `..._ATTR` constants of `search/` spell the same key."""
    owners: dict[str, list[str]] = {}
    for path in sorted((ROOT / "search").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not (isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_ATTR"):
                        owners.setdefault(value.value, []).append(f"{_module(path)}.{target.id}")
    twice = {key: names for key, names in owners.items() if len(names) > 1}
    assert not twice, twice
