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

from diffsolve.errors import check_choice
from diffsolve.field import EvalPoint, Field
from diffsolve.kernels import lincomb
from diffsolve.solvers.base import Plan, Solver, StepCoefficients, register
from diffsolve.solvers.euler import ddim_coefficients
from diffsolve.solvers.multistep import MultistepSolver, MultistepStep, check_order, lambda_of


@dataclass(frozen=True)
class MultistepCoefficients(MultistepStep):
    """x' = a x + sum_k b[k] x0_hat_{i-k}: the history is newest first."""

    a: float
    b: tuple[float, ...]


def history_differences(r0: float, r1: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows on (m0, m1, m2) of the DPM-Solver++(3M) differences: D1 ~ h m' and D2 ~ h^2 m''/2, newest first.

    D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1, D1 = D1_0 + r0/(r0+r1)(D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1).
    """
    d10 = np.array([1.0, -1.0, 0.0]) / r0
    d11 = np.array([0.0, 1.0, -1.0]) / r1
    return d10 + r0 / (r0 + r1) * (d10 - d11), (d10 - d11) / (r0 + r1)


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
        return MultistepCoefficients(a, (c,), order=1)
    lam_t, lam0, lam1 = lams[0], lams[1], lams[2]
    h = lam_t - lam0
    r0 = (lam0 - lam1) / h
    if order == 2:
        # host floats here, or per-sample tensors where a learned correction places the step (corrections.amed)
        w = 0.5 / r0
        return MultistepCoefficients(a, (c * (1 + w), -c * w), order=2)
    phi1 = math.expm1(-h)                  # c = -alpha' phi1
    al = q.alpha
    lam2 = lams[3]
    r1 = (lam1 - lam2) / h
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    D1, D2 = history_differences(r0, r1)
    w2 = 2.0 if third_order == "taylor" else 1.0
    b = -al * phi1 * np.array([1.0, 0.0, 0.0]) + al * phi2 * D1 - w2 * al * phi3 * D2
    return MultistepCoefficients(a, tuple(float(v) for v in b), order=3)


THIRD_ORDER = ("taylor", "reference")


class DPMSolverPP3M(MultistepSolver):
    """DPM-Solver++(3M) (Lu et al. 2022b; dpm_solver_pytorch `multistep_dpm_solver_third_update`), data prediction.

    third_order='taylor' (default) weights the second difference D2 by the exact Taylor coefficient (order 3);
    third_order='reference' reproduces dpm_solver_pytorch / diffusers / k-diffusion (order 2, see
    `dpmpp_multistep_coefficients`).

    Paper: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models".

    Args:
        order: the highest step order, 1, 2 or 3 (default 3).
        lower_order_final: True caps step i at order n - i near the end; "auto" is diffusers' DPMSolverMultistep
            rule (last step first order when it reaches zero noise or n < 15); False keeps the order. Not applied
            to an inversion.
        afs: the analytical first step (diff-sampler AFS): the first step's data prediction estimated from the
            almost pure-noise state, saving one model call (sampling only).
        third_order: "taylor" (order 3) or "reference" (the reference implementations' rule, order 2).

    Raises:
        InvalidArgument: an order, lower_order_final or third_order outside the allowed values.
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

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The grid's points, per-step orders and multistep weights (see `Solver.plan`)."""
        pts, lam, orders = self.grid_lambdas(field, t)
        data = []
        for i, k in enumerate(orders):
            lams = (lam[i + 1],) + tuple(lam[i - j] for j in range(k))
            data.append(dpmpp_multistep_coefficients(pts[i], pts[i + 1], lams, k, self.third_order))
        return self.make_plan(t, pts, data)

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: MultistepCoefficients):
        """One multistep update from the history of data predictions (see `Solver.step`)."""
        history = (self.data_prediction(ev, x, t0, coeffs), *state)
        x_next = lincomb((coeffs.a, *coeffs.b), (x, *history[: len(coeffs.b)]))
        return x_next, None, history[: self.solver_order - 1]


class DPMSolverPP2M(DPMSolverPP3M):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): D = (1 + 1/2r) x0_n - (1/2r) x0_{n-1},
    x' = (sigma'/sigma) x + alpha'(1 - e^{-h}) D; the 3M machinery at order 2.

    Paper: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models".

    Args:
        lower_order_final: True caps step i at order n - i near the end; "auto" is diffusers' DPMSolverMultistep
            rule (last step first order when it reaches zero noise or n < 15); False keeps the order. Not applied
            to an inversion.
        afs: the analytical first step (diff-sampler AFS): the first step's data prediction estimated from the
            almost pure-noise state, saving one model call (sampling only).
    """

    name = "dpmpp_2m"
    citation = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), Alg. 2"

    def __init__(self, lower_order_final: bool | str = "auto", afs: bool = False):
        super().__init__(order=2, lower_order_final=lower_order_final, afs=afs)


register("dpmpp_2m", DPMSolverPP2M, "DPM-Solver++(2M), multistep order 2")


# ------------------------------------------------------------------------------------------------
# Singlestep DPM-Solver-2/-3 (noise prediction) and DPM-Solver++(2S) (data prediction)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SinglestepCoefficients(StepCoefficients):
    """Stage k input = lincomb(stage_coeffs[k], (x, m_0..m_k)); x' = lincomb(final, (x, m_0..m_K)).

    `error`: the embedded lower-order solution's difference, x' - x_low = lincomb(error, (x, m_0..)), for the
    adaptive controllers (None on fixed grids, where nobody reads it).
    """

    stage_points: tuple[EvalPoint, ...]
    stage_coeffs: tuple[tuple[float, ...], ...]
    final: tuple[float, ...]
    error: tuple[float, ...] | None = None


@dataclass(frozen=True)
class StartEval:
    """The data prediction at a step's start, kept for a retry of the same step from the same state."""

    x: torch.Tensor
    m0: torch.Tensor


