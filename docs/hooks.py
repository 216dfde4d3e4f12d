"""mkdocs hooks: the solver table and the command-line reference are generated from the code at build time.

A page asks for them with a marker line: `<!-- generated: solver-table -->` or `<!-- generated: cli-reference -->`.
Both read the same sources as `diffsolve solvers --verbose` and `diffsolve --help`, so a renamed solver, option or
flag changes the site on the next build instead of leaving a stale hand-kept table. The solver table also measures
each deterministic solver's order on the analytic Gaussian (`diffsolve.analysis.convergence.measure_order`, the
measurement tests/solvers/test_convergence.py checks; about 6 s on one quiet core) and shows the peers each solver
is checked against, from `diffsolve.solvers.peers.PEER_MATCHES`, the table the peer tests read.
"""
from __future__ import annotations

import argparse
import html

from diffsolve.analysis.convergence import LEARNED_MODULE, ORDER_TOLERANCE, measure_order, why_order_is_not_measured
from diffsolve.cli import build_parser, solver_options
from diffsolve.solvers import get_solver, registry_entries
from diffsolve.solvers.peers import peers_of


def family(name: str, entry) -> str:
    """The kind of solver a name is, read from what the solver itself declares."""
    d = get_solver(name).describe()
    if getattr(entry.factory, "__module__", "").startswith(LEARNED_MODULE):
        return "learned ODE"
    if d.get("model_family"):
        return f"few-step ({d['model_family']})"
    if d["adaptive"]:
        return "adaptive ODE" if d["deterministic"] else "adaptive SDE"
    return "ODE" if d["deterministic"] else "SDE"


def _cell(text: str) -> str:
    return html.escape(str(text)).replace("|", "&#124;")


def order_cell(name: str) -> str:
    """Declared order, then the order measured now on the analytic Gaussian, or why it is not measured."""
    d = get_solver(name).describe()
    declared = d["order"] if d["deterministic"] else f"weak {d['order']}"
    reason = why_order_is_not_measured(name)
    if reason is not None:
        return f"{declared} (measured —: {_cell(reason)})"
    m = measure_order(name)
    return f"{m.declared} (measured {m.measured:.2f})"


def peer_cell(name: str) -> str:
    """Each peer implementation the suite checks this solver against, with the tolerance of that check."""
    cells = []
    for m in peers_of(name):
        opts = ", ".join(f"`{k}={v!r}`" for k, v in {**m.options, **m.peer_options}.items())
        rtol = f"{m.rtol:.0e}".replace("e-0", "e-")
        text = f"{m.library} `{m.peer}`" + (f" ({opts})" if opts else "") + f": {rtol}"
        cells.append(text + (", same noise" if m.same_noise else ""))
    return "<br>".join(dict.fromkeys(cells)) or "—"


def solver_table() -> str:
    """The solver table, one row per registered solver (measuring the orders takes a few seconds)."""
    order = f"order (measured; the suite allows ±{ORDER_TOLERANCE})"
    rows = [f"| name | family | {order} | calls per step | summary | options: type = default | peer: tolerance |",
            "|---|---|---|---|---|---|---|"]
    for name, entry in sorted(registry_entries().items()):
        d = get_solver(name).describe()
        opts = "<br>".join(f"`{o}`: {_cell(t)} = `{v.replace('|', '/')}`" + (" (set by this name)" if by_name else "")
                           for o, t, v, by_name in solver_options(entry)) or "none"
        rows.append(f"| `{name}` | {family(name, entry)} | {order_cell(name)} | {d['calls_per_step']} "
                    f"| {_cell(entry.summary)} | {opts} | {peer_cell(name)} |")
    return "\n".join(rows)


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _usage(title: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    out = [f"{'#' * level} `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, child in _subparsers(parser).items():
        out += _usage(f"{title} {name}", child, level + 1)
    return out


def cli_reference() -> str:
    parser = build_parser()
    lines = _usage("diffsolve", parser, 2)
    return "\n".join(lines)


GENERATORS = {"solver-table": solver_table, "cli-reference": cli_reference}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for key, make in GENERATORS.items():
        marker = f"<!-- generated: {key} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
