"""DPM-Solver family (Lu et al. 2022a/b): ++(2M) and ++(3M) multistep in data prediction, singlestep DPM-Solver-2/-3
in noise prediction (Alg. 1-2) and DPM-Solver++(2S) in data prediction.

All coefficients are float64 host numbers from plan(); a step is a few lincombs. Steps into zero noise
(lambda = +inf) are first order (DDIM): the log-SNR formulas are undefined there. Steps out of pure noise
(lambda = -inf, rectified flow at t = 1) are first order too (see DPMSolverSinglestep for the singlestep case).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import check_choice
from ..field import EvalPoint, VectorField
from ..kernels import lincomb
from .base import Plan, Solver, register
from .euler import ddim_coefficients
from .multistep import MultistepSolver, check_order, lambda_of


@dataclass(frozen=True)
class MultistepCoefficients:
    """x' = a x + sum_k b[k] x0_hat_{i-k}: the history is newest first."""

    a: float
    b: tuple[float, ...]




# ------------------------------------------------------------------------------------------------
# DPM-Solver++(3M): multistep, data prediction
# ------------------------------------------------------------------------------------------------
def dpmpp_multistep_coefficients(p: EvalPoint, q: EvalPoint, lams: tuple[float, ...], order: int,
                                 third_order: str = "taylor") -> MultistepCoefficients:
    """x' = a x + sum_k b_k m_k (m_0 newest) for DPM-Solver++ multistep orders 1-3; lams = (lam_q, lam_0, lam_1, lam_2).

    With D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 m''/2, the Taylor term of the exact integral is -2 alpha' phi3 D2.
    dpm_solver_pytorch, diffusers and k-diffusion use -alpha' phi3 D2 (third_order='reference'), which halves
    the second-derivative term: its local error is O(h^3), so that variant is of global order 2.
    """
    a, c = ddim_coefficients(p, q)
    if order == 1:
        return MultistepCoefficients(a, (c,))
    lam_t, lam0, lam1 = lams[0], lams[1], lams[2]
    h = lam_t - lam0
    phi1 = math.expm1(-h)                  # c = -alpha' phi1
    al = q.alpha
    r0 = (lam0 - lam1) / h
    if order == 2:
        w = 0.5 / r0
        return MultistepCoefficients(a, (c * (1 + w), -c * w))
    lam2 = lams[3]
    r1 = (lam1 - lam2) / h
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + r0/(r0+r1)(D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1)
    d10 = np.array([1.0, -1.0, 0.0]) / r0
    d11 = np.array([0.0, 1.0, -1.0]) / r1
    D1 = d10 + r0 / (r0 + r1) * (d10 - d11)
    D2 = (d10 - d11) / (r0 + r1)
    w2 = 2.0 if third_order == "taylor" else 1.0
    b = -al * phi1 * np.array([1.0, 0.0, 0.0]) + al * phi2 * D1 - w2 * al * phi3 * D2
    return MultistepCoefficients(a, tuple(float(v) for v in b))


THIRD_ORDER = ("taylor", "reference")


class DPMSolverPP3M(MultistepSolver):
    """DPM-Solver++(3M) (Lu et al. 2022b; dpm_solver_pytorch `multistep_dpm_solver_third_update`), data prediction.

    third_order='taylor' (default) weights the second difference D2 by the exact Taylor coefficient (order 3);
    third_order='reference' reproduces dpm_solver_pytorch / diffusers / k-diffusion (order 2, see
    `dpmpp_multistep_coefficients`).
    """

    name = "dpmpp_3m"
    citation = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), multistep order 3"

    def __init__(self, order: int = 3, lower_order_final: bool | str = "auto", afs: bool = False,
                 third_order: str = "taylor"):
        check_choice("third_order", third_order, THIRD_ORDER)
        self.third_order = third_order
        self.set_options(order, (1, 2, 3), lower_order_final, afs)
        if order == 3 and third_order == "reference":
            self.order = 2

    def plan(self, field: VectorField, t: torch.Tensor) -> Plan:
        pts, lam, orders = self.grid_lambdas(field, t)
        data = []
        for i, k in enumerate(orders):
            lams = (lam[i + 1],) + tuple(lam[i - j] for j in range(k))
            data.append(dpmpp_multistep_coefficients(pts[i], pts[i + 1], lams, k, self.third_order))
        return self.make_plan(t, pts, data, orders)

    def step(self, ev, x: torch.Tensor, i: int, plan: Plan, state: Any):
        co: MultistepCoefficients = plan.steps_data[i]
        history = (self.data_prediction(ev, x, i, plan), *state)
        x_next = lincomb((co.a, *co.b), (x, *history[: len(co.b)]))
        return x_next, history[: self.solver_order - 1]


