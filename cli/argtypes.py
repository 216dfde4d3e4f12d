"""Validating argparse types and checks shared by the command lines (`diffsolve bench|sample`, models.evaluate).

Each type turns a bad value into one argparse error line ("argument --batch-size: ...", exit status 2) instead
of a silent default or a traceback; `check_device` and `check_writable` raise InvalidArgument naming the option,
so that the Python API (run_bench) gives the same messages.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from diffsolve.errors import InvalidArgument

# Per-sample seeds go to torch.Generator.manual_seed (and to torchsde's Brownian trees as 64-bit entropy): every
# seed in [0, 2**63) is accepted by both. The bench derives sample i's seed as seed * 2**24 + i, so its base seed
# must stay below 2**39 for every derived seed to lie in that range.
SEED_LIMIT = 2 ** 63
SAMPLE_SEED_SHIFT = 24
BENCH_SEED_LIMIT = SEED_LIMIT >> SAMPLE_SEED_SHIFT


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return v


def int_at_least(low: int) -> Callable[[str], int]:
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


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return v


def seed_below(limit: int) -> Callable[[str], int]:
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


def check_seed(value: Any, limit: int = SEED_LIMIT, option: str = "seed") -> int:
    """The Python API's version of `seed_below`: an int in [0, limit) or InvalidArgument."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise InvalidArgument(f"{option}={value!r}: a seed must be an integer in [0, 2**{limit.bit_length() - 1})")
    return value


def seed_list(text: str) -> list[int]:
    """Seeds as '0-15', '3,5,9' or '0-3,10-11' (ranges inclusive), each in [0, 2**63), no repeats."""
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


def available_devices() -> list[str]:
    import torch
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(device: Any, option: str = "device") -> Any:
    """The device if torch can use it here, else InvalidArgument naming the option and the devices available."""
    import torch
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidArgument(f"{option} {device!r} is not a device; available here: "
                              f"{', '.join(available_devices())}") from None
    ok = True
    if d.type == "cuda":
        ok = torch.cuda.is_available() and (d.index is None or d.index < torch.cuda.device_count())
    elif d.type == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    elif d.type != "cpu":
        ok = False
    if not ok:
        raise InvalidArgument(f"{option} {device!r} is not available on this machine; available here: "
                              f"{', '.join(available_devices())}")
    return device


def device(text: str) -> str:
    """argparse type: a device torch can use on this machine."""
    try:
        check_device(text, option="")
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None
    return text


def check_writable(folder: str | os.PathLike, option: str) -> Path:
    """Create `folder` if needed and prove it writable (create, write and delete a probe file); else
    InvalidArgument naming the option. Runs before any work, so a bad folder fails in well under a second."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".diffsolve-probe.", dir=path)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise InvalidArgument(f"{option} {str(folder)!r} is not a writable folder ({why})") from None
    return path
