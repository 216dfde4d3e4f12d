"""Validating argparse types shared by the command lines (`diffsolve bench|sample`, evaluate, scripts/).

Each type turns a bad value into one argparse error line ("argument --batch-size: ...", exit status 2) instead
of a silent default or a traceback. The library's own checks (seeds, devices, writable folders) live in
diffsolve.checks; `device` below wraps `checks.check_device` so both give the same message.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

from diffsolve.checks import BENCH_SEED_LIMIT, SEED_LIMIT, check_device
from diffsolve.errors import InvalidArgument

# Per-sample seeds go to torch.Generator.manual_seed (and to torchsde's Brownian trees as 64-bit entropy): every
# seed in [0, 2**63) is accepted by both. The bench derives sample i's seed as seed * 2**24 + i, so its base seed
# must stay below 2**39 for every derived seed to lie in that range.


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type).

    Args:
        text: The option's value.

    Returns:
        The integer.

    Raises:
        ArgumentTypeError: Not an integer, or below 1.
    """
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return v


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for integers >= `low` (it raises ArgumentTypeError otherwise).

    Args:
        low: The smallest value accepted.

    Returns:
        The type, named "int>=low" in argparse's messages.
    """
    def parse(text: str) -> int:
        try:
            v = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= {low}")
        return v
    parse.__name__ = f"int>={low}"
    return parse


def positive_int_list(text: str) -> list[int]:
    """Comma- or space-separated integers >= 1, e.g. 4,8,16 (argparse type).

    Args:
        text: The option's value.

    Returns:
        The integers, in the order given.

    Raises:
        ArgumentTypeError: A value is not an integer or is below 1, or none is given.
    """
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers, e.g. 4,8,16") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 4,8,16")
    return vals


def positive_float_list(text: str) -> list[float]:
    """Comma- or space-separated finite numbers > 0, e.g. 1e-2,1e-3 (argparse type).

    Args:
        text: The option's value.

    Returns:
        The numbers, in the order given.

    Raises:
        ArgumentTypeError: A value is not a finite number > 0, or none is given.
    """
    try:
        vals = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers") from None
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers")
    return vals


def name_list(text: str) -> list[str]:
    """Comma-separated names (at least one; argparse type).

    Args:
        text: The option's value.

    Returns:
        The names, stripped, empty ones dropped.

    Raises:
        ArgumentTypeError: No name is given.
    """
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one name")
    return names


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse type).

    Args:
        text: The option's value.

    Returns:
        The number.

    Raises:
        ArgumentTypeError: Not a number, or not finite and > 0.
    """
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return v


def seed_below(limit: int) -> Callable[[str], int]:
    """An argparse type for one seed in [0, limit) (it raises ArgumentTypeError otherwise).

    Args:
        limit: One above the largest seed accepted (a power of two).

    Returns:
        The type, named "seed" in argparse's messages.
    """
    def parse(text: str) -> int:
        try:
            v = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not 0 <= v < limit:
            raise argparse.ArgumentTypeError(f"{text!r}: a seed must be in [0, 2**{limit.bit_length() - 1})")
        return v
    parse.__name__ = "seed"
    return parse


seed = seed_below(SEED_LIMIT)
bench_seed = seed_below(BENCH_SEED_LIMIT)


def seed_list(text: str) -> list[int]:
    """Seeds as '0-15', '3,5,9' or '0-3,10-11' (ranges inclusive), each in [0, 2**63), no repeats.

    Args:
        text: The option's value.

    Returns:
        The seeds, in the order given.

    Raises:
        ArgumentTypeError: Malformed, out of range, repeated, empty, or over 65536 in one range.
    """
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give seeds as 0-15 or 1,2,3") from None
        if b < a:
            raise argparse.ArgumentTypeError(f"{text!r}: the range {part} is empty")
        if not (0 <= a and b < SEED_LIMIT):
            raise argparse.ArgumentTypeError(f"{text!r}: seeds must be in [0, 2**63)")
        if b - a >= 1 << 16:
            raise argparse.ArgumentTypeError(f"{text!r}: at most 65536 seeds")
        out.extend(range(a, b + 1))
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one seed, e.g. 0-15")
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is repeated")
    return out


def device(text: str) -> str:
    """argparse type: a device torch can use on this machine.

    Args:
        text: The option's value, e.g. cpu or cuda:0.

    Returns:
        The text unchanged.

    Raises:
        ArgumentTypeError: torch cannot use that device here.
    """
    try:
        check_device(text, option="")
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None
    return text


