"""Shared host-side helpers of the fast solvers: log-SNR, per-step order schedules, AFS, Lagrange quadrature.

Everything here runs on the host in float64 inside `plan()`; nothing touches a device tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field, replace
from typing import Any, Sequence

import numpy as np
import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import EvalPoint, Field
from diffsolve.kernels import lincomb
from diffsolve.solvers.base import Plan, Solver, StepCoefficients
from diffsolve.solvers.euler import ddim_coefficients


def lambda_of(p: EvalPoint) -> float:
    """log(alpha / sigma), +inf at zero noise and -inf at pure noise."""
    if p.sigma == 0:
        return math.inf
    if p.alpha == 0:
        return -math.inf
    return math.log(p.alpha) - math.log(p.sigma)


def check_lower_order_final(option) -> None:
    """Refuse a `lower_order_final` that is not True, False or "auto".

    Raises:
        InvalidArgument: naming the allowed values.
    """
    if not (isinstance(option, bool) or option == "auto"):
        raise InvalidArgument(f"lower_order_final={option!r}; allowed values: True, False, 'auto'")


def check_order(order, allowed: Sequence[int]) -> int:
    """The order if it is an integer in `allowed`.

    Raises:
        InvalidArgument: naming the allowed values.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order not in allowed:
        raise InvalidArgument(f"order={order!r}; allowed values: {', '.join(map(str, allowed))}")
    return order


def step_orders(lams: Sequence[float], max_order: int, lower_order_final, ends_at_zero: bool,
                singular_end: bool = True, increasing: bool = False) -> tuple[int, ...]:
    """Order of each multistep step: warm start, history only over finite log-SNR, lower order at the end.

    lower_order_final: True caps step i at n - i (UniPC / DPM-Solver `lower_order_final`); 'auto' is diffusers'
    DPMSolverMultistep rule (last step first order when it reaches zero noise or n < 15, second-to-last at most
    second order when n < 15); False keeps the order. A step into zero noise is first order when `singular_end`
    (formulas in log-SNR or log-sigma are undefined there); a step out of or into pure noise is always first
    order (s is infinite there).

    Inversion (`increasing=True`, a grid from low to high noise): `lower_order_final` does not apply. Its purpose
    is the stability of the last steps into zero noise; an inversion ends at high noise, and its steps near zero
    noise are its first ones, which the warm start already takes at low order.
    """
    n = len(lams) - 1
    out = []
    run = 0
    for i in range(n):
        run = run + 1 if math.isfinite(lams[i]) else 0
        k = min(max_order, max(run, 1))
        if not math.isfinite(lams[i]) or lams[i + 1] == -math.inf or \
                (singular_end and not math.isfinite(lams[i + 1])):
            k = 1
        if not increasing:
            if lower_order_final == "auto":
                if i == n - 1 and (ends_at_zero or n < 15):
                    k = 1
                if i == n - 2 and n < 15:
                    k = min(k, 2)
            elif lower_order_final:
                k = min(k, n - i)
        out.append(k)
    return tuple(out)


def afs_x0_coefficient(p: EvalPoint) -> float:
    """AFS (diff-sampler): x0_hat = c x with c from d = x~ / sqrt(1 + s^2), written to stay finite at alpha = 0."""
    r = math.hypot(p.alpha, p.sigma)
    return p.alpha / (r * (r + p.sigma))


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def lagrange_integrals(nodes: Sequence[Any], lo: Any, hi: Any, variable: str = "s") -> tuple[Any, ...]:
    """int_lo^hi L_j(u(tau)) dtau for the Lagrange basis through `nodes` (in tau), u = tau or u = log tau.

    Gauss-Legendre on 24 points: exact for the polynomial case, and for u = log tau the integrand e^v P(v)
    (after tau = e^v) is resolved to round-off for the step sizes a sampler takes. Host floats give floats (the
    plans); when a node or an end is a tensor (per-sample times, or times with gradient as learned corrections
    use them) the weights are float64 tensors of the broadcast shape, differentiable in the times.
    """
    if variable not in ("s", "logs"):
        raise InvalidArgument(f"variable={variable!r}; allowed values: 's', 'logs'")
    if any(isinstance(v, torch.Tensor) for v in (*nodes, lo, hi)):
        return _lagrange_integrals_tensor(list(nodes), lo, hi, variable == "logs")
    nodes = [float(v) for v in nodes]
    if variable == "s":
        u_nodes = nodes
        half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
        u = mid + half * _GL_NODES
        jac = half * _GL_WEIGHTS
    else:
        if lo <= 0 or hi <= 0 or min(nodes) <= 0:
            raise InvalidArgument("Lagrange integration in log sigma needs positive noise levels")
        u_nodes = [math.log(v) for v in nodes]
        a, b = math.log(lo), math.log(hi)
        half, mid = 0.5 * (b - a), 0.5 * (b + a)
        u = mid + half * _GL_NODES
        jac = half * _GL_WEIGHTS * np.exp(u)
    out = []
    for j, uj in enumerate(u_nodes):
        basis = np.ones_like(u)
        for k, uk in enumerate(u_nodes):
            if k != j:
                basis = basis * (u - uk) / (uj - uk)
        out.append(float(np.sum(jac * basis)))
    return tuple(out)


