"""UniPC (Zhao et al. 2023, arXiv:2302.04867): UniP-p predictor + UniC corrector, data prediction, B(h) bh1 / bh2.

The coefficients follow diffusers' UniPCMultistepScheduler (predict_x0=True): UniP of order 2 uses rho = 1/2,
UniC of order 1 uses rho = 1/2, other orders solve R rho = b with b_k = h phi_k(h) k! / B(h).
The corrector of step i-1 runs at the start of step i on the model output at the predicted point, which is
also the history entry for later steps, so it costs no model call; the state therefore carries the previous
(corrected) sample next to the history. The final step has no corrector (there is no model call after it).

Default order 2 (diffusers' default, the paper's choice for guided sampling; order 3 suits unconditional
models). With the corrector the predictor-corrector pair is one order higher than the predictor alone, so the
declared `order` is `order + 1` with `use_corrector=True`. Like every multistep method started with lower-order
steps, the warm-up steps bound the true asymptotic order; on diffusion ODEs their error is damped by the
contraction from high noise and the nominal order is what fine grids show (tests/test_fast_solvers.py).
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
from diffsolve.solvers.base import Plan, register
from diffsolve.solvers.euler import ddim_coefficients
from diffsolve.solvers.multistep import MultistepSolver, MultistepStep

VARIANTS = ("bh1", "bh2")


@dataclass(frozen=True)
class UniPCStep(MultistepStep):
    """corrector: x_i = lincomb(corrector, (x_{i-1}, m_i, m_{i-1}, ...)) or None;
    predictor: x_{i+1} = lincomb(predictor, (x_i, m_i, m_{i-1}, ...))."""

    corrector: tuple[float, ...] | None
    predictor: tuple[float, ...]


def _unipc_b(h: float, order: int, variant: str) -> tuple[np.ndarray, float, float]:
    """b_k = h phi_{k+1}(h) k! / B(h) as diffusers builds it, hh = -h (data prediction); -> b, B(h), h phi_1."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    B_h = hh if variant == "bh1" else math.expm1(hh)
    b = []
    fact = 1
    for i in range(1, order + 1):
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return np.array(b), B_h, h_phi_1


def unipc_predictor(p: EvalPoint, q: EvalPoint, lams: tuple[float, ...], order: int, variant: str) -> tuple[float, ...]:
    """UniP-order from p to q; lams = (lambda_q, lambda_p, lambda_{p-1}, ...); coefficients on (x, m_0, m_1, ...)."""
    if order == 1:
        return ddim_coefficients(p, q)
    lam_t, lam0 = lams[0], lams[1]
    h = lam_t - lam0
    rks = np.array([(lams[1 + k] - lam0) / h for k in range(1, order)] + [1.0])
    b, B_h, h_phi_1 = _unipc_b(h, order, variant)
    R = np.stack([rks ** (k - 1) for k in range(1, order + 1)])
    rhos = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    coef = np.zeros(order + 1)
    coef[0] = q.sigma / p.sigma
    coef[1] = -q.alpha * h_phi_1
    for k in range(1, order):           # D1_k = (m_k - m_0) / r_k
        w = -q.alpha * B_h * rhos[k - 1] / rks[k - 1]
        coef[1 + k] += w
        coef[1] -= w
    return tuple(float(v) for v in coef)


