"""No import circle in ropext/: every ``import`` and ``from … import`` of every module, at any depth (an import
inside a function closes a circle too, only later), read statically with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import ropext

PACKAGE = Path(ropext.__file__).parent


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imported(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The modules of the package that the module ``name`` (at ``path``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg itself.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of an attribute: the module that holds it
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (as a path that returns to its start) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle_through(group, graph) for group in groups]


def _circle_through(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest circle from the group's first module back to itself, staying in the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for after in sorted(graph[node] & group):
                if after == start:
                    return [*paths[node], start]
                if after not in paths:
                    paths[after] = [*paths[node], after]
                    following.append(after)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # a strongly connected group always has one


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imported(path, name, known) for name, path in known.items()}


def test_ropext_has_no_import_circle() -> None:
    found = circles(import_graph())
    assert not found, "import circles in ropext/: " + "; ".join(" -> ".join(circle) for circle in found)


def test_a_circle_is_found_and_named(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg.sub import b\n")
    (root / "sub" / "b.py").write_text("def f():\n    from ..c import thing\n")  # inside a function, relative
    (root / "c.py").write_text("import pkg.a\n")
    (root / "d.py").write_text("from pkg import a\n")  # imports into the circle, not part of it
    assert circles(import_graph(root)) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
