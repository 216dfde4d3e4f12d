"""Checks of run settings shared by every surface (Python API and command line): seeds, devices, output folders,
the cap on steps.

Each raises InvalidArgument naming the option and what is allowed, before any work starts."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffsolve.errors import InvalidArgument

SEED_LIMIT = 2 ** 63
SAMPLE_SEED_SHIFT = 24
BENCH_SEED_LIMIT = SEED_LIMIT >> SAMPLE_SEED_SHIFT


def check_seed(value: Any, limit: int = SEED_LIMIT, option: str = "seed") -> int:
    """A seed as the command line's `seed_below` takes it: an int in [0, limit) or InvalidArgument.

    Args:
        value: the seed.
        limit: the exclusive upper bound (default 2**63).
        option: the option's name.

    Returns:
        The seed.

    Raises:
        InvalidArgument: not an integer in [0, limit).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise InvalidArgument(f"{option}={value!r}: a seed must be an integer in [0, 2**{limit.bit_length() - 1})")
    return value


# The most steps one run may plan. Plans are built on the host, step by step (about 0.1 ms a step for Heun), so
# a typo like nfe=3_000_000 would build for minutes before the first model call; it is refused up front instead.
# Fixed-step references converge long before this (adaptive solvers take tolerances, not steps).
MAX_STEPS = 100_000


def check_steps(steps: int, nfe: int | None = None) -> int:
    """Refuse a step count above MAX_STEPS (with nfe=, the steps that budget would take).

    Args:
        steps: the step count.
        nfe: the budget it came from, for the message.

    Returns:
        The step count.

    Raises:
        InvalidArgument: steps above MAX_STEPS.
    """
    if steps > MAX_STEPS:
        why = f"nfe={nfe} needs {steps} steps," if nfe is not None else f"steps={steps} is"
        raise InvalidArgument(f"{why} above the cap of {MAX_STEPS} steps a run may plan "
                              "(diffsolve.checks.MAX_STEPS); use fewer steps, or an adaptive solver with rtol/atol")
    return steps


def available_devices() -> list[str]:
    """The devices torch can use here: "cpu", then "cuda" and "cuda:<i>" per GPU, then "mps".

    Returns:
        The device names.
    """
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(device: Any, option: str = "device") -> Any:
    """The device if torch can use it here, else InvalidArgument naming the option and the devices available.

    Args:
        device: a device or its name; None passes through.
        option: the option's name for the message.

    Returns:
        The device as given (or None).

    Raises:
        InvalidArgument: not a device, or not available on this machine.
    """
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


def check_writable(folder: str | os.PathLike, option: str) -> Path:
    """Create `folder` if needed and prove it writable (create, write and delete a probe file); else
    InvalidArgument naming the option. Runs before any work, so a bad folder fails in well under a second.

    Args:
        folder: the folder.
        option: the option's name for the message.

    Returns:
        The folder as a Path (user's home expanded).

    Raises:
        InvalidArgument: the folder cannot be created or written.
    """
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
