"""Euler = DDIM (eta = 0) = first-order DPM-Solver(++): exact in the linear part of the probability-flow ODE."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.field import EvalPoint, Field
from diffsolve.kernels import lincomb
from diffsolve.solvers.base import Solver, StepCoefficients, register


def ddim_coefficients(p, q) -> tuple[float, float]:
    """x' = a x + b x0_hat from point p to q: a = sigma'/sigma, b = alpha' - alpha sigma'/sigma (DDIM, Song et al.
    2021).

    Written without lambda so that it stays finite where alpha = 0 (flows at pure noise) and where sigma' = 0.
    """
    a = q.sigma / p.sigma
    return a, q.alpha - p.alpha * a


@dataclass(frozen=True)
class EulerStep(StepCoefficients):
    """x' = a x + b D (D the data prediction), or x' = x + b v on a plain velocity field."""

    a: float
    b: float
    velocity: bool


class Euler(Solver):
    """Euler / DDIM: x' = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) x0_hat; plain fields: x' = x + dt v.

    Papers: Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM, eq. 12); Karras et al. 2022,
    "Elucidating the Design Space of Diffusion-Based Generative Models" (Alg. 1 without the correction).
    Registered as "euler" and "ddim"; it takes no options.
    """

    name = "euler"
    order = 1
    calls_per_step = 1
    needs_schedule = False
    citation = "Song et al. 2021 (DDIM, eq. 12); Karras et al. 2022 (Alg. 1 without correction)"

    def coefficients(self, field: Field, t0: EvalPoint, t1: EvalPoint) -> EulerStep:
        """The DDIM weights of x and the data prediction (plain fields: of x and dt v) for one step."""
        if field.has_schedule:
            return EulerStep(*ddim_coefficients(t0, t1), velocity=False)
        return EulerStep(1.0, t1.t - t0.t, velocity=True)

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: EulerStep):
        """One Euler / DDIM step, one model call (see `Solver.step`)."""
        d = ev.velocity(x, t0) if coeffs.velocity else ev.denoise(x, t0)
        return lincomb((coeffs.a, coeffs.b), (x, d)), None, state


register("euler", Euler, "Euler / DDIM (eta=0), order 1")
register("ddim", Euler, "alias of euler: DDIM with eta=0")