def _lagrange_integrals_tensor(nodes: list, lo: Any, hi: Any, log: bool) -> tuple[torch.Tensor, ...]:
    """The tensor form of `lagrange_integrals`: the same 24-point rule, broadcast over the values' shapes."""
    like = next(v for v in (*nodes, lo, hi) if isinstance(v, torch.Tensor))

    def as_t(v: Any) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=torch.float64, device=like.device)
        return torch.log(v) if log else v
    u_nodes = [as_t(v) for v in nodes]
    a, b = as_t(lo), as_t(hi)
    gx = torch.as_tensor(_GL_NODES, dtype=torch.float64, device=like.device)
    gw = torch.as_tensor(_GL_WEIGHTS, dtype=torch.float64, device=like.device)
    shape = (-1,) + (1,) * max(v.dim() for v in (*u_nodes, a, b))     # quadrature points on a leading axis
    half, mid = (0.5 * (b - a)).unsqueeze(0), (0.5 * (b + a)).unsqueeze(0)
    u = mid + half * gx.reshape(shape)
    jac = half * gw.reshape(shape) * (torch.exp(u) if log else 1.0)
    out = []
    for j, uj in enumerate(u_nodes):
        basis = torch.ones_like(u)
        for k, uk in enumerate(u_nodes):
            if k != j:
                basis = basis * (u - uk) / (uj - uk)
        out.append((jac * basis).sum(0))
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# What every multistep solver shares: order options, the AFS first step, the plan's bookkeeping
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MultistepStep(StepCoefficients):
    """Base of multistep per-step data. `afs`: on the first step with the analytical first step, x0_hat = afs x
    (no model call)."""

    order: int = dc_field(default=1, kw_only=True)
    afs: float | None = dc_field(default=None, kw_only=True)


class MultistepSolver(Solver):
    """One model call per step; history of past outputs in the state. Subclasses give the per-step data."""

    calls_per_step = 1

    def set_options(self, order: int, allowed: Sequence[int], lower_order_final, afs: bool) -> None:
        """Check and store `order` (one of `allowed`), `lower_order_final` and `afs`."""
        self.solver_order = check_order(order, allowed)     # the highest order a step uses
        self.order = self.solver_order                       # declared global order (subclasses may adjust)
        check_lower_order_final(lower_order_final)
        self.lower_order_final = lower_order_final
        self.afs = bool(afs)

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """One model call per step, less the one AFS saves."""
        return steps - (1 if self.afs else 0)

    def step_orders(self, lams: Sequence[float], ends_at_zero: bool, singular_end: bool = True,
                    increasing: bool = False) -> tuple[int, ...]:
        """Each step's order on a grid of log-SNRs `lams` (see the module's `step_orders`)."""
        return step_orders(lams, self.solver_order, self.lower_order_final, ends_at_zero, singular_end, increasing)

    def grid_lambdas(self, field: Field, t: torch.Tensor, singular_end: bool = True):
        """(points, log-SNRs, per-step orders) of a grid: the start of every multistep plan (either direction)."""
        self.check_field(field)
        pts = self.grid_points(field, t)
        lam = [lambda_of(p) for p in pts]
        increasing = self.check_direction(t)
        return pts, lam, self.step_orders(lam, pts[-1].sigma == 0, singular_end, increasing)

    def make_plan(self, t: torch.Tensor, pts: Sequence[EvalPoint], data: Sequence[MultistepStep]) -> Plan:
        """The plan; AFS replaces the first model call only when the grid starts at high noise (sampling): its
        estimate x0_hat = c x assumes the state is almost pure noise, which an inversion's start is not."""
        data = list(data)
        if self.afs and not self.check_direction(t):
            data[0] = replace(data[0], afs=afs_x0_coefficient(pts[0]))
        nfe = sum(1 for d in data if d.afs is None)
        return Plan(t=t, points=tuple(pts), coeffs=tuple(data), nfe=nfe)

    def data_prediction(self, ev, x: torch.Tensor, t0: EvalPoint, coeffs: MultistepStep) -> torch.Tensor:
        """x0_hat at the step's start: the model, or on the first step with AFS the analytical estimate (no call)."""
        if coeffs.afs is not None:
            return lincomb((coeffs.afs,), (x,))
        return ev.denoise(x, t0)


