"""The `diffsolve` command line: `bench` (steps versus quality), `sample` (samples from seeds to a folder),
`solvers` (`--verbose`: every option with its type and default), `--version`, `tune` (learned corrections), and
`train` / `evaluate` for the built-in models (`diffsolve train` also retrains the moons flows), `likelihood`, and
`reflow` (reflow couplings, sharded under torchrun).

Every bad value is one argparse-style error line and exit status 2, never a traceback and never a silent default:
the argument types validate (cli.argtypes), and errors diffsolve raises (DiffsolveError) are printed the
same way.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from diffsolve import __version__
from diffsolve.bench.settings import OutputError
from diffsolve.cli import bench, evaluate, likelihood, reflow, sample, solvers, train, tune
from diffsolve.errors import DiffsolveError

# Subcommands in the order `diffsolve --help` lists them: each module has add_parser(sub) and run(args) -> int.
COMMANDS = {"bench": bench, "sample": sample, "solvers": solvers, "tune": tune, "train": train,
            "evaluate": evaluate, "likelihood": likelihood, "reflow": reflow}


def build_parser() -> argparse.ArgumentParser:
    """The `diffsolve` parser: one subcommand per module of `COMMANDS`, every option's default stated in its help.

    Returns:
        The parser.
    """
    p = argparse.ArgumentParser(prog="diffsolve", description="Fast, accurate samplers for diffusion and flow models.")
    p.add_argument("--version", action="version", version=f"diffsolve {__version__}")
    sub = p.add_subparsers(dest="command")
    for module in COMMANDS.values():
        module.add_parser(sub)
    for command in sub.choices.values():
        _state_defaults(command)
    return p


def _state_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help ends with its default, unless its text already says it (one place, for every command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _state_defaults(sub)
        elif (action.option_strings and action.help not in (None, argparse.SUPPRESS)
              and action.default not in (None, False, argparse.SUPPRESS) and "default" not in action.help):
            shown = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
            action.help = f"{action.help} (default: {str(shown).replace('%', '%%')})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `diffsolve` subcommand; the library's errors become one line on stderr.

    Args:
        argv: The command-line arguments; None reads sys.argv.

    Returns:
        The exit status: the subcommand's, 1 when only its output files could not be written, 2 on a
            DiffsolveError or without a subcommand.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except OutputError as e:
        # The run itself finished (and printed); only its files could not be written.
        print(f"diffsolve: error: {e}", file=sys.stderr)
        return 1
    except DiffsolveError as e:
        print(f"diffsolve {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