def _t_of_lambda(field: Field, lam: float) -> float:
    return float(field.schedule.t_from_lambda(torch.tensor(lam, dtype=torch.float64)))


INTERMEDIATE = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


class DPMSolverSinglestep(Solver):
    """Singlestep DPM-Solver-2/-3 (Lu et al. 2022, Alg. 1 r1=1/2, Alg. 2 r1=1/3 r2=2/3) and DPM-Solver++(2S)/(3S).

    Intermediate points are placed in log-SNR. A step into zero noise is a first-order (DDIM) step, one model
    call: the log-SNR formulas are undefined there. A step out of pure noise (lambda = -inf, rectified flow at
    t = 1) spends its `order` model calls on that many DDIM sub-steps uniform in t, so the call count never
    depends on where the grid starts; that step is first order. With `embedded=True` every step also carries
    the difference to the embedded lower-order solution (DPM-Solver-12/23 error control, solvers.adaptive).
    On an increasing grid (inversion) the same formulas run with h < 0; a step into pure noise is the sub-step
    rule above, mirrored.

    Papers: Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
    10 Steps"; Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models".

    Args:
        order: 2 or 3: the step's order and its model calls (default 2).
        prediction: "noise" (DPM-Solver, registered as dpm_solver_2/3) or "data" (DPM-Solver++, dpmpp_2s/3s).
        embedded: also compute the embedded lower-order solution's difference (for the adaptive controllers).
    """

    calls_per_step = 2
    citation = "Lu et al. 2022, DPM-Solver (arXiv:2206.00927), Alg. 1-2; DPM-Solver++ (arXiv:2211.01095), Alg. 1"

    def __init__(self, order: int = 2, prediction: str = "noise", embedded: bool = False):
        check_choice("prediction", prediction, ("noise", "data"))
        self.order = check_order(order, (2, 3))
        self.prediction = prediction
        self.embedded = bool(embedded)
        self.calls_per_step = self.order
        self.name = ("dpm_solver_%d" % self.order) if prediction == "noise" else "dpmpp_%ds" % self.order

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """Model evaluations of `steps` steps: `order` per step."""
        return steps * self.order - ((self.order - 1) if ends_at_zero else 0)

    def count_calls(self, coeffs: tuple, field: Field, pts) -> int:
        """The planned run's model evaluations (steps into zero noise take one call)."""
        return sum(1 + len(co.stage_points) for co in coeffs)

    def coefficients(self, field: Field, p: EvalPoint, q: EvalPoint) -> SinglestepCoefficients:
        """The stage and final update weights of one step from `t0` to `t1` (see Solver)."""
        K = self.order
        ls, lt = lambda_of(p), lambda_of(q)
        if lt == math.inf:
            return SinglestepCoefficients((), (), ddim_coefficients(p, q))
        X = np.eye(K + 1)[0]
        M = [np.eye(K + 1)[1 + j] for j in range(K)]
        if ls == -math.inf or lt == -math.inf:
            # Out of pure noise (sampling) or into it (inversion): K DDIM sub-steps uniform in t.
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
        rs = INTERMEDIATE[K]
        mids = [field.at(_t_of_lambda(field, ls + r * h)) for r in rs]
        if self.prediction == "data":
            return self._data_prediction(p, q, mids, rs, h, X, M)
        eps0 = (X - p.alpha * M[0]) / p.sigma
        r1 = rs[0]
        p1 = mids[0]
        u1 = (p1.alpha / p.alpha) * X - p1.sigma * math.expm1(r1 * h) * eps0
        eps1 = (u1 - p1.alpha * M[1]) / p1.sigma
        base = (q.alpha / p.alpha) * X - q.sigma * math.expm1(h) * eps0
        if K == 2:
            xt = base - q.sigma / (2 * r1) * math.expm1(h) * (eps1 - eps0)
            return self._pack(mids, [u1], xt, xt - base)
        r2 = rs[1]
        p2 = mids[1]
        D1 = eps1 - eps0
        u2 = (p2.alpha / p.alpha) * X - p2.sigma * math.expm1(r2 * h) * eps0 \
            - p2.sigma * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * D1
        eps2 = (u2 - p2.alpha * M[2]) / p2.sigma
        xt = base - (q.sigma / r2) * (math.expm1(h) / h - 1) * (eps2 - eps0)
        low = base - q.sigma / (2 * r1) * math.expm1(h) * (eps1 - eps0)
        return self._pack(mids, [u1, u2], xt, xt - low)

    def _data_prediction(self, p, q, mids, rs, h, X, M) -> SinglestepCoefficients:
        """DPM-Solver++(2S) / (3S) in data prediction (Lu et al. 2022b, Alg. 1; the 3S stage of Alg. 5's ++ form)."""
        phi1 = math.expm1(-h)
        r1, p1 = rs[0], mids[0]
        a_t = q.sigma / p.sigma
        u1 = (p1.sigma / p.sigma) * X - p1.alpha * math.expm1(-r1 * h) * M[0]
        w = (0.5 / r1) * q.alpha * phi1
        second = a_t * X + (-q.alpha * phi1 + w) * M[0] - w * M[1]          # 2S with intermediate r1
        if self.order == 2:
            first = a_t * X - q.alpha * phi1 * M[0]                           # DDIM
            return self._pack(mids, [u1], second, second - first)
        r2, p2 = rs[1], mids[1]
        phi_12 = math.expm1(-r2 * h)
        phi_22 = phi_12 / (r2 * h) + 1.0
        c22 = (r2 / r1) * p2.alpha * phi_22
        u2 = (p2.sigma / p.sigma) * X + (-p2.alpha * phi_12 - c22) * M[0] + c22 * M[1]
        c2 = (1.0 / r2) * q.alpha * (phi1 / h + 1.0)
        third = a_t * X + (-q.alpha * phi1 - c2) * M[0] + c2 * M[2]
        return self._pack(mids, [u1, u2], third, third - second)

    def _pack(self, points, stages, final, error=None) -> SinglestepCoefficients:
        # stage k may only use x and m_0..m_k: trim the (zero) tail so lincomb gets matching lengths
        sc = tuple(tuple(float(v) for v in u[: k + 2]) for k, u in enumerate(stages))
        for k, u in enumerate(stages):
            if np.any(u[k + 2:] != 0):
                raise AssertionError("stage uses a model output it has not computed yet")
        n = len(points) + 2
        err = tuple(float(v) for v in error[:n]) if (error is not None and self.embedded) else None
        return SinglestepCoefficients(tuple(points), sc, tuple(float(v) for v in final[:n]), err)

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: SinglestepCoefficients):
        """One singlestep update through the stages (see `Solver.step`); error: the embedded pair's."""
        if isinstance(state, StartEval) and state.x is x:
            m0 = state.m0                   # a retry of a rejected step: the start's prediction is known
        else:
            m0 = ev.denoise(x, t0)
        ms = [m0]
        for p, c in zip(coeffs.stage_points, coeffs.stage_coeffs):
            ms.append(ev.denoise(lincomb(c, (x, *ms)), p))
        x1 = lincomb(coeffs.final, (x, *ms))
        if coeffs.error is None:
            return x1, None, state
        return x1, lincomb(coeffs.error, (x, *ms)), StartEval(x, m0)


register("dpmpp_3m", DPMSolverPP3M, "DPM-Solver++(3M), multistep order 3 (order=1..3)")
register("dpm_solver_2", DPMSolverSinglestep, "DPM-Solver-2, singlestep noise prediction, order 2, 2 calls/step",
         order=2, prediction="noise")
register("dpm_solver_3", DPMSolverSinglestep, "DPM-Solver-3, singlestep noise prediction, order 3, 3 calls/step",
         order=3, prediction="noise")
register("dpmpp_2s", DPMSolverSinglestep, "DPM-Solver++(2S), singlestep data prediction, order 2, 2 calls/step",
         order=2, prediction="data")
register("dpmpp_3s", DPMSolverSinglestep, "DPM-Solver++(3S), singlestep data prediction, order 3, 3 calls/step "
         "(the higher-order half of DPM-Solver-23)", order=3, prediction="data")