# ------------------------------------------------------------------------------------------------
# Multistep on the EDM-frame slope: x~ = x / alpha, s = sigma / alpha, dx~/ds = d = (x~ - D) / s = eps
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlopeStep(MultistepStep):
    """x' = lincomb(update, (x, m)) for a first-order step, else lincomb(update, (x, d_i, d_{i-1}, ...));
    `slope`: d_i = lincomb(slope, (x, m)); `keep_slope`: whether later steps need d_i."""

    update: tuple[float, ...]
    slope: tuple[float, float]
    keep_slope: bool


@dataclass(frozen=True)
class PlainABStep(MultistepStep):
    """A plain velocity field's Adams-Bashforth step: x' = x + sum_j weights[j] f_{i-j} (f = dx/dt, newest
    first); `keep`: whether later steps need this step's f."""

    weights: tuple[float, ...]
    keep: bool


class SlopeMultistep(MultistepSolver):
    """Adams-Bashforth family on the EDM-frame slope d = (x~ - D) / s (which equals the noise prediction eps).

    x_{i+1} = alpha_{i+1} (x_i / alpha_i + sum_j c_j d_{i-j}): subclasses give the weights c_j of an order-k step
    (`weights`). First-order steps (warm start, a start at pure noise, a step into zero noise where the rule
    needs log s) are written as DDIM, which equals Euler in the EDM frame and stays finite at alpha = 0.
    The state holds the past slopes, newest first.
    """

    max_orders: tuple[int, ...] = (1, 2, 3, 4)
    singular_end = False            # True when the weights need log s at the step's end (s = 0 not allowed)
    # Inversion only: the most a step may exceed the mean spacing of the slopes it extrapolates (None: no cap).
    inversion_step_ratio: float | None = None

    def __init__(self, order: int = 4, lower_order_final: bool | str = False, afs: bool = False):
        self.set_options(order, self.max_orders, lower_order_final, afs)

    def weights(self, s_hist: Sequence[float], s_next: float, k: int) -> tuple[float, ...]:
        """c_j for slopes at s_hist = (s_i, s_{i-1}, ...) (k values) over the step s_i -> s_next."""
        raise NotImplementedError

    # Solvers whose rule is plain Adams-Bashforth in one variable (iPNDM, iPNDM_v, LMS) also integrate a plain
    # velocity field (schedule=None) in its own time: they set `needs_schedule = False` and `plain_order`.
    plain_order: int | None = None      # declared global order on a plain velocity field; None: refused there

    def extrapolation_order(self, u: Sequence[float], i: int, k: int, increasing: bool) -> int:
        """Step i's order, lowered on an inversion while the step is longer than `inversion_step_ratio` times
        the mean spacing of the k points the rule extrapolates from (u: the grid in the rule's variable).

        Why: a rule that extrapolates a polynomial through past slopes is accurate over about the span of those
        slopes. Sampling shrinks its steps, so each step stays inside that span. An inversion runs the grid
        reversed: its steps grow (each step of a 10-step karras grid from sigma 0.002 to 80 is 1.7-4.6x the
        last), the past slopes sit at low noise where the slope turns fastest, and the order-4 polynomial
        through them, carried over a step several times their spread, has weights summing to 46-1134 step
        lengths (constant steps: 6.7): the latent came out with std 1e3 instead of 1. The lowered step stays
        consistent (order >= 1; where every step outgrows its history the run is the DDIM inversion); as the
        steps grow more gently (more steps) the full order returns."""
        if not increasing or self.inversion_step_ratio is None:
            return k
        h = abs(u[i + 1] - u[i])
        while k > 1 and h > self.inversion_step_ratio * abs(u[i] - u[i - k + 1]) / (k - 1):
            k -= 1
        return k

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The grid's points, per-step orders and slope weights (see `Solver.plan`)."""
        if not field.has_schedule:
            return self.plan_plain(field, t)
        pts, lam, orders = self.grid_lambdas(field, t, singular_end=self.singular_end)
        s = [p.s for p in pts]
        n = len(orders)
        increasing = self.check_direction(t)
        data = []
        for i, k in enumerate(orders):
            p, q = pts[i], pts[i + 1]
            k = self.extrapolation_order(s, i, k, increasing)
            if k == 1:
                update = ddim_coefficients(p, q)
            else:
                c = self.weights([s[i - j] for j in range(k)], s[i + 1], k)
                update = (q.alpha / p.alpha,) + tuple(q.alpha * cj for cj in c)
            keep = not (i == n - 1 and k == 1) and self.solver_order > 1
            data.append(SlopeStep(update, (1.0 / p.sigma, -p.alpha / p.sigma), keep, order=k))
        return self.make_plan(t, pts, data)

    def plan_plain(self, field: Field, t: torch.Tensor) -> Plan:
        """Adams-Bashforth on dx/dt = f(x, t) in the field's own time t (no noise schedule, no EDM frame).

        x_{i+1} = x_i + sum_j c_j f_{i-j}, the weights c_j being this solver's `weights` with t in place of s (the
        rules are polynomial quadrature in whatever variable they are given). Warm start and `lower_order_final`
        as on a Gaussian field; no step is singular (t = 0 is an ordinary point of a plain field), so a step
        into t = 0 keeps its order. AFS has no meaning without a Gaussian path and is refused."""
        if self.plain_order is None:
            field.require_schedule(self.name)
        if self.afs:
            raise InvalidArgument(
                f"solver {self.name!r}: afs=True estimates the first data prediction from a Gaussian path "
                "(x0_hat = c x at pure noise); a plain velocity field (schedule=None) has none; use afs=False")
        pts = self.grid_points(field, t)
        increasing = self.check_direction(t, field)
        tv = [float(v) for v in t]
        orders = step_orders([0.0] * len(tv), self.solver_order, self.lower_order_final, False, False, increasing)
        n = len(orders)
        data = []
        for i, k in enumerate(orders):
            k = self.extrapolation_order(tv, i, k, increasing)
            c = self.weights([tv[i - j] for j in range(k)], tv[i + 1], k)
            keep = not (i == n - 1) and self.solver_order > 1
            data.append(PlainABStep(tuple(float(v) for v in c), keep, order=k))
        return Plan(t=t, points=tuple(pts), coeffs=tuple(data), nfe=n)

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: SlopeStep):
        """One Adams-Bashforth step on the past slopes (see `Solver.step`)."""
        if isinstance(coeffs, PlainABStep):
            v = ev.velocity(x, t0)
            hist = (v, *state)
            x_next = lincomb((1.0, *coeffs.weights), (x, *hist[: len(coeffs.weights)]))
            return x_next, None, (hist[: self.solver_order - 1] if coeffs.keep else state)
        m = self.data_prediction(ev, x, t0, coeffs)
        d = lincomb(coeffs.slope, (x, m)) if coeffs.keep_slope else None
        if coeffs.order == 1:
            x_next = lincomb(coeffs.update, (x, m))
        else:
            x_next = lincomb(coeffs.update, (x, d, *state[: len(coeffs.update) - 2]))
        return x_next, None, ((d, *state)[: self.solver_order - 1] if d is not None else state)
