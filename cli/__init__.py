"""The `diffsolve` command line: every subcommand parsed here into typed settings, then handed to the library."""
from diffsolve.cli.main import build_parser, main
from diffsolve.cli.solvers import solver_options

__all__ = ["build_parser", "main", "solver_options"]
