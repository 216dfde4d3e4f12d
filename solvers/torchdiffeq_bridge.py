"""torchdiffeq bridge: the field's probability-flow ODE handed to `torchdiffeq.odeint` (Chen et al. 2018).

Variables (`frame`): for a Gaussian-path field that does not start at pure noise, the EDM frame y = x / alpha
(Karras et al. 2022) against lambda = -log s, dy/dlambda = D - y (`frame='logsnr'`, the default: smooth for
step-size control), or against s = sigma / alpha itself, dy/ds = (y - D) / s (`frame='edm'`; on a fixed grid
it is the more accurate of the two). For flows starting at pure noise (alpha = 0), velocity-predicting models
and plain velocity fields: native time, dx/dt = v(x, t). Every slope evaluation goes through the evaluator, so
NFE counts the calls torchdiffeq makes (step-size selection included). torchdiffeq's 'rk4' is Kutta's 3/8 rule
(it matches diffsolve's 'rk38' in the EDM frame to round-off).

Adaptive methods (dopri5, dopri8, bosh3, adaptive_heun, fehlberg2) integrate the span [t_start, t_stop] and obey
the run's NFE budget / max_steps (BudgetExceeded, or on_budget='return'); fixed-grid methods (euler, midpoint,
rk4, explicit_adams, implicit_adams) step exactly on the Sampler's grid and need steps=. A grid ending at t = 0
stops at the schedule's t_min (or the last positive grid time) and finishes with one data prediction: the
slope is 0/0 at zero noise. Batched samples share one step-size control (torchdiffeq's error norm is over the
whole state tensor). torchdiffeq reads its error estimates on the host, once per step.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from diffsolve.errors import InvalidArgument, NonFiniteError, check_choice
from diffsolve.field import Field
from diffsolve.kernels import lincomb, nonfinite
from diffsolve.solvers.span import AdaptiveSolver, RunStats, Span, SpanPlan, check_positive, check_tolerance
from diffsolve.solvers.base import Plan, register
from diffsolve.solvers.frames import integration_frame


@dataclass(frozen=True)
class OdeintSettings:
    """The frame a torchdiffeq run integrates in: 'edm' (against -s), 'logsnr' or 'time'."""
    frame: str            # 'edm' (against -s), 'logsnr' (against lambda) or 'time' (against -t)

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
FIXED_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")
FRAMES = ("auto", "logsnr", "edm", "time")


class _OutOfBudget(Exception):
    def __init__(self, why: str):
        self.why = why


class _ODEFunc(torch.nn.Module):
    """The slope in the chosen variable; counts steps through torchdiffeq's callbacks and enforces the budget."""

    def __init__(self, solver: "TorchdiffeqSolver", ev, frame: str, span: Span, stats: RunStats, tau_to_t,
                 calls_per_step: int, shape):
        super().__init__()
        self.solver, self.ev, self.frame, self.span, self.stats = solver, ev, frame, span, stats
        self.tau_to_t = tau_to_t
        self.calls_per_step = calls_per_step
        self.shape = shape
        self.last = None            # (tau, y) at the start of the latest step: the best state so far
        self.starts = None          # states at the starts of accepted steps, when a trajectory is wanted

    def forward(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        reserve = 1 if self.span.final_denoise else 0
        if self.span.budget is not None and \
                self.ev.nfe + (1 + reserve) * self.ev.field.evals_per_call > self.span.budget:
            raise _OutOfBudget(f"the NFE budget of {self.span.budget} would be exceeded (used {self.ev.nfe})")
        tau_f = float(tau.detach())  # adaptive control syncs every step anyway; the field needs host scalars
        self.ev.step = self.stats.accepted
        p = self.ev.field.at(self.tau_to_t(tau_f))
        y = y.reshape(self.shape)
        # The integration variable u increases along the solve: u = -t, u = -s or u = lambda.
        if self.frame == "time":
            v = self.ev.velocity(y, p)
            self.check(v, p)
            return -v
        d = self.ev.denoise(y * p.alpha if p.alpha != 1.0 else y, p)
        self.check(d, p)
        if self.frame == "edm":
            s = -tau_f                                      # dy/du = -dy/ds = (D - y) / s
            return lincomb((1.0 / s, -1.0 / s), (d, y))
        return d - y

    def check(self, out: torch.Tensor, p) -> None:
        # torchdiffeq turns a NaN slope into an "underflow in dt" assertion; name the step instead (this bridge
        # syncs every evaluation anyway).
        if self.ev.check_finite and bool(nonfinite(out.detach())):
            raise NonFiniteError(self.stats.accepted, p.t)

    def callback_step(self, t0, y0, dt):
        self.last = (float(t0.detach()), y0)
        if self.stats.accepted + self.stats.rejected >= self.solver.max_steps:
            raise _OutOfBudget(f"the step limit max_steps={self.solver.max_steps} was reached")

    def callback_accept_step(self, t0, y0, dt):
        self.stats.accepted += 1
        self.stats.times.append(self.tau_to_t(float((t0 + dt).detach())))
        if self.starts is not None:
            self.starts.append(y0)         # an accepted step's start is the previous one's end

    def callback_reject_step(self, t0, y0, dt):
        self.stats.rejected += 1


class TorchdiffeqSolver(AdaptiveSolver):
    """torchdiffeq.odeint on the probability-flow ODE: adaptive (dopri5, dopri8, bosh3, adaptive_heun) or fixed grid.

    Papers: Chen et al. 2018, "Neural Ordinary Differential Equations" (torchdiffeq); Dormand and Prince 1980, "A
    family of embedded Runge-Kutta formulae"; Bogacki and Shampine 1989, "A 3(2) pair of Runge-Kutta formulas".

    Args:
        method: an adaptive method (dopri5, dopri8, bosh3, adaptive_heun, fehlberg2) or a fixed-grid one (euler,
            midpoint, rk4, explicit_adams, implicit_adams); default "dopri5".
        rtol: torchdiffeq's relative tolerance (default 1e-3).
        atol: its absolute tolerance (default 1e-4).
        frame: "auto" (log-SNR; native time for plain fields, velocity models and a start at pure noise), "logsnr",
            "edm" or "time".
        max_steps: the most step attempts (accepted and rejected) a run may take (default 1000).
        on_budget: "raise" (BudgetExceeded when the budget runs out) or "return" (the state reached, marked incomplete
            in `stats`).
        max_nfe: a model-evaluation budget for every run; None: only a run's `nfe=` bounds it.
        options: extra keywords for torchdiffeq's `options=`.
        alias: the registry name reported.

    Raises:
        InvalidArgument: an unknown method or frame, or tolerances out of range.
    """

    needs_schedule = False
    citation = "Chen et al. 2018 (torchdiffeq); Dormand & Prince 1980; Bogacki & Shampine 1989"

    def __init__(self, method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-4, frame: str = "auto",
                 max_steps: int = 1000, on_budget: str = "raise", max_nfe: int | None = None,
                 options: dict | None = None, alias: str | None = None):
        super().__init__(max_steps, on_budget, max_nfe)
        check_choice("method", method, ADAPTIVE_METHODS + FIXED_METHODS)
        check_choice("frame", frame, FRAMES)
        self.method = method
        self.rtol = check_tolerance("rtol", rtol)
        self.atol = check_tolerance("atol", atol)
        self.frame = frame
        self.options = dict(options or {})
        self.name = alias or f"odeint_{method}"
        self.order = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "adaptive_heun": 2, "fehlberg2": 2, "euler": 1,
                      "midpoint": 2, "rk4": 4, "explicit_adams": 4, "implicit_adams": 4}[method]

    @property
    def fixed_grid(self) -> bool:
        """Whether the method steps on a fixed grid (euler, midpoint, rk4, the Adams methods)."""
        return self.method in FIXED_METHODS

    def choose_frame(self, field: Field, t_start: float) -> str:
        """The frame to integrate in from `t_start` (log-SNR preferred)."""
        # The EDM frame in lambda = -log s by default: on a VP Gaussian dopri5 needs about half the calls of the
        # same ODE in s for the same endpoint error (s spans four decades; error control in s is poor at large s).
        return integration_frame(field, t_start, None if self.frame == "auto" else self.frame, preferred="logsnr")

    def stop_time(self, field: Field, t: torch.Tensor) -> tuple[float, bool]:
        """Where odeint stops, and whether one final data prediction takes it to t = 0."""
        t_stop, final = super().stop_time(field, t)
        if self.fixed_grid and final:
            return float(t[-2]), True           # fixed grids stop at their last positive time, then denoise
        return t_stop, final

    def singular_at_zero(self, field: Field) -> bool:
        """Whether the slope is 0/0 at t = 0 in the chosen frame."""
        return field.has_schedule and not (self.frame in ("auto", "time") and field.prediction == "velocity")

    def plan_adaptive(self, field: Field, t: torch.Tensor, *, steps: int | None = None,
                      nfe: int | None = None) -> Plan:
        """The span plan with the frame chosen.

        Raises:
            InvalidArgument: a fixed-grid method without steps=, or given nfe= instead.
        """
        if self.fixed_grid and steps is None and t.numel() <= 3 and nfe is None:
            raise InvalidArgument(f"method={self.method!r} is a fixed-grid method: give steps= (or an explicit grid)")
        if self.fixed_grid and steps is None and nfe is not None:
            raise InvalidArgument(f"method={self.method!r} is a fixed-grid method: give steps=, not nfe=")
        return super().plan_adaptive(field, t, steps=steps, nfe=nfe,
                                     settings=OdeintSettings(self.choose_frame(field, float(t[0]))))

    def solve_span(self, ev, x: torch.Tensor, plan: SpanPlan, *, callback: Callable | None = None,
                   return_trajectory: bool = False):
        """Run torchdiffeq.odeint over the span (counted, budgeted); returns a SampleResult."""
        import torchdiffeq
        field = ev.field
        span: Span = plan.span
        frame = plan.settings.frame
        sch = field.schedule
        # torchdiffeq is given an increasing variable u: -s (EDM frame), lambda (log-SNR) or -t (native time).
        if frame == "edm":
            to_tau = lambda t: -float(sch.edm_sigma(t))                                      # noqa: E731
            tau_to_t = lambda u: float(sch.t_from_edm_sigma(-u))                            # noqa: E731
        elif frame == "logsnr":
            to_tau = lambda t: float(sch.lambda_(t))                                        # noqa: E731
            tau_to_t = lambda lam: float(sch.t_from_lambda(lam))                            # noqa: E731
        else:
            to_tau = lambda t: -float(t)                                                    # noqa: E731
            tau_to_t = lambda u: -float(u)                                                  # noqa: E731
        if self.fixed_grid:
            grid = [float(v) for v in plan.grid]
            if span.final_denoise:
                grid = grid[:-1]
            taus = [to_tau(v) for v in grid]
        else:
            taus = [to_tau(span.t_start), to_tau(span.t_stop)]
        p0 = field.at(span.t_start)
        y0 = x / p0.alpha if frame != "time" and p0.alpha != 1.0 else x
        # Trajectories: every grid point for fixed-grid methods, every accepted step's end for adaptive ones.
        stats = RunStats(span.t_start, x, return_trajectory)
        func = _ODEFunc(self, ev, frame, span, stats, tau_to_t, 1, x.shape)
        if return_trajectory and not self.fixed_grid:
            func.starts = []
        # Times stay float64 whatever the state's dtype (torchdiffeq keeps its own time dtype), so that the exact
        # ends below match and no time leaves the schedule's range through float32 round-off.
        tt = torch.tensor(taus, dtype=torch.float64, device=x.device)
        # Exact grid ends for the inverse maps (round-off in tau must not leave the schedule's range).
        ends = {taus[0]: span.t_start, taus[-1]: span.t_stop if not self.fixed_grid else grid[-1]}
        func.tau_to_t = lambda v, f=tau_to_t: ends.get(v, f(v))
        kwargs = {"method": self.method, "options": dict(self.options)}
        if not self.fixed_grid:
            kwargs.update(rtol=self.rtol, atol=self.atol)
            kwargs["options"].setdefault("max_num_steps", 10 ** 9)      # our max_steps governs
        try:
            with warnings.catch_warnings():
                # Fixed-grid methods ignore the accept/reject callbacks; nothing to warn about.
                warnings.filterwarnings("ignore", message=".*does not support callbacks.*")
                try:
                    ys = torchdiffeq.odeint(func, y0, tt, **kwargs)
                except AssertionError as e:
                    if "underflow" not in str(e):
                        raise
                    # The step size shrank to nothing with finite slopes: the tolerance cannot be met here.
                    raise _OutOfBudget(f"the step size underflowed: rtol={self.rtol:g}, atol={self.atol:g} cannot "
                                       "be met (loosen them)") from None
        except _OutOfBudget as e:
            if self.on_budget == "raise":
                t_reached = tau_to_t(func.last[0]) if func.last is not None else span.t_start
                raise self.budget_error(e.why, stats, t_reached, ev) from None
            if func.last is None:
                tau_r, y_r = taus[0], y0
            else:
                tau_r, y_r = func.last
            t_r = func.tau_to_t(tau_r)
            p = field.at(t_r)
            x_r = y_r * p.alpha if frame != "time" and p.alpha != 1.0 else y_r
            return self.finish(ev, x_r, plan, stats, completed=False, t_reached=t_r, why=e.why)
        y1 = ys[-1]
        to_x = lambda y, t: y * field.at(t).alpha if frame != "time" else y                 # noqa: E731
        if self.fixed_grid:
            stats.times = list(grid)
            stats.accepted = len(grid) - 1
            if stats.states is not None:
                stats.states = [to_x(y, g) for y, g in zip(ys, grid)]
        elif stats.states is not None:
            ends = func.starts[1:] + [y1]
            stats.states = [x] + [to_x(y, t) for y, t in zip(ends, stats.times[1:])]
        p1 = field.at(span.t_stop if not self.fixed_grid else grid[-1])
        x1 = y1 * p1.alpha if frame != "time" and p1.alpha != 1.0 else y1
        return self.finish(ev, x1, plan, stats, completed=True, t_reached=span.t_stop,
                           extra={"frame": frame, "method": self.method})


register("odeint", TorchdiffeqSolver, "torchdiffeq.odeint bridge (method=dopri5|dopri8|bosh3|adaptive_heun|fixed)")
for _m in ("dopri5", "dopri8", "bosh3", "adaptive_heun"):
    register(f"odeint_{_m}", TorchdiffeqSolver, f"torchdiffeq.odeint method={_m!r} (adaptive)", method=_m)
