"""The package's shape, read from its source with `ast` (nothing is imported): no import cycles, no module over 400
lines."""

from __future__ import annotations

import ast
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hf_rlhf"
MAX_LINES = 400


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package (a package's name maps to its __init__.py)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement in `module` may load: the module itself and, for `from X import a`,
    X.a (a submodule if there is one). Relative imports are resolved against the importing module's package."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, list[int]]]:
    """module -> {imported package module -> line numbers}, imports at module and function level alike."""
    graph: dict[str, dict[str, list[int]]] = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in imported_names(node, name, path.name == "__init__.py"):
                if target in modules and target != name:
                    graph[name].setdefault(target, []).append(node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every group of modules that import each other (directly or through others)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def describe(
    group: list[str], graph: dict[str, dict[str, list[int]]], modules: dict[str, Path], root: Path = PACKAGE
) -> str:
    """A cycle group and the imports that close it, each with file:line, so the message says what to move."""
    lines = ["import cycle: " + " <-> ".join(group)]
    for source in group:
        for target, linenos in sorted(graph[source].items()):
            if target in group:
                where = ", ".join(str(n) for n in sorted(set(linenos)))
                lines.append(f"    {modules[source].relative_to(root.parent)}:{where} imports {target}")
    return "\n".join(lines)


def test_the_import_graph_is_read_correctly(tmp_path):
    """The graph builder on a throwaway package: relative imports, function-level imports, packages as __init__."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from .sub import b\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (root / "c.py").write_text("import pkg.sub\nimport os\n")
    (root / "d.py").write_text("from . import a\n")
    modules = package_modules(root)
    assert set(modules) == {"pkg", "pkg.a", "pkg.sub", "pkg.sub.b", "pkg.c", "pkg.d"}
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.sub": [1], "pkg.sub.b": [1]}
    assert graph["pkg.sub.b"] == {"pkg.c": [2]}  # inside a function, two levels up
    assert graph["pkg.c"] == {"pkg.sub": [1]}  # the package, i.e. its __init__; os is not in the package
    assert graph["pkg.d"] == {"pkg": [1], "pkg.a": [1]}
    assert strongly_connected(graph) == []
    (root / "sub" / "__init__.py").write_text("from .b import f\n")  # now pkg.sub -> b -> c -> pkg.sub
    graph = import_graph(package_modules(root))
    assert strongly_connected(graph) == [["pkg.c", "pkg.sub", "pkg.sub.b"]]
    message = describe(["pkg.c", "pkg.sub", "pkg.sub.b"], graph, package_modules(root), root)
    assert "pkg/sub/b.py:2 imports pkg.c" in message and "pkg/sub/__init__.py:1 imports pkg.sub.b" in message


def test_no_import_cycles():
    modules = package_modules()
    graph = import_graph(modules)
    cycles = strongly_connected(graph)
    assert not cycles, "\n" + "\n".join(describe(group, graph, modules) for group in cycles)


def test_no_module_over_400_lines():
    sizes = {path: len(path.read_text().splitlines()) for path in package_modules().values()}
    large = [f"{os.path.relpath(p, PACKAGE.parent)}: {n} lines" for p, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not large, f"modules over {MAX_LINES} lines:\n" + "\n".join(large)
