"""Span runs: plans without a fixed grid (adaptive step size, or a whole span handed to another library), the
base class of the solvers that run them, and how such a run ends (the final data prediction, the budget's verdict,
the statistics). The loop's adaptive driver and the torchdiffeq / torchsde bridges share these pieces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.errors import BudgetExceeded, InvalidArgument, check_choice, check_float
from diffsolve.field import Field
from diffsolve.solvers.base import Plan, Solver
from diffsolve.solvers.run import Evaluator, SampleResult

ON_BUDGET = ("raise", "return")


@dataclass(frozen=True)
class Span:
    """Where an adaptive run starts and stops; `final_denoise`: finish at t = 0 with one data prediction."""

    t_start: float
    t_stop: float
    final_denoise: bool
    budget: int | None              # model evaluations (per sample, guidance included) allowed
    steps: int | None = None        # fixed-grid methods only: the grid's step count


@dataclass(frozen=True)
class SpanPlan(Plan):
    """A plan without a fixed grid: the span, the grid it came from, and the solver's own typed settings."""

    span: Span | None = None
    grid: torch.Tensor | None = None
    settings: Any = None


def check_positive(name: str, value: float) -> float:
    """A finite number > 0 (an int, a float or a numpy number, never a bool or a string), as a float."""
    return check_float(name, value, positive=True)


# The smallest rtol / atol an adaptive run takes. float64 resolves relative changes of about 2.2e-16, so no
# dtype meets a tolerance below this floor; and the error norms divide by the tolerance in the state's dtype:
# in float32, (error / 1e-20)^2 overflows and 1e-300 rounds to 0, and the NaN or Inf norm that follows used to
# read as a non-finite model output. A run near the floor ends with the budget or step-size error naming rtol/atol.
MIN_TOLERANCE = 1e-15


def check_tolerance(name: str, value: float) -> float:
    """rtol or atol: a finite number >= MIN_TOLERANCE."""
    value = check_positive(name, value)
    if value < MIN_TOLERANCE:
        raise InvalidArgument(f"{name}={value!r}: must be >= {MIN_TOLERANCE:g} (diffsolve.solvers.span."
                              "MIN_TOLERANCE); no dtype resolves a smaller tolerance (float64: about 2.2e-16 relative)")
    return value


class RunStats:
    """Accepted / rejected step counts and the accepted trajectory of one whole-span run (the bridges)."""

    def __init__(self, t0: float, x0: torch.Tensor, keep: bool):
        self.accepted = 0
        self.rejected = 0
        self.times = [t0]
        self.states = [x0] if keep else None


