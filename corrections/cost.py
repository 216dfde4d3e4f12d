"""What tuning costs in model evaluations, counted once for every tuner: `tune()` hands the tuner its model
wrapped in a `CountingField`, which adds the batch size of every network call (times the field's evaluations per
call) to the phase running: "teacher" while `teacher_phase()` is entered (corrections.teacher wraps its solves in
it), "check" for the teacher's own check, "validation" for held-out judging (`tune auto`), "training" otherwise. The wrapper changes no value, so corrections trained through it fit the bare model.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import time
from typing import Any, Iterator

import torch

from diffsolve.field import EvalPoint, Field, FieldOutput, FieldWrapper

_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("diffsolve_tuning_phase", default="training")
PHASES = ("teacher", "training", "check", "validation")
_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("diffsolve_training_deadline", default=math.inf)


@contextlib.contextmanager
def training_deadline(seconds: float) -> Iterator[None]:
    """Inside, training loops stop after the epoch during which `seconds` ran out (`tune auto`'s budget).

    Args:
        seconds: The time from now.

    Returns:
        A context manager.
    """
    token = _DEADLINE.set(time.perf_counter() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def past_deadline() -> bool:
    """Whether the time `training_deadline` gave has run out (never outside one).

    Returns:
        True once it has.
    """
    return time.perf_counter() > _DEADLINE.get()


@contextlib.contextmanager
def counting_phase(name: str) -> Iterator[None]:
    """Count the model evaluations made inside as `name` (one of PHASES).

    Args:
        name: The phase.

    Returns:
        A context manager.
    """
    token = _PHASE.set(name)
    try:
        yield
    finally:
        _PHASE.reset(token)


@contextlib.contextmanager
def teacher_phase() -> Iterator[None]:
    """Count what runs inside as the teacher's (inside the "check" phase it stays "check"); also a decorator.

    Returns:
        A context manager.
    """
    token = _PHASE.set("teacher" if _PHASE.get() == "training" else _PHASE.get())
    try:
        yield
    finally:
        _PHASE.reset(token)


class CountingField(FieldWrapper):
    """A field that counts the per-sample network evaluations made through it, by phase.

    Attributes:
        counts: Phase -> evaluations (the sum of batch sizes over network calls, times evals_per_call).

    Args:
        inner: The field counted.
    """

    stacks_on_corrections = True        # counting changes nothing: a correction trained through it fits the model

    def __init__(self, inner: Field):
        super().__init__(inner)
        self.counts = {p: 0 for p in PHASES}

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner field's evaluation, counted.

        Args:
            x: The states, [B, ...].
            p: The point.
            kind: What is asked ("x0", ...).
            **kwargs: Model keywords.

        Returns:
            The inner field's output.
        """
        self.counts[_PHASE.get()] += int(x.shape[0]) * self.inner.evals_per_call if x.dim() else 1
        return self.inner.evaluate(x, p, kind, **kwargs)

    def identity(self) -> str | None:
        """The inner field's identity: counting changes no value (reference solves are cached as the model's)."""
        return self.inner.identity()

    @property
    def diffsolve_spec(self) -> Any:
        """The inner field's model spec (its sample shape, data range), as a network's spec is read."""
        return getattr(self.inner, "spec", None)

    @property
    def total(self) -> int:
        """All evaluations counted."""
        return sum(self.counts.values())
