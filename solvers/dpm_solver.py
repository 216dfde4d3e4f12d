"""DPM-Solver++ multistep in data-prediction form (Lu et al. 2022b, "DPM-Solver++", Alg. 2)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidArgument
from ..field import EvalPoint, VectorField
from ..kernels import lincomb
from .base import Plan, Solver, register
from .euler import ddim_coefficients


def lambda_of(p: EvalPoint) -> float:
    """log(alpha / sigma), +inf at zero noise and -inf at pure noise."""
    if p.sigma == 0:
        return math.inf
    if p.alpha == 0:
        return -math.inf
    return math.log(p.alpha) - math.log(p.sigma)


def resolve_lower_order_final(option: bool | str, steps: int, ends_at_zero: bool) -> bool:
    """'auto' lowers the order of the final step when it reaches zero noise or the run is short (diffusers' rule)."""
    if option == "auto":
        return ends_at_zero or steps < 15
    if isinstance(option, bool):
        return option
    raise InvalidArgument(f"lower_order_final={option!r}; allowed values: True, False, 'auto'")


@dataclass(frozen=True)
class MultistepCoefficients:
    """x' = a x + sum_k b[k] x0_hat_{i-k}: the history is newest first."""

    a: float
    b: tuple[float, ...]


class DPMSolverPP2M(Solver):
    """DPM-Solver++(2M): D = (1 + 1/2r) x0_n - (1/2r) x0_{n-1}, x' = (sigma'/sigma) x + alpha'(1 - e^{-h}) D."""

    name = "dpmpp_2m"
    order = 2
    calls_per_step = 1
    citation = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), Alg. 2"

    def __init__(self, lower_order_final: bool | str = "auto"):
        resolve_lower_order_final(lower_order_final, 1, False)
        self.lower_order_final = lower_order_final

    def plan(self, field: VectorField, t: torch.Tensor) -> Plan:
        self.check_field(field)
        pts = self.grid_points(field, t)
        n = len(pts) - 1
        lower_final = resolve_lower_order_final(self.lower_order_final, n, float(t[-1]) == 0.0)
        lam = [lambda_of(p) for p in pts]
        data = []
        for i in range(n):
            a, c = ddim_coefficients(pts[i], pts[i + 1])
            first_order = i == 0 or (i == n - 1 and lower_final) or not math.isfinite(lam[i + 1] - lam[i])
            if first_order:
                data.append(MultistepCoefficients(a, (c,)))
                continue
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])   # h_prev / h; inf after a start at pure noise
            w = 0.5 / r
            data.append(MultistepCoefficients(a, (c * (1 + w), -c * w)))
        return Plan(t=t, points=pts, nfe=n, steps_data=tuple(data))

    def step(self, ev, x: torch.Tensor, i: int, plan: Plan, state: Any):
        co: MultistepCoefficients = plan.steps_data[i]
        x0 = ev.denoise(x, plan.points[i])
        history = (x0, *state)[: len(co.b)]
        x_next = lincomb((co.a, *co.b), (x, *history))
        return x_next, (x0,)


register("dpmpp_2m", DPMSolverPP2M, "DPM-Solver++(2M), multistep order 2")
