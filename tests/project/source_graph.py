"""The package's own import graph, read from the sources with `ast` (every import statement, at module level or
inside a function), for the structure tests."""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_PACKAGE = {"tests", "scripts", "site", "build", "docs"}


def _is_package_file(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    if any(part in NOT_PACKAGE or part.startswith(".") for part in rel.parts[:-1]):
        return False
    return all((ROOT / Path(*rel.parts[:i]) / "__init__.py").exists() for i in range(1, len(rel.parts)))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["diffsolve", *parts])


@lru_cache(maxsize=None)
def package_files() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if _is_package_file(p)}


def package_modules() -> list[str]:
    return sorted(package_files())


@dataclass(frozen=True)
class Import:
    source: str          # importing module
    target: str          # the diffsolve module it names (the longest known prefix)
    line: int
    function: str | None  # the enclosing function, None at module level


def _targets(module: str, path: Path, node: ast.AST, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            head = ".".join(base + ([node.module] if node.module else []))
        else:
            head = node.module or ""
        names = [f"{head}.{a.name}" if f"{head}.{a.name}" in known else head for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


@lru_cache(maxsize=None)
def imports() -> tuple[Import, ...]:
    files = package_files()
    known = set(files)
    found = []
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        inner = {id(n): f.name for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found += [Import(module, t, node.lineno, inner.get(id(node)))
                          for t in _targets(module, path, node, known)]
    return tuple(found)


def graph() -> dict[str, set[str]]:
    """module -> the modules it imports; a package's own __init__ is not an edge from inside the package (Python
    runs it first anyway, and re-exporting submodules is what it is for)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in imports():
        if not imp.source.startswith(imp.target + "."):
            edges[imp.source].add(imp.target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(set(edges) | {t for ts in edges.values() for t in ts}):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
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
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found