class DPMSolverPP2M(DPMSolverPP3M):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): D = (1 + 1/2r) x0_n - (1/2r) x0_{n-1},
    x' = (sigma'/sigma) x + alpha'(1 - e^{-h}) D; the 3M machinery at order 2."""

    name = "dpmpp_2m"
    citation = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), Alg. 2"

    def __init__(self, lower_order_final: bool | str = "auto", afs: bool = False):
        super().__init__(order=2, lower_order_final=lower_order_final, afs=afs)


register("dpmpp_2m", DPMSolverPP2M, "DPM-Solver++(2M), multistep order 2")


# ------------------------------------------------------------------------------------------------
# Singlestep DPM-Solver-2/-3 (noise prediction) and DPM-Solver++(2S) (data prediction)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SinglestepCoefficients:
    """Stage k input = lincomb(stage_coeffs[k], (x, m_0..m_k)); x' = lincomb(final, (x, m_0..m_K))."""

    stage_points: tuple[EvalPoint, ...]
    stage_coeffs: tuple[tuple[float, ...], ...]
    final: tuple[float, ...]


def _t_of_lambda(field: VectorField, lam: float) -> float:
    return float(field.schedule.t_from_lambda(torch.tensor(lam, dtype=torch.float64)))


class DPMSolverSinglestep(Solver):
    """Singlestep DPM-Solver-2/-3 (Lu et al. 2022, Alg. 1 r1=1/2, Alg. 2 r1=1/3 r2=2/3) and DPM-Solver++(2S).

    Intermediate points are placed in log-SNR. A step into zero noise is a first-order (DDIM) step, one model
    call: the log-SNR formulas are undefined there. A step out of pure noise (lambda = -inf, rectified flow at
    t = 1) spends its `order` model calls on that many DDIM sub-steps uniform in t, so the call count never
    depends on where the grid starts; that step is first order.
    """

    calls_per_step = 2
    citation = "Lu et al. 2022, DPM-Solver (arXiv:2206.00927), Alg. 1-2; DPM-Solver++ (arXiv:2211.01095), Alg. 1"

    def __init__(self, order: int = 2, prediction: str = "noise"):
        check_choice("prediction", prediction, ("noise", "data"))
        self.order = check_order(order, (2, 3) if prediction == "noise" else (2,))
        self.prediction = prediction
        self.calls_per_step = self.order
        self.name = ("dpm_solver_%d" % self.order) if prediction == "noise" else "dpmpp_2s"

    def model_calls(self, steps: int, field: VectorField, ends_at_zero: bool) -> int:
        return steps * self.order - ((self.order - 1) if ends_at_zero else 0)

    def plan(self, field: VectorField, t: torch.Tensor) -> Plan:
        self.check_field(field)
        pts = self.grid_points(field, t)
        data = []
        nfe = 0
        for i in range(len(pts) - 1):
            co = self._step_coefficients(field, pts[i], pts[i + 1])
            data.append(co)
            nfe += 1 + len(co.stage_points)
        return Plan(t=t, points=pts, nfe=nfe, steps_data=tuple(data))

    def _step_coefficients(self, field: VectorField, p: EvalPoint, q: EvalPoint) -> SinglestepCoefficients:
        K = self.order
        ls, lt = lambda_of(p), lambda_of(q)
        if lt == math.inf:
            return SinglestepCoefficients((), (), ddim_coefficients(p, q))
        X = np.eye(K + 1)[0]
        M = [np.eye(K + 1)[1 + j] for j in range(K)]
        if ls == -math.inf:
            taus = [p.t + (q.t - p.t) * j / K for j in range(K + 1)]
            sub = [p] + [field.at(v) for v in taus[1:-1]] + [q]
            u = X
            stages = []
            for j in range(K):
                a, b = ddim_coefficients(sub[j], sub[j + 1])
                u = a * u + b * M[j]
                stages.append(u)
            return self._pack(sub[1:-1], stages[:-1], stages[-1])
        h = lt - ls
        rs = (0.5,) if K == 2 else (1.0 / 3.0, 2.0 / 3.0)
        mids = [field.at(_t_of_lambda(field, ls + r * h)) for r in rs]
        if self.prediction == "data":
            r = rs[0]
            p1 = mids[0]
            u1 = (p1.sigma / p.sigma) * X - p1.alpha * math.expm1(-r * h) * M[0]
            D = (1 - 0.5 / r) * M[0] + (0.5 / r) * M[1]
            xt = (q.sigma / p.sigma) * X - q.alpha * math.expm1(-h) * D
            return self._pack(mids, [u1], xt)
        eps0 = (X - p.alpha * M[0]) / p.sigma
        r1 = rs[0]
        p1 = mids[0]
        u1 = (p1.alpha / p.alpha) * X - p1.sigma * math.expm1(r1 * h) * eps0
        eps1 = (u1 - p1.alpha * M[1]) / p1.sigma
        base = (q.alpha / p.alpha) * X - q.sigma * math.expm1(h) * eps0
        if K == 2:
            xt = base - q.sigma / (2 * r1) * math.expm1(h) * (eps1 - eps0)
            return self._pack(mids, [u1], xt)
        r2 = rs[1]
        p2 = mids[1]
        D1 = eps1 - eps0
        u2 = (p2.alpha / p.alpha) * X - p2.sigma * math.expm1(r2 * h) * eps0 \
            - p2.sigma * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * D1
        eps2 = (u2 - p2.alpha * M[2]) / p2.sigma
        xt = base - (q.sigma / r2) * (math.expm1(h) / h - 1) * (eps2 - eps0)
        return self._pack(mids, [u1, u2], xt)

    @staticmethod
    def _pack(points, stages, final) -> SinglestepCoefficients:
        # stage k may only use x and m_0..m_k: trim the (zero) tail so lincomb gets matching lengths
        sc = tuple(tuple(float(v) for v in u[: k + 2]) for k, u in enumerate(stages))
        for k, u in enumerate(stages):
            if np.any(u[k + 2:] != 0):
                raise AssertionError("stage uses a model output it has not computed yet")
        return SinglestepCoefficients(tuple(points), sc, tuple(float(v) for v in final[: len(points) + 2]))

    def step(self, ev, x: torch.Tensor, i: int, plan: Plan, state: Any):
        co: SinglestepCoefficients = plan.steps_data[i]
        ms = [ev.denoise(x, plan.points[i])]
        for p, c in zip(co.stage_points, co.stage_coeffs):
            ms.append(ev.denoise(lincomb(c, (x, *ms)), p))
        return lincomb(co.final, (x, *ms)), state


register("dpmpp_3m", DPMSolverPP3M, "DPM-Solver++(3M), multistep order 3 (order=1..3)")
register("dpm_solver_2", DPMSolverSinglestep, "DPM-Solver-2, singlestep noise prediction, order 2, 2 calls/step",
         order=2, prediction="noise")
register("dpm_solver_3", DPMSolverSinglestep, "DPM-Solver-3, singlestep noise prediction, order 3, 3 calls/step",
         order=3, prediction="noise")
register("dpmpp_2s", DPMSolverSinglestep, "DPM-Solver++(2S), singlestep data prediction, order 2, 2 calls/step",
         order=2, prediction="data")
