"""Samplers for few-step model families: consistency models (multistep, with TCD's gamma) and shortcut models.

Consistency sampling (Song et al. 2023, Alg. 1) in the EDM frame y = x / alpha, s = sigma / alpha: the model's
data prediction D = f(x, t) is a sample at the grid's last level s_e (the consistency function's boundary,
epsilon), and the next level s' is reached by adding noise sqrt(s'^2 - s_e^2) z, so that an exact consistency
function gives exact marginals after every step. `gamma` (Zheng et al. 2024, TCD) first moves deterministically
(DDIM, along the line from D at s_e through y at s) to the intermediate level s_g at time
t_g = t_e + (1 - gamma)(t' - t_e), then adds the noise that lifts s_g to s'; gamma = 1 is Alg. 1, gamma = 0 is
DDIM with the model's predictions.

Shortcut models (Frans et al. 2024) take the step size d as an input; the sampler is Euler that tells the model
the step it is about to take (`EvalPoint.step`, passed on by the field), on K uniform steps, K a power of two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from diffsolve.errors import InvalidArgument, check_float
from diffsolve.field import EvalPoint, Field
from diffsolve.grids import NOT_INVERTIBLE
from diffsolve.kernels import lincomb
from diffsolve.solvers.base import Plan, StepCoefficients, register
from diffsolve.solvers.euler import Euler, EulerStep
from diffsolve.solvers.sde import StochasticSolver


@dataclass(frozen=True)
class ConsistencyStep(StepCoefficients):
    """x' = a x + b D + c z (c = 0 on the last step, and everywhere for gamma = 0)."""

    a: float
    b: float
    c: float


def consistency_coefficients(p: EvalPoint, q: EvalPoint, mid: EvalPoint, end: EvalPoint,
                             s_noise: float = 1.0) -> ConsistencyStep:
    """Coefficients of one consistency step from p to q via the intermediate level `mid`, boundary `end`.

    y_mid = D + r (y - D) with r = (s_mid - s_e) / (s - s_e), then y' = y_mid + sqrt(s'^2 - s_mid^2) z, x' = alpha' y'.
    r / alpha is written as (s_mid - s_e) / (sigma - alpha s_e) so that it stays finite at pure noise (alpha = 0).
    """
    s_e, s_m, s_q = end.s, mid.s, q.s
    denom = p.sigma - p.alpha * s_e
    if denom <= 0:
        raise InvalidArgument(f"a consistency step must start above the boundary level s={s_e:.6g} (at s={p.s:.6g})")
    r_over_alpha = (s_m - s_e) / denom
    a = q.alpha * r_over_alpha
    b = q.alpha * (1.0 - r_over_alpha * p.alpha)
    lift = s_q * s_q - s_m * s_m
    c = q.alpha * math.sqrt(lift) * s_noise if lift > 0 else 0.0
    return ConsistencyStep(a, b, c)


class Consistency(StochasticSolver):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1), with TCD's gamma (Zheng et al. 2024).

    Papers: Song et al. 2023, "Consistency Models"; Zheng et al. 2024, "Trajectory Consistency Distillation"
    (TCD).

    Args:
        gamma: in [0, 1]: 1 re-noises fully (Alg. 1, registered as "consistency"), 0 is deterministic DDIM; TCD's
            default is 0.3 ("tcd").
        s_noise: a scale on the added noise (default 1).

    Raises:
        InvalidArgument: gamma outside [0, 1] or a negative s_noise.
    """

    name = "consistency"
    model_family = "consistency"
    order = 1
    calls_per_step = 1
    citation = "Song et al. 2023 (Consistency Models, Alg. 1); Zheng et al. 2024 (TCD, gamma)"

    def __init__(self, gamma: float = 1.0, s_noise: float = 1.0):
        self.gamma = check_float("gamma", gamma, nonnegative=True)
        if self.gamma > 1.0:
            raise InvalidArgument(f"gamma={gamma!r}: must be in [0, 1] (1: full re-noising, Alg. 1; 0: DDIM)")
        self.s_noise = check_float("s_noise", s_noise, nonnegative=True)
        self.deterministic = self.gamma == 0.0

    def inversion_refusal(self) -> str | None:
        """Always a reason: a consistency model cannot be run from data to noise."""
        if self.gamma > 0:
            return NOT_INVERTIBLE
        return ("a consistency model maps a point to its trajectory's origin, which cannot be run from data to "
                "noise; invert with an ODE solver")

    def grid_for(self, field: Field) -> str:
        """"karras_index", which ends at the consistency function's boundary; None without a finite sigma_max."""
        # The consistency function's boundary is the schedule's smallest level: end the grid there, not at 0.
        return "karras_index" if field.has_schedule and math.isfinite(field.schedule.sigma_max) else None

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """Each step's weights of x, the model's output and fresh noise (see `Solver.plan`)."""
        self.check_field(field)
        pts = self.grid_points(field, t)
        end = pts[-1]
        coeffs = []
        for p, q in zip(pts[:-1], pts[1:]):
            t_mid = float(end.t) + (1.0 - self.gamma) * (float(q.t) - float(end.t))
            mid = q if t_mid == float(q.t) else field.at(t_mid)
            coeffs.append(consistency_coefficients(p, q, mid, end, self.s_noise))
        return Plan(t=t, points=pts, coeffs=tuple(coeffs), nfe=self.count_calls(tuple(coeffs), field, pts))

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: ConsistencyStep):
        """Jump to the trajectory's origin, then re-noise to the next level (see `Solver.step`)."""
        d = ev.denoise(x, t0)
        if coeffs.c == 0.0:
            return lincomb((coeffs.a, coeffs.b), (x, d)), None, state
        return lincomb((coeffs.a, coeffs.b, coeffs.c), (x, d, ev.noise(0))), None, state

    def options(self) -> dict:
        """The options this solver was built with (gamma, s_noise)."""
        return {"gamma": self.gamma, "s_noise": self.s_noise}