def unipc_corrector(p: EvalPoint, q: EvalPoint, lams: tuple[float, ...], order: int, variant: str) -> tuple[float, ...]:
    """UniC-order for the step p -> q, given the model output m_new at q's predicted sample.

    lams = (lambda_q, lambda_p, lambda_{p-1}, ...); coefficients on (x_p, m_new, m_p, m_{p-1}, ...).
    """
    lam_t, lam0 = lams[0], lams[1]
    h = lam_t - lam0
    rks = np.array([(lams[1 + k] - lam0) / h for k in range(1, order)] + [1.0])
    b, B_h, h_phi_1 = _unipc_b(h, order, variant)
    R = np.stack([rks ** (k - 1) for k in range(1, order + 1)])
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    coef = np.zeros(order + 2)          # x_p, m_new, m_0 (= m_p), m_1, ...
    coef[0] = q.sigma / p.sigma
    coef[2] = -q.alpha * h_phi_1
    for k in range(1, order):
        w = -q.alpha * B_h * rhos[k - 1] / rks[k - 1]
        coef[2 + k] += w
        coef[2] -= w
    w = -q.alpha * B_h * rhos[-1]        # rho_last (m_new - m_0)
    coef[1] += w
    coef[2] -= w
    return tuple(float(v) for v in coef)


class UniPC(MultistepSolver):
    """UniPC multistep predictor-corrector, data prediction (Zhao et al. 2023, Alg. 2-3, B(h) variants bh1/bh2).

    Paper: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
    Models".

    Args:
        variant: "bh2" (B(h) = e^-h - 1, registered as unipc_bh2) or "bh1" (B(h) = -h, unipc_bh1).
        order: the predictor's highest order, 1 to 3 (default 2); the declared order is one higher with the
            corrector.
        use_corrector: run the UniC corrector (no extra model call).
        lower_order_final: True caps step i at order n - i near the end; "auto" is diffusers' DPMSolverMultistep
            rule (last step first order when it reaches zero noise or n < 15); False keeps the order. Not applied
            to an inversion. Default True.
        afs: the analytical first step (diff-sampler AFS): the first step's data prediction estimated from the
            almost pure-noise state, saving one model call (sampling only).
    """

    calls_per_step = 1
    citation = "Zhao et al. 2023, UniPC (arXiv:2302.04867); diffusers UniPCMultistepScheduler"

    def __init__(self, variant: str = "bh2", order: int = 2, use_corrector: bool = True,
                 lower_order_final: bool | str = True, afs: bool = False):
        check_choice("variant", variant, VARIANTS)
        self.variant = variant
        self.set_options(order, (1, 2, 3), lower_order_final, afs)
        self.use_corrector = bool(use_corrector)
        self.order = self.solver_order + 1 if self.use_corrector else self.solver_order
        self.name = f"unipc_{variant}"

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The grid's points, per-step orders and predictor/corrector weights (see `Solver.plan`)."""
        pts, lam, orders = self.grid_lambdas(field, t)
        data = []
        for i, k in enumerate(orders):
            corr = None
            if self.use_corrector and i > 0 and math.isfinite(lam[i - 1]) and math.isfinite(lam[i]):
                kc = orders[i - 1]
                lams = (lam[i],) + tuple(lam[i - 1 - j] for j in range(kc))
                corr = unipc_corrector(pts[i - 1], pts[i], lams, kc, self.variant)
            lams = (lam[i + 1],) + tuple(lam[i - j] for j in range(k))
            data.append(UniPCStep(corr, unipc_predictor(pts[i], pts[i + 1], lams, k, self.variant), order=k))
        return self.make_plan(t, pts, data)

    def init(self, plan: Plan) -> Any:
        """The empty state: no previous sample, no history."""
        return (None, ())

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: UniPCStep):
        """Correct the previous step with this model output (UniC), then predict the next state (UniP)."""
        co = coeffs
        x_prev, history = state
        m = self.data_prediction(ev, x, t0, co)
        if co.corrector is not None:
            x = lincomb(co.corrector, (x_prev, m, *history[: len(co.corrector) - 2]))
        history = (m, *history)
        x_next = lincomb(co.predictor, (x, *history[: len(co.predictor) - 1]))
        return x_next, None, (x, history[: self.solver_order])


register("unipc_bh2", UniPC, "UniPC (B(h) = e^-h - 1), data prediction, order=1..3 (default 2) + UniC", variant="bh2")
register("unipc_bh1", UniPC, "UniPC (B(h) = -h), data prediction, order=1..3 (default 2) + UniC", variant="bh1")
