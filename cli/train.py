"""`diffsolve train`: train the built-in MNIST models."""
from __future__ import annotations


from diffsolve.training.mnist import main as _forward


def add_parser(sub) -> None:
    sub.add_parser("train", add_help=False, help='train the built-in MNIST UNet or classifier (diffsolve train --help for its options)')


def forward(argv: list[str]) -> int:
    """This command still owns its options: the rest of the command line goes to it unchanged."""
    result = _forward(argv)
    return 0 if result is None else int(result)