class AdaptiveSolver(Solver):
    """Base of solvers that run a span rather than a grid (adaptive step size, or an external library).

    Args:
        max_steps: the most step attempts (accepted and rejected) a run may take (default 1000).
        on_budget: "raise" (BudgetExceeded when the budget runs out) or "return" (the state reached, marked
            incomplete in `stats`).
        max_nfe: a model-evaluation budget for every run; None: only a run's `nfe=` bounds it.

    Raises:
        InvalidArgument: max_steps or max_nfe not an integer >= 1, or an unknown on_budget.
    """

    adaptive = True
    calls_per_step = 1

    def inversion_refusal(self) -> str | None:
        """Why a span solver does not invert (step-size control is set up for sampling)."""
        if not self.deterministic:
            return super().inversion_refusal()
        return ("it integrates a whole span under step-size control set up for sampling (noise to data); "
                "invert on a fixed grid (euler, heun, rk4, dpmpp_2m, ...), or use diffsolve.likelihood(..., "
                "solver='dopri5') for an adaptive solve from data to noise")

    def __init__(self, max_steps: int = 1000, on_budget: str = "raise", max_nfe: int | None = None):
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise InvalidArgument(f"max_steps={max_steps!r}: must be an integer >= 1")
        if max_nfe is not None and (not isinstance(max_nfe, int) or isinstance(max_nfe, bool) or max_nfe < 1):
            raise InvalidArgument(f"max_nfe={max_nfe!r}: must be an integer >= 1 or None")
        check_choice("on_budget", on_budget, ON_BUDGET)
        self.max_steps = max_steps
        self.on_budget = on_budget
        self.max_nfe = max_nfe

    # --- planning on the host -------------------------------------------------------------------
    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The span plan: `plan_adaptive` with no nfe= (the solver's max_nfe is the budget)."""
        return self.plan_adaptive(field, t)

    def stop_time(self, field: Field, t: torch.Tensor) -> tuple[float, bool]:
        """Integrate to the grid's end, or to the schedule's t_min and denoise once when the grid ends at zero."""
        t_end = float(t[-1])
        if t_end == 0.0 and self.singular_at_zero(field):
            lo = field.schedule.t_min if field.schedule.t_min > 0 else float(t[-2])
            return lo, True
        return t_end, False

    def singular_at_zero(self, field: Field) -> bool:
        """Whether the slope is 0/0 at t = 0 (every Gaussian-path field)."""
        return field.has_schedule

    def plan_adaptive(self, field: Field, t: torch.Tensor, *, steps: int | None = None,
                      nfe: int | None = None, settings: Any = None) -> SpanPlan:
        """A plan without a fixed grid: the grid's span, budget and the solver's settings.

        Args:
            field: the field to sample.
            t: the grid the span comes from.
            steps: the grid's step count (fixed-grid methods).
            nfe: the model-evaluation budget (the smaller of it and max_nfe).
            settings: the solver's own typed settings.

        Returns:
            A SpanPlan.
        """
        self.check_field(field)
        self.check_direction(t)
        budget = nfe if nfe is not None else self.max_nfe
        if budget is not None and nfe is not None and self.max_nfe is not None:
            budget = min(nfe, self.max_nfe)
        t_stop, final = self.stop_time(field, t)
        span = Span(float(t[0]), t_stop, final, budget, steps)
        ends = [span.t_start, span.t_stop] + ([0.0] if final else [])
        tt = torch.tensor(ends, dtype=torch.float64)
        return SpanPlan(t=tt, points=self.grid_points(field, tt), coeffs=(), nfe=-1, span=span, grid=t,
                        settings=settings)

    # --- what the bridges share -------------------------------------------------------------------
    def budget_error(self, why: str, stats: RunStats, t_reached: float, ev: Evaluator) -> BudgetExceeded:
        """The BudgetExceeded error of a run stopped by its budget."""
        return budget_error(self, why, t_reached, stats.accepted, stats.rejected, ev.nfe)

    def finish(self, ev: Evaluator, x: torch.Tensor, plan: SpanPlan, stats: RunStats, *, completed: bool,
               t_reached: float, why: str | None = None, extra: dict | None = None) -> SampleResult:
        """End a span run: final data prediction, the budget's verdict, stats (see `finish_span`)."""
        return finish_span(self, ev, x, plan, stats.times, stats.states, stats.accepted, stats.rejected,
                           completed=completed, t_reached=t_reached, why=why, extra=extra)


def budget_exhausted(solver: Solver, ev: Evaluator, attempts: int, span: Span, need: int) -> str | None:
    """Why the next attempt (needing `need` more model calls per sample) may not run, or None."""
    if attempts >= solver.max_steps:
        return f"the step limit max_steps={solver.max_steps} was reached"
    if span.budget is not None and ev.nfe + need * ev.field.evals_per_call > span.budget:
        return (f"the NFE budget of {span.budget} would be exceeded (used {ev.nfe}, the next step needs "
                f"{need * ev.field.evals_per_call} more)")
    return None


def budget_error(solver: Solver, why: str, t_reached: float, accepted: int, rejected: int,
                 nfe: int) -> BudgetExceeded:
    """The error of a span run stopped by its budget (on_budget='raise')."""
    return BudgetExceeded(
        f"{solver.name}: {why} at t={t_reached:.6g}, after {accepted} accepted and {rejected} rejected steps "
        f"and {nfe} model evaluations. Raise nfe= / max_steps=, loosen rtol/atol, or pass "
        "on_budget='return' to get the state reached so far")


def finish_span(solver: Solver, ev: Evaluator, x: torch.Tensor, plan: SpanPlan, times: list, states: list | None,
                accepted: int, rejected: int, *, completed: bool, t_reached: float, why: str | None = None,
                extra: dict | None = None) -> SampleResult:
    """End of a span run (adaptive or bridge): the final data prediction at t = 0, the budget's verdict, stats."""
    span = plan.span
    denoised = None
    if completed and span.final_denoise:
        # Final step to zero noise: the data prediction (Euler to s = 0 in the EDM frame).
        ev.step = max(accepted, 0)
        x = ev.denoise(x, ev.field.at(span.t_stop)) * ev.field.at(0.0).alpha
        accepted += 1
        times.append(0.0)
        if states is not None:
            states.append(x)
        t_reached = 0.0
    elif not completed:
        denoised = ev.last_denoised
    if not completed and solver.on_budget == "raise":
        raise budget_error(solver, why, t_reached, accepted, rejected, ev.nfe)
    tt = torch.tensor(times, dtype=torch.float64)
    ev.raise_if_bad(tt)
    info = {"accepted": accepted, "rejected": rejected, "nfe": ev.nfe, "completed": completed,
            "t_reached": t_reached, "budget": span.budget, "max_steps": solver.max_steps,
            "stopped_because": why, "denoised": denoised, "shared_step_control": True, **(extra or {})}
    return SampleResult(samples=x, nfe=ev.nfe, steps=accepted, t=tt, solver=solver.name,
                        trajectory=torch.stack(states) if states is not None else None, stats=info)
