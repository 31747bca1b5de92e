"""Who may import whom (docs/design.md's layout table), checked on the source: no import cycles,
client and server apart, and the library free of Flower.

Every import counts, at module level or inside a function: a function-level import that closes a
cycle only postpones it to the first call. ``from pkg import name`` imports ``pkg.name`` when that
is a module, else ``pkg``; a submodule's import of its parent package is Python's, not the code's.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = {"omnirad": "omnirad", "client": "omnirad_fl.client", "server": "omnirad_fl.server",
            "strategies": "omnirad_fl.strategies", "simulations": "omnirad_fl.simulations"}
CLIENT, SERVER = PACKAGES["client"], PACKAGES["server"]


def modules() -> dict[str, Path]:
    """Every project module by its installed name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((PROJECT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(PROJECT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imported(tree: ast.AST, package: str) -> Iterator[str]:
    """The names a module imports, absolute; ``package`` resolves relative imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..y import z
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]).strip(".")
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Project-internal edges between modules, and every absolute name each module imports."""
    found = modules()
    edges: dict[str, set[str]] = {name: set() for name in found}
    names: dict[str, set[str]] = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        names[name] = set(imported(ast.parse(path.read_text(), str(path)), package))
        for full in names[name]:
            target = full if full in found else full.rpartition(".")[0]  # pkg.name: a module, else pkg
            if target in found and target != name:
                edges[name].add(target)
    return edges, names


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_no_import_cycles():
    edges, _ = import_graph()
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(
        " <-> ".join(component) + "\n    " + "; ".join(f"{a} -> {b}" for a in component
                                                   for b in sorted(edges[a]) if b in component)
        for component in found)


def test_client_and_server_do_not_import_each_other():
    edges, _ = import_graph()
    crossing = [f"{a} -> {b}" for a, targets in edges.items() for b in sorted(targets)
                if within(a, CLIENT) and within(b, SERVER) or within(a, SERVER) and within(b, CLIENT)]
    assert not crossing, "client and server share through omnirad or strategies, not each other:\n" + "\n".join(crossing)


def test_the_library_imports_neither_flower_nor_the_apps():
    _, names = import_graph()
    offending = [f"{module} -> {name}" for module, imports in names.items() if within(module, "omnirad")
                 for name in sorted(imports) if within(name, "flwr") or within(name, "omnirad_fl")]
    assert not offending, "omnirad/ is plain PyTorch:\n" + "\n".join(offending)


def test_the_configuration_schema_imports_no_registry():
    """config/ knows the schema and its errors; registries import it, so it imports none of them
    (``omnirad.configure`` runs their checks)."""
    edges, _ = import_graph()
    upward = [f"{a} -> {b}" for a, targets in edges.items() if within(a, "omnirad.config")
              for b in sorted(targets) if not within(b, "omnirad.config") and b != "omnirad.errors"]
    assert not upward, "omnirad.config imports only itself and omnirad.errors:\n" + "\n".join(upward)


def test_the_graph_sees_function_level_imports_and_cycles():
    """The checker itself: a function-level import closes a cycle."""
    tree = ast.parse("import a.b\ndef f():\n    from a import c\n    from .d import e\n")
    assert set(imported(tree, "a")) == {"a.b", "a.c", "a.d.e"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
