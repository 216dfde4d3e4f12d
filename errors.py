"""Error types that name the bad argument and what would have been allowed."""
from __future__ import annotations

from typing import Iterable


class DiffsolveError(Exception):
    """Base class of every error raised by diffsolve."""


class InvalidArgument(DiffsolveError, ValueError):
    """An argument is out of its allowed set or range."""


class NonFiniteError(DiffsolveError, FloatingPointError):
    """The model returned NaN or Inf; `step` is the first solver step where it appeared."""

    def __init__(self, step: int, t: float | None = None, what: str = "model output"):
        self.step = step
        self.t = t
        where = f" (t={t:.6g})" if t is not None else ""
        super().__init__(f"{what} became NaN/Inf at step {step}{where}; "
                         "check the model, its dtype and the noise schedule near this time")


class BudgetExceeded(DiffsolveError, RuntimeError):
    """An adaptive run hit its NFE or step budget before reaching the end time."""


def unknown_name(argument: str, value: object, allowed: Iterable[str]) -> InvalidArgument:
    allowed = sorted(allowed)
    return InvalidArgument(f"{argument}={value!r} is not known; allowed values: {', '.join(map(repr, allowed))}")


def check_choice(argument: str, value: object, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise unknown_name(argument, value, allowed)
