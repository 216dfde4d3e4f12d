"""The shape of the source tree: no import circle, no import of our own modules inside a function, no argparse
outside the command line, no function over 80 lines and no module over 500."""
from __future__ import annotations

import ast

import pytest

from project.source_graph import cycles, graph, imports, package_files

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


@pytest.mark.slow
def test_no_import_circle():
    assert cycles(graph()) == []


@pytest.mark.slow
def test_the_cycle_finder_finds_a_planted_circle():
    edges = {k: set(v) for k, v in graph().items()}
    edges.setdefault("diffsolve.errors", set()).add("diffsolve.sampler")        # sampler -> ... -> errors exists
    assert any({"diffsolve.errors", "diffsolve.sampler"} <= set(c) for c in cycles(edges))


def test_our_modules_are_imported_at_module_level():
    # The one exception: a module-level __getattr__ that defers a module needing an optional dependency.
    inner = [f"{i.source}:{i.line} imports {i.target}" for i in imports()
             if i.function is not None and i.function != "__getattr__"]
    assert inner == []


@pytest.mark.slow
def test_argparse_only_in_the_command_line():
    sites = [m for m, p in package_files().items() if not m.startswith("diffsolve.cli")
             and any(isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in
                     ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])
                     for n in ast.walk(ast.parse(p.read_text())))]
    assert sites == []


@pytest.mark.slow
def test_functions_and_modules_stay_small():
    long_functions, long_modules = [], []
    for module, path in package_files().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{module} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name} ({n} lines)")
    assert long_functions == [] and long_modules == []
