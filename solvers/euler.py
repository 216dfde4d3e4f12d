"""Euler = DDIM (eta = 0) = first-order DPM-Solver(++): exact in the linear part of the probability-flow ODE."""
from __future__ import annotations

from typing import Any

import torch

from ..field import VectorField
from ..kernels import lincomb
from .base import Plan, Solver, register


def ddim_coefficients(p, q) -> tuple[float, float]:
    """x' = a x + b x0_hat from point p to q: a = sigma'/sigma, b = alpha' - alpha sigma'/sigma (DDIM, Song et al. 2021).

    Written without lambda so that it stays finite where alpha = 0 (flows at pure noise) and where sigma' = 0.
    """
    a = q.sigma / p.sigma
    return a, q.alpha - p.alpha * a


class Euler(Solver):
    """Euler / DDIM: x' = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) x0_hat; plain fields: x' = x + dt v."""

    name = "euler"
    order = 1
    calls_per_step = 1
    needs_schedule = False
    citation = "Song et al. 2021 (DDIM, eq. 12); Karras et al. 2022 (Alg. 1 without correction)"

    def plan(self, field: VectorField, t: torch.Tensor) -> Plan:
        pts = self.grid_points(field, t)
        if field.has_schedule:
            data = tuple(ddim_coefficients(pts[i], pts[i + 1]) for i in range(len(pts) - 1))
        else:
            data = tuple((1.0, pts[i + 1].t - pts[i].t) for i in range(len(pts) - 1))
        return Plan(t=t, points=pts, nfe=self.model_calls(len(pts) - 1, field, True), steps_data=data,
                    extra={"schedule": field.has_schedule})

    def step(self, ev, x: torch.Tensor, i: int, plan: Plan, state: Any):
        a, b = plan.steps_data[i]
        p = plan.points[i]
        d = ev.denoise(x, p) if plan.extra["schedule"] else ev.velocity(x, p)
        return lincomb((a, b), (x, d)), state


register("euler", Euler, "Euler / DDIM (eta=0), order 1")
register("ddim", Euler, "alias of euler: DDIM with eta=0")
