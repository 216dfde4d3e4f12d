"""`diffsolve tune amed|gits|grid|weights|skip`: fit a learned correction to one model and write it."""
from __future__ import annotations

import argparse

from diffsolve.corrections import tune as _tune


def add_parser(sub) -> None:
    _tune.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    return _tune.run(args)
