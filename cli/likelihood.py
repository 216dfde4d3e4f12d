"""`diffsolve likelihood`: log-likelihood through the probability-flow ODE."""
from __future__ import annotations


from diffsolve.analysis.likelihood import cli_main as _forward


def add_parser(sub) -> None:
    sub.add_parser("likelihood", add_help=False, help='log-likelihood and bits/dim through the probability-flow ODE (diffsolve likelihood --help)')


def forward(argv: list[str]) -> int:
    """This command still owns its options: the rest of the command line goes to it unchanged."""
    result = _forward(argv)
    return 0 if result is None else int(result)
