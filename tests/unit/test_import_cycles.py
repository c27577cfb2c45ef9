"""No import cycle in ``watcher/``, counting every import that runs: at the top of a module and inside functions
(a deferred import is still a dependency, only a later one), ``from . import x`` and other relative imports, and
the package ``__init__`` modules an import runs on its way. Only ``if TYPE_CHECKING:`` blocks are left out: they
never run.

Why: a cycle through deferred imports (config → sink registry → sink modules → config) is what made building any
``SinkConfig`` import every sink, aiohttp and structlog, and what kept the sink contract typed ``Any``. The import
direction is in docs/architecture.md: sinks → spec, config → spec, never config → sinks.

The first tests hold the walker itself against a small package written here, so a walker that misses a kind of
import cannot let a cycle through unseen.
"""

from __future__ import annotations

import ast
import textwrap
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import watcher

ROOT = Path(watcher.__file__).parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int  # where ``source`` imports it


def module_names(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``), for every ``.py`` under ``root`` (a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` that can run: anywhere in functions, classes, try/with blocks;
    not in the body of ``if TYPE_CHECKING:`` (its ``else`` runs)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                found.extend(_imports_in(stmt))
            continue
        found.extend(_imports_in(child))
    return found


def _imports_in(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    own = [node] if isinstance(node, ast.Import | ast.ImportFrom) else []
    return own + _imports(node)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_edges(root: Path) -> list[Edge]:
    """Who imports whom inside the package at ``root``.

    ``import a.b.c`` and ``from a.b import c`` (a module) depend on ``a.b.c``; ``from a.b import name`` (not a
    module) depends on ``a.b``'s ``__init__``. Importing a module also runs the ``__init__`` of each package
    above it that is not above the importer too (those are already running), so that is an edge as well.
    """
    modules = module_names(root)
    edges: list[Edge] = []
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
        ours = set(_ancestors(name))
        targets: list[tuple[str, int]] = []
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets += [(alias.name, node.lineno) for alias in node.names]
                continue
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                package = ".".join(base + ([node.module] if node.module else []))
            else:
                package = node.module or ""
            for alias in node.names:
                child = f"{package}.{alias.name}"
                if child in modules:
                    targets.append((child, node.lineno))
                    targets += [(p, node.lineno) for p in [*_ancestors(child), package] if p not in ours]
                else:
                    targets.append((package, node.lineno))
        for target, line in targets:
            closure = [target] + [p for p in _ancestors(target) if p not in ours]
            for module in closure:
                if module in modules and module != name:
                    edges.append(Edge(name, module, line))
    return edges


def cycles(edges: list[Edge]) -> list[tuple[set[str], list[Edge]]]:
    """Each strongly connected set of modules (Tarjan) with one shortest cycle through it (a BFS inside it)."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, {}).setdefault(e.target, e)
        graph.setdefault(e.target, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # recursion depth is bounded by the number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    found = []
    for component in components:
        start = min(component)
        previous: dict[str, Edge] = {}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for w, edge in sorted(graph[v].items()):
                if w in component and w not in previous:
                    previous[w] = edge
                    queue.append(w)
        path = [previous[start]]
        while path[-1].source != start:
            path.append(previous[path[-1].source])
        found.append((component, path[::-1]))
    return found


def describe(found: tuple[set[str], list[Edge]]) -> str:
    """``a (line 3) → b (line 9) → a``, and the other modules caught in the same knot."""
    component, cycle = found
    text = " → ".join(f"{e.source} (line {e.line})" for e in cycle) + f" → {cycle[0].source}"
    others = sorted(component - {e.source for e in cycle})
    return text + (f"  [{len(component)} modules tied together, also: {', '.join(others)}]" if others else "")


# ------------------------------------------------------------------------------------ the walker itself


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_walker_sees_every_kind_of_import_that_runs(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "__init__.py": "",
        "top.py": "import pkg.sub.leaf\n",
        "deferred.py": "def f():\n    from pkg import top\n",
        "relative.py": "from . import top\nfrom .sub.leaf import X\n",
        "typed.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import top\n"
                     "else:\n    from pkg import deferred\n"),
        "sub/__init__.py": "from ..relative import Y\n",
        "sub/leaf.py": "from . import sibling\nfrom pkg.sub import NAME\n",
        "sub/sibling.py": "",
    })
    edges = {(e.source, e.target) for e in import_edges(root)}
    assert edges == {
        ("pkg.top", "pkg.sub.leaf"), ("pkg.top", "pkg.sub"),  # the package's __init__ runs first
        ("pkg.deferred", "pkg.top"),  # inside a function
        ("pkg.relative", "pkg.top"), ("pkg.relative", "pkg.sub.leaf"), ("pkg.relative", "pkg.sub"),
        ("pkg.typed", "pkg.deferred"),  # the TYPE_CHECKING branch never runs; its else does
        ("pkg.sub", "pkg.relative"),
        ("pkg.sub.leaf", "pkg.sub.sibling"),  # its own package is already running: no edge to it for that
        ("pkg.sub.leaf", "pkg.sub"),  # ... but a name from its __init__ is a dependency on it
    }


def test_a_cycle_through_a_deferred_import_and_a_package_init_is_found_and_named(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "__init__.py": "",
        "config.py": "def registry():\n    from pkg.sinks.spec import Spec\n",
        "sinks/__init__.py": "from pkg.sinks import slack\n",
        "sinks/spec.py": "",
        "sinks/slack.py": "from pkg.config import Table\n",
    })
    found = cycles(import_edges(root))
    assert [describe(c) for c in found] == [
        "pkg.config (line 2) → pkg.sinks (line 1) → pkg.sinks.slack (line 1) → pkg.config"]


# ------------------------------------------------------------------------------------------ watcher/


def test_watcher_has_no_import_cycle() -> None:
    edges = import_edges(ROOT)
    assert len({e.source for e in edges}) > 50  # it read the package
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c) for c in found)


def test_config_and_the_sink_contract_import_no_sink_module() -> None:
    """The direction of the sink seam: sink modules import ``sinks.spec``; ``config`` and ``settings`` reach
    ``spec`` but never a sink module or the registry, by any path."""
    graph: dict[str, set[str]] = {}
    for e in import_edges(ROOT):
        graph.setdefault(e.source, set()).add(e.target)
    sink_modules = {f"watcher.sinks.{p.stem}" for p in (ROOT / "sinks").glob("*.py")} - {
        "watcher.sinks.__init__", "watcher.sinks.spec"}
    for start in ("watcher.config", "watcher.settings", "watcher.sinks.spec", "watcher.table"):
        seen, todo = {start}, [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert not seen & sink_modules, f"{start} reaches {sorted(seen & sink_modules)}"
