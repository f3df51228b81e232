"""The package's layers: imports only point down, and no two packages import each other (directly or around a loop).

Every `import` and `from ... import` statement of every module under src/batchnorm is read from its syntax tree,
including the imports inside functions (a lazy import is still a dependency). Layers, top to bottom::

    cli, __main__                  the `batchnorm` command
    tools, benchmark, lab          model tools, `batchnorm bench`, the lab (they may use each other, without loops)
    nn                             the layers
    functional, distributed        torch-facing functions and custom ops; cross-process reductions
    kernels                        the Numba kernels and their entry points
    testing, _atomic               NumPy oracles (nothing of ours but NumPy); atomic file writes (nothing of ours)

A module may import its own package and any lower layer; `batchnorm.reference` is `batchnorm.testing.reference`
under its former name. The package's own `__init__` (lazy re-exports of the tools) is the facade and is not ranked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "batchnorm"

RANK = {"kernels": 0, "functional": 1, "distributed": 1, "nn": 2, "tools": 3, "benchmark": 3, "lab": 3,
        "cli": 4, "__main__": 5}
LEAVES = {"testing": set(), "_atomic": set(), "reference": {"testing"}}  # what each may import; all may import them


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module of this package) for every import statement in the file, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "batchnorm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "batchnorm":
                continue
            submodules = [f"{target}.{alias.name}" for alias in node.names if _is_module(f"{target}.{alias.name}")]
            found += [(node.lineno, module) for module in submodules] or [(node.lineno, target)]
    return found


def _top(module: str) -> str:
    """The package (or top-level module) of batchnorm that a module belongs to: 'nn', 'kernels', 'cli', ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_graph() -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """({(importer package, imported package): ['file:line', ...]}, every module file read)."""
    edges: dict[tuple[str, str], list[str]] = {}
    files = sorted(PACKAGE.rglob("*.py"))
    for path in files:
        source = _top(_module_name(path))
        for line, target in _imports(path):
            edges.setdefault((source, _top(target)), []).append(f"{path.relative_to(PACKAGE)}:{line}")
    return edges, [str(p) for p in files]


def test_the_graph_sees_the_imports():
    """The walk finds the imports it must find, lazy ones included (it can fail: an empty graph would pass the
    other tests)."""
    edges, files = package_graph()
    assert len(files) > 50
    assert ("nn", "functional") in edges and ("functional", "kernels") in edges
    assert ("tools", "nn") in edges


def test_every_package_has_a_layer():
    """A new package or top-level module must be placed in RANK or LEAVES (else the rules below skip it)."""
    names = {_top(_module_name(path)) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert sorted(names - set(RANK) - set(LEAVES)) == []


def test_imports_only_point_down():
    edges, _ = package_graph()
    upward = []
    for (source, target), where in sorted(edges.items()):
        if source == target or "__init__" in (source, target):
            continue
        if source in LEAVES:
            if target not in LEAVES[source]:
                upward.append(f"{source} -> {target} ({', '.join(where)}): {source} may import only "
                              f"{sorted(LEAVES[source]) or 'nothing of ours'}")
        elif target not in LEAVES and RANK[source] < RANK[target]:
            upward.append(f"{source} -> {target} ({', '.join(where)})")
    assert upward == [], "imports that point up the layers:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle of `graph` (node -> the nodes it imports), each written from its smallest node."""
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                loop = path[path.index(nxt):]
                first = loop.index(min(loop))
                cycles.append(" -> ".join(loop[first:] + loop[:first] + [min(loop)]))
            else:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return sorted(set(cycles))


def test_no_import_cycle_between_packages():
    edges, _ = package_graph()
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        if source != target and "__init__" not in (source, target):
            graph.setdefault(source, set()).add(target)
    cycles = _cycles(graph)
    assert cycles == [], "import cycles between packages:\n" + "\n".join(cycles)


@pytest.mark.parametrize("package", ["nn", "kernels", "tools", "testing"])
def test_no_import_cycle_between_modules_of_a_package(package):
    """Within a package too, no two modules import each other, lazily or not (the lab is its own project)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        name = _module_name(path)
        graph[name] = {target for _, target in _imports(path)
                       if target.startswith(f"batchnorm.{package}.") and target != name}
    cycles = _cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []
