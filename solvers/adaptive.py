"""Adaptive step size: span plans, step-size controllers, and DPM-Solver-12 / -23 (Lu et al. 2022, Sec. 4.4).

Adaptive runs have no fixed grid. `Sampler(model, solver='dpm_adaptive', rtol=...).run(nfe=budget)` hands the
solver the grid's span [t_start, t_end] and the NFE budget. The one loop (`loop.integrate_adaptive`) asks the
controller for the next interval, calls the solver's ordinary step on it (the same step function and
coefficients as the fixed-grid twin, here `dpmpp_2s` / `dpmpp_3s` with an embedded lower-order solution) and
lets the controller judge the returned error. It stops with errors.BudgetExceeded when the next attempt would
exceed the NFE budget or `max_steps` attempts, unless `on_budget='return'`: then the result holds the state
reached so far with `stats['completed'] = False`.

Step-size control reads the error norm on the host once per attempted step; that one sync per step is inherent
to adaptive stepping (the next step size depends on it). Batched samples share one step-size control (the error
norm is the max over the batch, as in DPM-Solver), so sample i's path depends on its batch mates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.errors import BudgetExceeded, InvalidArgument, check_choice
from diffsolve.field import EvalPoint, Field
from diffsolve.solvers.base import Plan, Solver, register
from diffsolve.solvers.dpm_solver import DPMSolverSinglestep, StartEval
from diffsolve.solvers.multistep import lambda_of

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


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name}={value!r}: must be a finite number > 0")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{name}={value!r}: must be a finite number > 0")
    return value


class RunStats:
    """Accepted / rejected step counts and the accepted trajectory of one whole-span run (the bridges)."""

    def __init__(self, t0: float, x0: torch.Tensor, keep: bool):
        self.accepted = 0
        self.rejected = 0
        self.times = [t0]
        self.states = [x0] if keep else None

    def accept(self, t: float, x: torch.Tensor) -> None:
        self.accepted += 1
        self.times.append(t)
        if self.states is not None:
            self.states.append(x)


class AdaptiveSolver(Solver):
    """Base of solvers that run a span rather than a grid (adaptive step size, or an external library)."""

    adaptive = True
    calls_per_step = 1

    def inversion_refusal(self) -> str | None:
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
        return self.plan_adaptive(field, t)

    def stop_time(self, field: Field, t: torch.Tensor) -> tuple[float, bool]:
        """Integrate to the grid's end, or to the schedule's t_min and denoise once when the grid ends at zero."""
        t_end = float(t[-1])
        if t_end == 0.0 and self.singular_at_zero(field):
            lo = field.schedule.t_min if field.schedule.t_min > 0 else float(t[-2])
            return lo, True
        return t_end, False

    def singular_at_zero(self, field: Field) -> bool:
        return field.has_schedule

    def plan_adaptive(self, field: Field, t: torch.Tensor, *, steps: int | None = None,
                      nfe: int | None = None, settings: Any = None) -> SpanPlan:
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
    def over_budget(self, ev, stats: RunStats, span: Span, need: int) -> str | None:
        from diffsolve.loop import budget_exhausted
        return budget_exhausted(self, ev, stats.accepted + stats.rejected, span, need)

    def budget_error(self, why: str, stats: RunStats, t_reached: float, ev) -> BudgetExceeded:
        return BudgetExceeded(
            f"{self.name}: {why} at t={t_reached:.6g}, after {stats.accepted} accepted and {stats.rejected} "
            f"rejected steps and {ev.nfe} model evaluations. Raise nfe= / max_steps=, loosen rtol/atol, or pass "
            "on_budget='return' to get the state reached so far")

    def finish(self, ev, x: torch.Tensor, plan: SpanPlan, stats: RunStats, *, completed: bool, t_reached: float,
               why: str | None = None, extra: dict | None = None):
        from diffsolve.loop import finish_span    # the loop imports the solvers: import here, not at module load
        return finish_span(self, ev, x, plan, stats.times, stats.states, stats.accepted, stats.rejected,
                           completed=completed, t_reached=t_reached, why=why, extra=extra)


# ------------------------------------------------------------------------------------------------
# Step-size controllers: propose the next interval, judge an attempt's error
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlState:
    lam: float            # log-SNR reached
    lam_end: float
    t_stop: float
    h: float              # the next step in log-SNR
    e_prev: float = 1.0   # the previous accepted error norm (PI control)


class LogSNRController:
    """Step size in log-SNR, mixed relative/absolute error norm (DPM-Solver, Lu et al. 2022, Alg. 5):
    E = max over the batch of RMS((x - x_low) / delta), delta = max(atol, rtol max(|x_low|, |x_low_prev|));
    accept if E <= 1; h <- min(theta h E^(-1/order), lambda_end - lambda) (`kind='i'`), or the PI rule
    h <- theta h E^(-beta1/order) E_prev^(beta2/order) (`kind='pi'`; Gustafsson 1991, Hairer & Wanner IV.2)."""

    def __init__(self, order: int, rtol: float, atol: float, h_init: float, theta: float, kind: str = "i",
                 beta1: float = 0.7, beta2: float = 0.4):
        check_choice("controller", kind, ("i", "pi"))
        self.order, self.rtol, self.atol, self.h_init, self.theta = order, rtol, atol, h_init, theta
        self.kind, self.beta1, self.beta2 = kind, float(beta1), float(beta2)

    def start(self, field: Field, span: Span, solver: Solver) -> ControlState:
        lam_s, lam_end = lambda_of(field.at(span.t_start)), lambda_of(field.at(span.t_stop))
        if not (math.isfinite(lam_s) and math.isfinite(lam_end)):
            raise InvalidArgument(f"{solver.name} steps in log-SNR and needs finite log-SNR at both ends of the "
                                  "span; start below pure noise (grid_options t_max=) and stop above zero noise")
        return ControlState(lam_s, lam_end, span.t_stop, min(self.h_init, lam_end - lam_s))

    def done(self, c: ControlState) -> bool:
        return c.lam_end - c.lam <= 1e-9 * max(1.0, abs(c.lam_end))

    def propose(self, c: ControlState, field: Field) -> float:
        lam = c.lam + c.h
        return c.t_stop if lam >= c.lam_end else float(field.schedule.t_from_lambda(lam))

    def error_norm(self, err: torch.Tensor, x: torch.Tensor, x_low_prev: torch.Tensor) -> float:
        x_low = x - err
        delta = torch.clamp_min(self.rtol * torch.maximum(x_low.abs(), x_low_prev.abs()), self.atol)
        ratio = (err / delta).detach().reshape(x.shape[0], -1)
        return float(ratio.square().mean(dim=1).sqrt().max())

    def update(self, c: ControlState, p0: EvalPoint, p1: EvalPoint, E: float, accept: bool) -> ControlState:
        h = lambda_of(p1) - c.lam                   # the step actually taken, after the inverse's round-off
        lam = lambda_of(p1) if accept else c.lam
        if E <= 0:
            grow = math.inf
        elif self.kind == "pi" and accept:
            grow = self.theta * h * E ** (-self.beta1 / self.order) * c.e_prev ** (self.beta2 / self.order)
        else:
            grow = self.theta * h * E ** (-1.0 / self.order)
        return ControlState(lam, c.lam_end, c.t_stop, min(grow, c.lam_end - lam),
                            max(E, 1e-4) if accept else c.e_prev)


# ------------------------------------------------------------------------------------------------
# DPM-Solver-12 / -23: the singlestep DPM-Solver++ steps with their embedded pairs, under a controller
# ------------------------------------------------------------------------------------------------
class DPMSolverAdaptive(AdaptiveSolver):
    """DPM-Solver-12 / -23 with adaptive step size in lambda (Lu et al. 2022, Alg. 5 / dpm_solver_adaptive),
    data-prediction (DPM-Solver++) updates: the step of `dpmpp_2s` (order 2) or `dpmpp_3s` (order 3) and its
    embedded lower-order solution share model calls; `LogSNRController` picks the steps."""

    name = "dpm_adaptive"
    needs_schedule = True
    citation = "Lu et al. 2022, DPM-Solver (arXiv:2206.00927), Sec. 4.4 and Alg. 5"

    def __init__(self, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 theta: float = 0.9, max_steps: int = 1000, on_budget: str = "raise", max_nfe: int | None = None,
                 controller: str = "i"):
        super().__init__(max_steps, on_budget, max_nfe)
        if isinstance(order, bool) or order not in (2, 3):
            raise InvalidArgument(f"order={order!r}; allowed values: 2 (DPM-Solver-12), 3 (DPM-Solver-23)")
        self.order = order
        self.calls_per_step = order
        self.rtol = _positive("rtol", rtol)
        self.atol = _positive("atol", atol)
        self.h_init = _positive("h_init", h_init)
        self.theta = _positive("theta", theta)
        if self.theta > 1:
            raise InvalidArgument(f"theta={theta!r}: the safety factor must lie in (0, 1]")
        self.stepper = DPMSolverSinglestep(order=order, prediction="data", embedded=True)
        self.controller = LogSNRController(order, self.rtol, self.atol, self.h_init, self.theta, controller)

    # --- the step is the fixed-grid twin's -------------------------------------------------------
    def coefficients(self, field: Field, t0: EvalPoint, t1: EvalPoint):
        return self.stepper.coefficients(field, t0, t1)

    def init(self, plan: Plan) -> Any:
        return ()

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: Any):
        return self.stepper.step(ev, x, t0, t1, state, coeffs)

    def calls_per_attempt(self, x: torch.Tensor, state: Any) -> int:
        return self.order - (1 if isinstance(state, StartEval) and state.x is x else 0)

    def accepted(self, state: Any) -> Any:
        return ()


register("dpm_adaptive", DPMSolverAdaptive, "DPM-Solver-12/23 adaptive step size (order=2 or 3)")
register("dpm_adaptive_12", DPMSolverAdaptive, "DPM-Solver-12 adaptive (order 2)", order=2)
register("dpm_adaptive_23", DPMSolverAdaptive, "DPM-Solver-23 adaptive (order 3)", order=3)
