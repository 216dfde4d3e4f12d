"""`diffsolve solvers`: the registered solvers, with `--verbose` each option's type and default."""
from __future__ import annotations

import argparse
import inspect
import typing

from diffsolve.solvers import get_solver, registry_entries


def add_parser(sub) -> None:
    """Add the `solvers` subcommand and its options to the command line.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    sv = sub.add_parser("solvers", help="list the registered solvers")
    sv.add_argument("--verbose", "-v", action="store_true",
                    help="also each solver's options, with their types and defaults (from the code)")


def solver_options(entry) -> list[tuple[str, str, str, bool]]:
    """(name, type, default, set_by_name) of each option: what the registry reads from the factory's signature
    (`RegistryEntry.parameters`, the same source that checks option types), then the settings the name fixes.

    Args:
        entry (RegistryEntry): The solver's registry entry.

    Returns:
        One tuple per option: its name, type, default ("required" when it has none) and whether the name sets it.
    """
    out = []
    for name, (hint, default) in entry.parameters().items():
        typ = "any" if hint is typing.Any else str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
        shown = "required" if default is inspect.Parameter.empty else repr(default)
        out.append((name, typ, shown, name in entry.defaults))
    for name, value in entry.fixed.items():
        if name != "alias":            # the registered name itself, not a setting
            out.append((name, type(value).__name__, repr(value), True))
    return out


def run(args: argparse.Namespace) -> int:
    """List the registered solvers (with --verbose, also their kind, order and options).

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.
    """
    verbose = args.verbose
    for name, e in sorted(registry_entries().items()):
        print(f"{name:24s} {e.summary}")
        if not verbose:
            continue
        d = get_solver(name).describe()
        kind = "stochastic" if not d["deterministic"] else "deterministic"
        if d.get("model_family"):
            kind += f", for {d['model_family']} models"
        print(f"    {kind}, " + ("adaptive step size" if d["adaptive"] else
                                 f"order {d['order']}, {d['calls_per_step']} model call(s) per step"))
        opts = solver_options(e)
        if not opts:
            print("    (no options)")
        for opt, typ, default, by_name in opts:
            print(f"    {opt}: {typ} = {default}" + ("   (this name's default)" if by_name and opt in e.defaults
                                                      else "   (fixed by this name)" if by_name else ""))
    return 0


