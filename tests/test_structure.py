"""The shape of the code base: no import circle among the modules of src/mambava, no function
longer than a reader follows in one sitting, no module too long to find one's way in."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mambava"

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
LONG_MODULES = {"models/ssm.py"}  # the selective scan's kernels (numba, forward and backward)
# Being split: functions over MAX_FUNCTION_LINES that are being split right now (empty this set
# when they are done; nothing new goes in).
BEING_SPLIT: set[str] = set()  # functions being split (none now)


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) of every module of the package at ``src``."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _imported(node: ast.AST, package: str, modules: dict) -> set[str]:
    """The mambava modules one import statement names (``from a.b import c``: ``a.b.c`` if that is a
    module, else ``a.b``; a relative import resolved against ``package``)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "mambava"}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module.split(".")[0] != "mambava":
        return set()
    return {f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the mambava modules it imports: at the top, inside functions and under
    ``if TYPE_CHECKING:`` alike. Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` too,
    so those count as well, except the packages the importing module is itself in (they are
    already being imported when it runs)."""
    modules = _modules(src)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, package, modules):
                while target and target not in modules:  # `import mambava.x.y` where y is a name
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep != name and not name.startswith(dep + "."):
                        deps.add(dep)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import circle per strongly connected component of more than one module (Tarjan),
    as a path ``a -> b -> ... -> a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

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
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle(graph, comp) for comp in components]


def _circle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {start}")  # pragma: no cover - a component always has one


def test_the_import_graph_has_no_circle():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "mambava.config" in graph["mambava.models"]  # under `if TYPE_CHECKING:`
    assert "mambava.models.mamba_va" in graph["mambava.models"]  # inside a function
    assert {"mambava.data.windows", "mambava.data"} <= graph["mambava.inference"]  # a module and its package
    assert "mambava.models" not in graph["mambava.models.mamba_va"]  # not the package a module is in
    assert "mambava.variants" in graph["mambava.config"] and "mambava.models" not in graph["mambava.config"]


def test_relative_imports_and_packages(tmp_path):
    pkg = tmp_path / "mambava"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import X\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("import mambava.sub.b\n")
    graph = import_graph(pkg)
    assert graph == {"mambava": set(), "mambava.a": {"mambava.sub", "mambava.sub.b"},
                     "mambava.sub": {"mambava.sub.b"}, "mambava.sub.b": {"mambava.a", "mambava.sub.c"},
                     "mambava.sub.c": {"mambava.sub.b"}}
    assert cycles(graph) == [["mambava.a", "mambava.sub.b", "mambava.a"]]  # one component, its shortest circle


def _functions():
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield rel, node


def test_functions_are_short():
    """Every function and method is at most MAX_FUNCTION_LINES long (from ``def`` to its last line;
    decorators not counted)."""
    long = [f"{rel}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for rel, node in _functions()
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and f"{rel}:{node.name}" not in BEING_SPLIT]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_modules_are_short():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES and rel not in LONG_MODULES:
            long.append(f"{rel}: {n} lines")
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)
