"""Adaptive step-size ODE solvers: the whole-span solver protocol and DPM-Solver-12 / -23 (Lu et al. 2022, Sec. 4.4).

Adaptive runs have no fixed grid. `Sampler(model, solver='dpm_adaptive', rtol=...).run(nfe=budget)` hands the
solver the grid's span [t_start, t_end] and the NFE budget; the solver integrates the whole span in one call
(`solve_adaptive`), counting model evaluations through the evaluator. It stops with errors.BudgetExceeded when the
next attempt would exceed the NFE budget or `max_steps` attempted steps, unless `on_budget='return'`: then the
result holds the state reached so far with `stats['completed'] = False`.

Step-size control reads the error estimate on the host once per attempted step; that one sync per step is
inherent to adaptive stepping (the next step size depends on it). Batched samples share one step-size control
(the error norm is the max over the batch, as in DPM-Solver), so sample i's path depends on its batch mates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import BudgetExceeded, InvalidArgument, NonFiniteError, check_choice
from ..field import VectorField
from ..kernels import lincomb
from .base import Plan, Solver, register
from .dpm_solver import lambda_of

ON_BUDGET = ("raise", "return")


@dataclass(frozen=True)
class Span:
    """Where an adaptive run starts and stops; `final_denoise`: finish at t = 0 with one data prediction."""

    t_start: float
    t_stop: float
    final_denoise: bool
    budget: int | None              # model evaluations (per sample, guidance included) allowed
    steps: int | None = None        # fixed-grid methods only: the grid's step count


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{name}={value!r}: must be a finite number > 0")
    return value


class RunStats:
    """Accepted / rejected step counts and the accepted trajectory of one adaptive run."""

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
    """Base of solvers that integrate the whole span in one call (adaptive step size, or an external library)."""

    adaptive = True
    calls_per_step = 1

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
    def plan(self, field: VectorField, t: torch.Tensor) -> Plan:
        return self.plan_adaptive(field, t)

    def stop_time(self, field: VectorField, t: torch.Tensor) -> tuple[float, bool]:
        """Integrate to the grid's end, or to the schedule's t_min and denoise once when the grid ends at zero."""
        t_end = float(t[-1])
        if t_end == 0.0 and self.singular_at_zero(field):
            lo = field.schedule.t_min if field.schedule.t_min > 0 else float(t[-2])
            return lo, True
        return t_end, False

    def singular_at_zero(self, field: VectorField) -> bool:
        return field.has_schedule

    def plan_adaptive(self, field: VectorField, t: torch.Tensor, *, steps: int | None = None,
                      nfe: int | None = None) -> Plan:
        self.check_field(field)
        budget = nfe if nfe is not None else self.max_nfe
        if budget is not None and nfe is not None and self.max_nfe is not None:
            budget = min(nfe, self.max_nfe)
        t_stop, final = self.stop_time(field, t)
        span = Span(float(t[0]), t_stop, final, budget, steps)
        ends = [span.t_start, span.t_stop] + ([0.0] if final else [])
        tt = torch.tensor(ends, dtype=torch.float64)
        return Plan(t=tt, points=self.grid_points(field, tt), nfe=-1, extra={"span": span, "grid": t})

    # --- the run ---------------------------------------------------------------------------------
    def over_budget(self, ev, stats: RunStats, span: Span, need: int) -> str | None:
        """Why the next attempt (needing `need` more model calls per sample) may not run, or None."""
        if stats.accepted + stats.rejected >= self.max_steps:
            return f"the step limit max_steps={self.max_steps} was reached"
        if span.budget is not None and ev.nfe + need * ev.field.evals_per_call > span.budget:
            return (f"the NFE budget of {span.budget} would be exceeded (used {ev.nfe}, the next step needs "
                    f"{need * ev.field.evals_per_call} more)")
        return None

    def budget_error(self, why: str, stats: RunStats, t_reached: float, ev) -> BudgetExceeded:
        return BudgetExceeded(
            f"{self.name}: {why} at t={t_reached:.6g}, after {stats.accepted} accepted and {stats.rejected} "
            f"rejected steps and {ev.nfe} model evaluations. Raise nfe= / max_steps=, loosen rtol/atol, or pass "
            "on_budget='return' to get the state reached so far")

    def finish(self, ev, x: torch.Tensor, plan: Plan, stats: RunStats, *, completed: bool, t_reached: float,
               why: str | None = None, denoised: torch.Tensor | None = None, extra: dict | None = None):
        from ..sampler import SampleResult   # the sampler imports the solvers: import here, not at module load
        span: Span = plan.extra["span"]
        if completed and span.final_denoise:
            # Final step to zero noise: the data prediction (Euler to s = 0 in the EDM frame).
            p = ev.field.at(span.t_stop)
            x = ev.denoise(x, p) * ev.field.at(0.0).alpha
            stats.accept(0.0, x)
            t_reached = 0.0
        ev.step = max(stats.accepted - 1, 0)
        times = torch.tensor(stats.times, dtype=torch.float64)
        ev.raise_if_bad(times)
        info = {"accepted": stats.accepted, "rejected": stats.rejected, "nfe": ev.nfe, "completed": completed,
                "t_reached": t_reached, "budget": span.budget, "max_steps": self.max_steps,
                "stopped_because": why, "denoised": denoised, "shared_step_control": True}
        info.update(extra or {})
        return SampleResult(samples=x, nfe=ev.nfe, steps=stats.accepted, t=times, solver=self.name,
                            trajectory=torch.stack(stats.states) if stats.states is not None else None, stats=info)


# ------------------------------------------------------------------------------------------------
# DPM-Solver-12 / -23
# ------------------------------------------------------------------------------------------------
class DPMSolverAdaptive(AdaptiveSolver):
    """DPM-Solver-12 / -23 with adaptive step size in lambda (Lu et al. 2022, Alg. 5 / dpm_solver_adaptive),
    data-prediction (DPM-Solver++) updates: a lower- and a higher-order singlestep solution share model calls;
    E = max over batch of RMS((x_high - x_low) / delta), delta = max(atol, rtol max(|x_low|, |x_prev|));
    accept if E <= 1; h <- min(theta h E^(-1/order), lambda_end - lambda)."""

    name = "dpm_adaptive"
    needs_schedule = True
    citation = "Lu et al. 2022, DPM-Solver (arXiv:2206.00927), Sec. 4.4 and Alg. 5"

    def __init__(self, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 theta: float = 0.9, max_steps: int = 1000, on_budget: str = "raise", max_nfe: int | None = None):
        super().__init__(max_steps, on_budget, max_nfe)
        if order not in (2, 3):
            raise InvalidArgument(f"order={order!r}; allowed values: 2 (DPM-Solver-12), 3 (DPM-Solver-23)")
        self.order = order
        self.calls_per_step = order
        self.rtol = _positive("rtol", rtol)
        self.atol = _positive("atol", atol)
        self.h_init = _positive("h_init", h_init)
        self.theta = _positive("theta", theta)
        if self.theta > 1:
            raise InvalidArgument(f"theta={theta!r}: the safety factor must lie in (0, 1]")

    def _t_at(self, field: VectorField, lam: float, lam_end: float, t_stop: float) -> float:
        return t_stop if lam >= lam_end else float(field.schedule.t_from_lambda(lam))

    def solve_adaptive(self, ev, x: torch.Tensor, plan: Plan, *, callback: Callable | None = None,
                       return_trajectory: bool = False):
        from ..sampler import StepInfo
        field = ev.field
        span: Span = plan.extra["span"]
        ps = field.at(span.t_start)
        lam_s, lam_end = lambda_of(ps), lambda_of(field.at(span.t_stop))
        if not (math.isfinite(lam_s) and math.isfinite(lam_end)):
            raise InvalidArgument(f"{self.name} steps in log-SNR and needs finite log-SNR at both ends of the span; "
                                  "start below pure noise (grid_options t_max=) and stop above zero noise")
        stats = RunStats(span.t_start, x, return_trajectory)
        h = min(self.h_init, lam_end - lam_s)
        x_prev = x
        m_s = None                     # data prediction at the accepted point, kept across rejected attempts
        r1, r2 = (0.5, None) if self.order == 2 else (1.0 / 3.0, 2.0 / 3.0)
        tol_end = 1e-9 * max(1.0, abs(lam_end))
        while lam_end - lam_s > tol_end:
            need = self.order - (m_s is not None) + (1 if span.final_denoise else 0)
            why = self.over_budget(ev, stats, span, need)
            if why is not None:
                if self.on_budget == "raise":
                    raise self.budget_error(why, stats, ps.t, ev)
                return self.finish(ev, x, plan, stats, completed=False, t_reached=ps.t, why=why, denoised=m_s)
            ev.step = stats.accepted
            lam_t = lam_s + h
            pt = field.at(self._t_at(field, lam_t, lam_end, span.t_stop))
            h = lambda_of(pt) - lam_s                      # the step actually taken, after the inverse's round-off
            p1 = field.at(self._t_at(field, lam_s + r1 * h, lam_end, span.t_stop))
            if m_s is None:
                m_s = ev.denoise(x, ps)
            a_t = pt.sigma / ps.sigma
            phi_1 = math.expm1(-h)
            x_s1 = lincomb((p1.sigma / ps.sigma, -p1.alpha * math.expm1(-r1 * h)), (x, m_s))
            m_s1 = ev.denoise(x_s1, p1)
            if self.order == 2:
                x_low = lincomb((a_t, -pt.alpha * phi_1), (x, m_s))
                w = (0.5 / r1) * pt.alpha * phi_1
                x_high = lincomb((a_t, -pt.alpha * phi_1 + w, -w), (x, m_s, m_s1))
            else:
                w = (0.5 / r1) * pt.alpha * phi_1
                x_low = lincomb((a_t, -pt.alpha * phi_1 + w, -w), (x, m_s, m_s1))
                p2 = field.at(self._t_at(field, lam_s + r2 * h, lam_end, span.t_stop))
                phi_12, phi_22 = math.expm1(-r2 * h), math.expm1(-r2 * h) / (r2 * h) + 1.0
                c22 = (r2 / r1) * p2.alpha * phi_22
                x_s2 = lincomb((p2.sigma / ps.sigma, -p2.alpha * phi_12 - c22, c22), (x, m_s, m_s1))
                m_s2 = ev.denoise(x_s2, p2)
                c2 = (1.0 / r2) * pt.alpha * (phi_1 / h + 1.0)
                x_high = lincomb((a_t, -pt.alpha * phi_1 - c2, c2), (x, m_s, m_s2))
            delta = torch.clamp_min(self.rtol * torch.maximum(x_low.abs(), x_prev.abs()), self.atol)
            ratio = ((x_high - x_low) / delta).reshape(x.shape[0], -1)
            E = float(ratio.square().mean(dim=1).sqrt().max())      # the one host read per attempted step
            if not math.isfinite(E):
                ev.raise_if_bad(torch.tensor(stats.times + [pt.t], dtype=torch.float64))
                raise NonFiniteError(stats.accepted, pt.t, what="adaptive error estimate")
            if E <= 1.0:
                x, x_prev, ps, lam_s, m_s = x_high, x_low, pt, lambda_of(pt), None
                stats.accept(pt.t, x)
                if callback is not None:
                    callback(StepInfo(stats.accepted - 1, stats.times[-2], pt.t, x, ev.last_denoised, ev.nfe))
            else:
                stats.rejected += 1
            grow = self.theta * h * (E ** (-1.0 / self.order)) if E > 0 else math.inf
            h = min(grow, lam_end - lam_s)
        return self.finish(ev, x, plan, stats, completed=True, t_reached=ps.t)


register("dpm_adaptive", DPMSolverAdaptive, "DPM-Solver-12/23 adaptive step size (order=2 or 3)")
register("dpm_adaptive_12", DPMSolverAdaptive, "DPM-Solver-12 adaptive (order 2)", order=2)
register("dpm_adaptive_23", DPMSolverAdaptive, "DPM-Solver-23 adaptive (order 3)", order=3)
