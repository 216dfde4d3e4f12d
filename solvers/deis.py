"""DEIS tAB (Zhang & Chen 2023, arXiv:2204.13902) in diffusers' 'logrho' form, on the EDM-frame slope.

With x~ = x / alpha and rho = s = sigma / alpha the probability-flow ODE is dx~/drho = eps, so an exponential
integrator in noise prediction is x~' = x~ + int eps drho. The past eps outputs are extrapolated by the Lagrange
polynomial in log rho (= -lambda) and integrated exactly in rho: the coefficients equal diffusers'
DEISMultistepScheduler(algorithm_type='deis', solver_type='logrho') `ind_fn` closed forms (orders 1-3), computed
here by Gauss-Legendre quadrature so that order 4 comes for free. The first-order step is DDIM.
"""
from __future__ import annotations

from typing import Sequence

from diffsolve.solvers.base import register
from diffsolve.solvers.multistep import SlopeMultistep, lagrange_integrals


class DEIS(SlopeMultistep):
    """DEIS tAB-k: eps extrapolated by a Lagrange polynomial in log rho, integrated in rho (diffusers 'logrho').

    Paper: Zhang and Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS).

    Args:
        order: the highest step order, 1 to 4 (default 3).
        lower_order_final: True caps step i at order n - i near the end; "auto" is diffusers' DPMSolverMultistep
            rule (last step first order when it reaches zero noise or n < 15); False keeps the order. Not applied
            to an inversion. Default "auto".
        afs: the analytical first step (diff-sampler AFS): the first step's data prediction estimated from the
            almost pure-noise state, saving one model call (sampling only).
    """

    name = "deis"
    singular_end = True     # log rho at rho = 0: the step into zero noise is first order
    citation = "Zhang & Chen 2023, DEIS (arXiv:2204.13902); diffusers DEISMultistepScheduler (logrho)"

    def __init__(self, order: int = 3, lower_order_final: bool | str = "auto", afs: bool = False):
        super().__init__(order, lower_order_final, afs)

    def weights(self, s_hist: Sequence[float], s_next: float, k: int) -> tuple[float, ...]:
        """Adams-Bashforth weights `c_j` of an order-`k` step integrated in log rho (diffusers' 'logrho').

        Args:
            s_hist: the noise levels s of the past slopes, newest first.
            s_next: the level the step ends at.
            k: the step's order.

        Returns:
            The k weights, newest slope first.
        """
        return lagrange_integrals(s_hist, s_hist[0], s_next, "logs")


register("deis", DEIS, "DEIS tAB (logrho, as diffusers), order=1..4 (default 3)")
