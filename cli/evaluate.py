"""`diffsolve evaluate`: FD and classifier confidence of the built-in models."""
from __future__ import annotations


from diffsolve.models.evaluate import main as _forward


def add_parser(sub) -> None:
    sub.add_parser("evaluate", add_help=False, help='FD and classifier confidence of the built-in model vs the shared DDPM')


def forward(argv: list[str]) -> int:
    """This command still owns its options: the rest of the command line goes to it unchanged."""
    result = _forward(argv)
    return 0 if result is None else int(result)