@dataclass(frozen=True)
class ShortcutStep(EulerStep):
    """Euler's coefficients and the point at which the model is told the step size d."""

    at: EvalPoint = None


def _power_of_two(k: int) -> bool:
    return k >= 1 and (k & (k - 1)) == 0


class Shortcut(Euler):
    """Shortcut-model sampling (Frans et al. 2024): K uniform Euler steps, the model told d = 1/K.

    Paper: Frans et al. 2024, "One Step Diffusion via Shortcut Models". Steps must be a power of two on a
    uniform grid; it takes no options, and a d= model keyword is refused (the solver sets it).
    """

    name = "shortcut"
    model_family = "shortcut"
    order = 1
    needs_schedule = False
    citation = "Frans et al. 2024 (One Step Diffusion via Shortcut Models)"

    def fit_steps(self, steps: int) -> int:
        """The largest power of two at most `steps`."""
        return 1 << (steps.bit_length() - 1)

    def grid_for(self, field: Field) -> str:
        """The uniform grid (time_uniform)."""
        return "time_uniform"

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """Euler steps with the step size d each model call is told.

        Raises:
            InvalidArgument: a step count that is not a power of two, or a grid that is not uniform.
        """
        steps = t.numel() - 1
        if not _power_of_two(steps):
            raise InvalidArgument(f"steps={steps}: a shortcut model takes K uniform steps with K a power of two "
                                  "(1, 2, 4, 8, ...)")
        if steps > 1:
            widths = (t[1:] - t[:-1]).abs()
            if float((widths - widths[0]).abs().max()) > 1e-9 * max(float(widths[0]), 1e-300):
                raise InvalidArgument("a shortcut model takes uniform steps: use grid='time_uniform' (the default "
                                      "for plain velocity fields), not a grid with uneven steps")
        return super().plan(field, t)

    def coefficients(self, field: Field, t0: EvalPoint, t1: EvalPoint) -> ShortcutStep:
        """Euler's weights and the point at which the model is told d."""
        base = super().coefficients(field, t0, t1)
        d = abs(t1.model_time - t0.model_time)
        return ShortcutStep(base.a, base.b, base.velocity, at=replace(t0, step=d))

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: ShortcutStep):
        """One Euler step with the model told the step size (see `Solver.step`)."""
        d = ev.velocity(x, coeffs.at) if coeffs.velocity else ev.denoise(x, coeffs.at)
        return lincomb((coeffs.a, coeffs.b), (x, d)), None, state

    def inversion_refusal(self) -> str | None:
        """Always a reason: shortcut models sample only."""
        return "a shortcut model's step size is trained for sampling (noise to data) only"


register("consistency", Consistency, "multistep consistency sampling (Alg. 1; gamma < 1: TCD)")
register("tcd", Consistency, "alias of consistency with TCD's default gamma=0.3", defaults={"gamma": 0.3})
register("shortcut", Shortcut, "shortcut-model sampling: K = 2^n uniform steps, d = 1/K passed to the model")
