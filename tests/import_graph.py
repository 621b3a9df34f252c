"""The import graph of a package read from its source with ``ast`` (nothing is imported):
which files import which, and which outside distributions' modules they name.

Used by the architecture and packaging tests as an oracle independent of import-linter.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(package: str = "refusal_core") -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of ``package`` (packages as their ``__init__``)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(module: str, path: Path) -> list[str]:
    """Every dotted name an import statement of the file brings in (relative imports made
    absolute; ``from a import b`` gives ``a.b``), wherever in the file the statement stands."""
    names = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def file_graph(package: str = "refusal_core") -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, each name cut back to the module file it lives in."""
    files = module_files(package)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    # ``from pkg import sub`` also names pkg itself; a package's __init__ importing its own
    # submodules is how a package works, not a cycle between files.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
    return found


def external_roots(package: str = "refusal_core") -> dict[str, set[str]]:
    """``{top-level name outside the package: files importing it}``."""
    out: dict[str, set[str]] = {}
    for module, path in module_files(package).items():
        for name in imported_names(module, path):
            top = name.split(".")[0]
            if top and top != package:
                out.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return out
