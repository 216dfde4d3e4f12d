"""Error types that name the bad argument and what would have been allowed."""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Iterable


class DiffsolveError(Exception):
    """Base class of every error raised by diffsolve.

    Catch it to handle any diffsolve refusal; each subclass also derives from the matching builtin.
    """


class InvalidArgument(DiffsolveError, ValueError):
    """An argument is out of its allowed set or range.

    Also a ValueError. The message names the argument, the value given and what is allowed.
    """


class NonFiniteError(DiffsolveError, FloatingPointError):
    """The model returned NaN or Inf; `step` is the first solver step where it appeared.

    Also a FloatingPointError.

    Args:
        step: the first step (0-based) whose output was non-finite.
        t: that step's time, if known.
        what: what became non-finite (default "model output").
    """

    def __init__(self, step: int, t: float | None = None, what: str = "model output"):
        self.step = step
        self.t = t
        where = f" (t={t:.6g})" if t is not None else ""
        super().__init__(f"{what} became NaN/Inf at step {step}{where}; "
                         "check the model, its dtype and the noise schedule near this time")


class BudgetExceeded(DiffsolveError, RuntimeError):
    """An adaptive run hit its NFE or step budget before reaching the end time.

    Also a RuntimeError. Raised with `on_budget="raise"` (the default); `on_budget="return"` returns the state
    reached instead. The message says how far the run got and which budget to raise.
    """


def unknown_name(argument: str, value: object, allowed: Iterable[str]) -> InvalidArgument:
    """The error for a name that is not one of `allowed`: the close matches first ("did you mean"), then all.

    Args:
        argument: the argument's name.
        value: what was given.
        allowed: the valid names.

    Returns:
        The InvalidArgument to raise.
    """
    allowed = sorted(allowed, key=str)
    names = [str(a) for a in allowed]
    close = difflib.get_close_matches(value, names, n=3, cutoff=0.6) if isinstance(value, str) else []
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return InvalidArgument(f"{argument}={value!r} is not known; {hint}allowed values: {', '.join(map(repr, allowed))}")


def check_choice(argument: str, value: object, allowed: Iterable[str]) -> None:
    """Refuse a value that is not one of `allowed` (compared by type too: True is not 1).

    Args:
        argument: the argument's name.
        value: what was given.
        allowed: the valid values.

    Raises:
        InvalidArgument: from `unknown_name` (close matches first).
    """
    allowed = tuple(allowed)
    try:
        # by type too: True is not 1, and 1.0 is not the name '1.0'
        known = any(value == a and isinstance(value, type(a)) and isinstance(value, bool) == isinstance(a, bool)
                    for a in allowed)
    except (TypeError, ValueError, RuntimeError):   # uncomparable (a tensor, an array): certainly not a name
        known = False
    if not known:
        raise unknown_name(argument, value, allowed)


# ------------------------------------------------------------------------------------------------
# Values checked by type as well as by range: a string is not a bool, numpy integers are integers
# ------------------------------------------------------------------------------------------------
def check_bool(argument: str, value: object) -> bool:
    """A bool (numpy.bool_ included); a string or a number is refused.

    Args:
        argument: the argument's name.
        value: what was given.

    Returns:
        The value as a Python bool.

    Raises:
        InvalidArgument: not True or False.
    """
    if not isinstance(value, bool) and type(value).__name__ != "bool_":     # numpy.bool_ is a bool
        raise InvalidArgument(f"{argument}={value!r}: must be True or False")
    return bool(value)


def check_int(argument: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python or numpy, never a bool, a float or a string) within [minimum, maximum].

    Args:
        argument: the argument's name.
        value: what was given.
        minimum: the inclusive lower bound; None: unbounded.
        maximum: the inclusive upper bound; None: unbounded.

    Returns:
        The value as a Python int.

    Raises:
        InvalidArgument: not an integer, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"{argument}={value!r}: must be an integer"
                              + (f" >= {minimum}" if minimum is not None else ""))
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "" if minimum is None else f">= {minimum}"
        hi = "" if maximum is None else f"<= {maximum}"
        raise InvalidArgument(f"{argument}={value!r}: must be an integer {' and '.join(v for v in (lo, hi) if v)}")
    return value


def check_float(argument: str, value: object, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real number (int, float or numpy scalar; never a bool or a string).

    Args:
        argument: the argument's name.
        value: what was given.
        positive: require > 0.
        nonnegative: require >= 0.

    Returns:
        The value as a Python float.

    Raises:
        InvalidArgument: not a finite real number, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(f"{argument}={value!r}: must be a number")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or (nonnegative and value < 0):
        need = "a finite number" + (" > 0" if positive else " >= 0" if nonnegative else "")
        raise InvalidArgument(f"{argument}={value!r}: must be {need}")
    return value
