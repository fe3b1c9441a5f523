"""The layout's rules, checked from the source: no import circle among mnas modules, and no
import of an mnas module hidden behind ``if TYPE_CHECKING`` (which would only hide a circle).

The graph is built with ``ast`` from ``src/mnas``: an edge ``a -> b`` for every ``import b`` /
``from b import x`` in ``a`` (``from pkg import mod`` counts as an edge to ``pkg.mod`` when that
is a module), wherever it sits in the file, including inside functions: a lazy import that closes
a circle is still a circle. Importing ``p.q.m`` also runs the ``__init__`` of the packages ``p.q``
and ``p``, so it is an edge to each of them too, except the importer's own enclosing packages
(already being imported when it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "mnas").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The mnas module `name` refers to: itself, or the closest enclosing module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the mnas modules it imports, ["module: name"] for TYPE_CHECKING imports)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    hidden: list[str] = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for inner in node.body:
                    guarded.update(id(n) for n in ast.walk(inner))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
            for target in targets:
                dep = _resolve(target, modules)
                if dep is None or dep == mod:
                    continue
                if id(node) in guarded:
                    hidden.append(f"{mod}: {dep}")
                graph[mod].add(dep)
                ancestors = {mod.rsplit(".", k)[0] for k in range(1, mod.count(".") + 1)}
                package = dep.rpartition(".")[0]
                while package and package != "mnas":
                    if package not in ancestors and package != mod and package in modules:
                        graph[mod].add(package)
                    package = package.rpartition(".")[0]
    return graph, hidden


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_type_checking_imports_of_mnas_modules():
    _, hidden = import_graph()
    assert hidden == []


if __name__ == "__main__":
    g, h = import_graph()
    for c in cycles(g):
        print("cycle:", " ".join(c))
    for line in h:
        print("TYPE_CHECKING:", line)
