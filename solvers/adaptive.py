"""Adaptive step size: step-size controllers and DPM-Solver-12 / -23 (Lu et al. 2022, Sec. 4.4).

Adaptive runs have no fixed grid. `Sampler(model, solver='dpm_adaptive', rtol=...).run(nfe=budget)` hands the
solver the grid's span [t_start, t_end] and the NFE budget (a `solvers.span.SpanPlan`). The one loop
(`loop.integrate_adaptive`) asks the controller for the next interval, calls the solver's ordinary step on it
(the same step function and coefficients as the fixed-grid twin, here `dpmpp_2s` / `dpmpp_3s` with an embedded
lower-order solution) and lets the controller judge the returned error. It stops with errors.BudgetExceeded when
the next attempt would exceed the NFE budget or `max_steps` attempts, unless `on_budget='return'`: then the
result holds the state reached so far with `stats['completed'] = False`.

Step-size control reads the error norm on the host once per attempted step; that one sync per step is inherent
to adaptive stepping (the next step size depends on it). Batched samples share one step-size control (the error
norm is the max over the batch, as in DPM-Solver), so sample i's path depends on its batch mates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import EvalPoint, Field
from diffsolve.solvers.base import Plan, Solver, register
from diffsolve.solvers.dpm_solver import DPMSolverSinglestep, StartEval
from diffsolve.solvers.multistep import lambda_of
from diffsolve.solvers.run import Evaluator
from diffsolve.solvers.span import AdaptiveSolver, Span, check_positive, check_tolerance


# ------------------------------------------------------------------------------------------------
# Step-size controllers: propose the next interval, judge an attempt's error
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlState:
    """Where an adaptive run stands: the log-SNR reached and its end, the stop time, the next step h."""
    lam: float            # log-SNR reached
    lam_end: float
    t_stop: float
    h: float              # the next step in log-SNR
    e_prev: float = 1.0   # the previous accepted error norm (PI control)


class LogSNRController:
    """Step size in log-SNR, mixed relative/absolute error norm (DPM-Solver, Lu et al. 2022, Alg. 5):
    E = max over the batch of RMS((x - x_low) / delta), delta = max(atol, rtol max(|x_low|, |x_low_prev|));
    accept if E <= 1; h <- min(theta h E^(-1/order), lambda_end - lambda) (`kind='i'`), or the PI rule
    h <- theta h E^(-beta1/order) E_prev^(beta2/order) (`kind='pi'`; Gustafsson 1991, Hairer & Wanner IV.2).

    Args:
        order: the order of the step pair (the exponent's denominator).
        rtol: the relative tolerance.
        atol: the absolute tolerance.
        h_init: the first step in log-SNR.
        theta: the safety factor in (0, 1].
        kind: "i" (DPM-Solver's rule) or "pi" (proportional-integral).
        beta1: the PI rule's exponent of the current error (default 0.7).
        beta2: its exponent of the previous error (default 0.4).
    """

    def __init__(self, order: int, rtol: float, atol: float, h_init: float, theta: float, kind: str = "i",
                 beta1: float = 0.7, beta2: float = 0.4):
        check_choice("controller", kind, ("i", "pi"))
        self.order, self.rtol, self.atol, self.h_init, self.theta = order, rtol, atol, h_init, theta
        self.kind, self.beta1, self.beta2 = kind, float(beta1), float(beta2)

    def start(self, field: Field, span: Span, solver: Solver) -> ControlState:
        """The first control state over the span.

        Raises:
            InvalidArgument: the span does not have finite log-SNR at both ends.
        """
        lam_s, lam_end = lambda_of(field.at(span.t_start)), lambda_of(field.at(span.t_stop))
        if not (math.isfinite(lam_s) and math.isfinite(lam_end)):
            raise InvalidArgument(f"{solver.name} steps in log-SNR and needs finite log-SNR at both ends of the "
                                  "span; start below pure noise (grid_options t_max=) and stop above zero noise")
        return ControlState(lam_s, lam_end, span.t_stop, min(self.h_init, lam_end - lam_s))

    def done(self, c: ControlState) -> bool:
        """Whether the run has reached the span's end (to a relative 1e-9 in log-SNR)."""
        return c.lam_end - c.lam <= 1e-9 * max(1.0, abs(c.lam_end))

    def propose(self, c: ControlState, field: Field) -> float:
        """The time the next attempt ends at: one step h on in log-SNR, or the stop time."""
        lam = c.lam + c.h
        return c.t_stop if lam >= c.lam_end else float(field.schedule.t_from_lambda(lam))

    def error_norm(self, err: torch.Tensor, x: torch.Tensor, x_low_prev: torch.Tensor) -> float:
        """E: the batch's largest RMS of the error over the mixed tolerance (one host read)."""
        x_low = x - err
        delta = torch.clamp_min(self.rtol * torch.maximum(x_low.abs(), x_low_prev.abs()), self.atol)
        ratio = (err / delta).detach().reshape(x.shape[0], -1)
        return float(ratio.square().mean(dim=1).sqrt().max())

    def update(self, c: ControlState, p0: EvalPoint, p1: EvalPoint, E: float, accept: bool) -> ControlState:
        """The state after an attempt with error norm `E`: advanced if accepted, h rescaled."""
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
    embedded lower-order solution share model calls; `LogSNRController` picks the steps.

    Paper: Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
    10 Steps" (Sec. 4.4, Alg. 5); the updates of Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling
    of Diffusion Probabilistic Models".

    Args:
        order: 2 (DPM-Solver-12, dpm_adaptive_12) or 3 (DPM-Solver-23, dpm_adaptive_23; default).
        rtol: the relative tolerance of the error norm (default 0.05; at least 1e-15).
        atol: the absolute tolerance (default 0.0078; at least 1e-15).
        h_init: the first step in log-SNR (default 0.05).
        theta: the safety factor in (0, 1] (default 0.9).
        max_steps: the most step attempts (accepted and rejected) a run may take (default 1000).
        on_budget: "raise" (BudgetExceeded when the budget runs out) or "return" (the state reached, marked incomplete
            in `stats`).
        max_nfe: a model-evaluation budget for every run; None: only a run's `nfe=` bounds it.
        controller: "i" (DPM-Solver's rule) or "pi".

    Raises:
        InvalidArgument: an order other than 2 or 3, or tolerances or settings out of range.
    """

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
        self.rtol = check_tolerance("rtol", rtol)
        self.atol = check_tolerance("atol", atol)
        self.h_init = check_positive("h_init", h_init)
        self.theta = check_positive("theta", theta)
        if self.theta > 1:
            raise InvalidArgument(f"theta={theta!r}: the safety factor must lie in (0, 1]")
        self.stepper = DPMSolverSinglestep(order=order, prediction="data", embedded=True)
        self.controller = LogSNRController(order, self.rtol, self.atol, self.h_init, self.theta, controller)

    # --- the step is the fixed-grid twin's -------------------------------------------------------
    def coefficients(self, field: Field, t0: EvalPoint, t1: EvalPoint):
        """The fixed-step twin's (dpmpp_2s / dpmpp_3s) coefficients with the embedded pair."""
        return self.stepper.coefficients(field, t0, t1)

    def init(self, plan: Plan) -> Any:
        """No state between steps."""
        return ()

    def step(self, ev: Evaluator, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: Any):
        """The fixed-step twin's step; its error is the embedded pair's difference."""
        return self.stepper.step(ev, x, t0, t1, state, coeffs)

    def calls_per_attempt(self, x: torch.Tensor, state: Any) -> int:
        """Model calls of the next attempt: one fewer when a retry reuses the start."""
        return self.order - (1 if isinstance(state, StartEval) and state.x is x else 0)

    def accepted(self, state: Any) -> Any:
        """The state after an accepted step: none."""
        return ()


register("dpm_adaptive", DPMSolverAdaptive, "DPM-Solver-12/23 adaptive step size (order=2 or 3)")
register("dpm_adaptive_12", DPMSolverAdaptive, "DPM-Solver-12 adaptive (order 2)", order=2)
register("dpm_adaptive_23", DPMSolverAdaptive, "DPM-Solver-23 adaptive (order 3)", order=3)
