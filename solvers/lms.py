"""Linear multistep (k-diffusion `sample_lms`): Adams-Bashforth in sigma with Lagrange quadrature weights.

k-diffusion integrates the Lagrange basis with scipy quad (epsrel 1e-4); here the weights are exact
(Gauss-Legendre on a polynomial), so results agree with k-diffusion to about that tolerance. On a plain velocity
field (schedule=None) the same rule runs in the field's own time t on f = dx/dt (SlopeMultistep.plan_plain). An
inversion (data to noise) lowers the order of steps that outgrow the spacing of the slopes they extrapolate
(SlopeMultistep.extrapolation_order).
"""
from __future__ import annotations

from typing import Sequence

from diffsolve.solvers.base import register
from diffsolve.solvers.multistep import SlopeMultistep, lagrange_integrals


class LMS(SlopeMultistep):
    """Variable-step Adams-Bashforth on d = (x~ - D)/s in s (Lagrange polynomial through past slopes).

    Sources: Crowson, k-diffusion (2022), `sample_lms`; Hairer, Norsett and Wanner 1993, "Solving Ordinary
    Differential Equations I", Sec. III.1 (Adams methods).

    Args:
        order: the highest step order, 1 to 4 (default 4).
        lower_order_final: True caps step i at order n - i near the end; "auto" is diffusers' DPMSolverMultistep
            rule (last step first order when it reaches zero noise or n < 15); False keeps the order. Not applied
            to an inversion. Default False.
        afs: the analytical first step (diff-sampler AFS): the first step's data prediction estimated from the
            almost pure-noise state, saving one model call (sampling only).
    """

    name = "lms"
    needs_schedule = False
    citation = "Crowson, k-diffusion sample_lms; Hairer, Norsett & Wanner, Sec. III.1 (Adams methods)"
    inversion_step_ratio = 1.5       # variable-step weights in s: see SlopeMultistep.extrapolation_order

    def __init__(self, order: int = 4, lower_order_final: bool | str = False, afs: bool = False):
        super().__init__(order, lower_order_final, afs)
        self.plain_order = self.solver_order      # variable-step Adams-Bashforth in t on a plain velocity field

    def weights(self, s_hist: Sequence[float], s_next: float, k: int) -> tuple[float, ...]:
        """Variable-step Adams-Bashforth weights `c_j` of an order-`k` step in the slope's variable.

        Args:
            s_hist: the noise levels s of the past slopes, newest first.
            s_next: the level the step ends at.
            k: the step's order.

        Returns:
            The k weights, newest slope first.
        """
        return lagrange_integrals(s_hist, s_hist[0], s_next, "s")


register("lms", LMS, "linear multistep (k-diffusion LMS), Adams-Bashforth in sigma, order=1..4 (default 4)")
