"""iPNDM and iPNDM_v (Zhang & Chen 2023 Appendix; diff-sampler `ipndm`, `ipndm_v`): Adams-Bashforth on the
EDM-frame slope d = (x~ - D) / s in s, with warm start of lower order.

iPNDM uses the constant-step weights 1; (3, -1)/2; (23, -16, 5)/12; (55, -59, 37, -9)/24 whatever the grid.
Those weights assume equal steps in s: on a grid whose steps vary smoothly, the mismatch leaves an O(h^3) local
error, so iPNDM is of global order 2 in general and reaches its nominal order only on grids uniform in s.
iPNDM_v uses variable-step Adams-Bashforth weights. By default they are the exact ones (Lagrange quadrature in
s, so `ipndm_v` and `lms` are the same rule); `weights="diff_sampler"` reproduces diff-sampler's published
closed forms, which equal the exact weights for orders 1-2 and for constant steps, are exact only to first
degree for order 3 on variable steps, and for order 4 do not even sum to the step unless the step ratios are
constant (h_{n-2}/h_{n-3} = h_{n-1}/h_{n-2}), which costs them consistency on general grids.

On a plain velocity field (schedule=None: a flow whose source need not be Gaussian) both integrate
dx/dt = f(x, t) in the field's own time with the same weights in t instead of s (SlopeMultistep.plan_plain):
iPNDM's constant weights are exact only on grids uniform in t, iPNDM_v's are variable-step Adams-Bashforth. The
warm start's low-order first steps bound a run on an ordinary grid to global order 2; iPNDM_v shows its declared
`plain_order` on grids whose first steps are refined (tests/test_convergence.py checks both).

Inversion (data to noise) runs a grid reversed, so its steps grow: iPNDM_v lowers the order of a step longer than
1.5 times the spacing of the slopes it extrapolates (SlopeMultistep.extrapolation_order); iPNDM's constant weights
do not extrapolate over the true spacing and need no such rule.
"""
from __future__ import annotations

from typing import Sequence

from diffsolve.solvers.base import register
from diffsolve.errors import check_choice
from diffsolve.solvers.multistep import SlopeMultistep, lagrange_integrals

AB_WEIGHTS = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class IPNDM(SlopeMultistep):
    """iPNDM: constant-step Adams-Bashforth weights on the EDM slope (diff-sampler `ipndm`).

    Papers: Zhang and Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (iPNDM);
    Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (PNDM); Zhou et al. 2024,
    "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (diff-sampler).

    Args:
        order: the highest step order, 1 to 4 (default 4).
        lower_order_final: True caps step i at order n - i near the end; "auto" is diffusers' DPMSolverMultistep
            rule (last step first order when it reaches zero noise or n < 15); False keeps the order. Not applied
            to an inversion. Default False.
        afs: the analytical first step (diff-sampler AFS): the first step's data prediction estimated from the
            almost pure-noise state, saving one model call (sampling only).
    """

    name = "ipndm"
    order = 2       # measured global order on grids that are not uniform in s; see the module docstring
    needs_schedule = False
    citation = "Zhang & Chen 2023, DEIS (arXiv:2204.13902), iPNDM; Zhou et al. 2024 diff-sampler"

    def __init__(self, order: int = 4, lower_order_final: bool | str = False, afs: bool = False):
        super().__init__(order, lower_order_final, afs)
        self.order = min(self.solver_order, 2)
        # On a plain velocity field the weights act in t. Its body is of the nominal order only on grids uniform
        # in t, where the warm start's first-order step (local error h^2) still limits the run to order 2; on any
        # other grid the constant weights leave an O(h^3) local error: order min(order, 2) either way.
        self.plain_order = self.order

    def weights(self, s_hist: Sequence[float], s_next: float, k: int) -> tuple[float, ...]:
        """Constant-step Adams-Bashforth weights `c_j` of an order-`k` step in the slope's variable.

        Args:
            s_hist: the noise levels s of the past slopes, newest first.
            s_next: the level the step ends at.
            k: the step's order.

        Returns:
            The k weights, newest slope first.
        """
        h = s_next - s_hist[0]
        return tuple(h * w for w in AB_WEIGHTS[k])


def ipndm_v_weights(s_hist: Sequence[float], s_next: float, k: int) -> tuple[float, ...]:
    """diff-sampler's variable-step weights (times h_n) for slopes at s_hist = (s_i, s_{i-1}, ...)."""
    h_n = s_next - s_hist[0]
    if k == 1:
        return (h_n,)
    h1 = s_hist[0] - s_hist[1]
    if k == 2:
        return (h_n * (2 + h_n / h1) / 2, -h_n * (h_n / h1) / 2)
    h2 = s_hist[1] - s_hist[2]
    t1 = (1 - h_n / (3 * (h_n + h1)) * (h_n * (h_n + h1)) / (h1 * (h1 + h2))) / 2
    if k == 3:
        c1 = (2 + h_n / h1) / 2 + t1
        c2 = -(h_n / h1) / 2 - (1 + h1 / h2) * t1
        c3 = t1 * h1 / h2
        return (h_n * c1, h_n * c2, h_n * c3)
    h3 = s_hist[2] - s_hist[3]
    t2 = ((1 - h_n / (3 * (h_n + h1))) / 2 + (1 - h_n / (2 * (h_n + h1))) * h_n / (6 * (h_n + h1 + h2))) \
        * (h_n * (h_n + h1) * (h_n + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    g = h1 * (h1 + h2) / (h2 * (h2 + h3))
    c1 = (2 + h_n / h1) / 2 + t1 + t2
    c2 = -(h_n / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + g) * t2
    c3 = t1 * h1 / h2 + (h1 / h2 + g * (1 + h2 / h3)) * t2
    c4 = -t2 * g * h1 / h2
    return (h_n * c1, h_n * c2, h_n * c3, h_n * c4)


class IPNDMV(SlopeMultistep):
    """iPNDM_v: variable-step Adams-Bashforth weights on the EDM slope (diff-sampler `ipndm_v`).

    Papers: Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (AMED,
    diff-sampler); Zhang and Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"
    (iPNDM); Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (PNDM).

    Args:
        order: the highest step order, 1 to 4 (default 4).
        lower_order_final: True caps step i at order n - i near the end; "auto" is diffusers' DPMSolverMultistep
            rule (last step first order when it reaches zero noise or n < 15); False keeps the order. Not applied
            to an inversion. Default False.
        afs: the analytical first step (diff-sampler AFS): the first step's data prediction estimated from the
            almost pure-noise state, saving one model call (sampling only).
        weights: "exact" (variable-step weights of the stated order) or "diff_sampler" (diff-sampler's
            `ipndm_v` weights; at order 4 of order 2 only on general grids).
    """

    name = "ipndm_v"
    needs_schedule = False
    citation = "Zhou et al. 2024 (AMED, diff-sampler ipndm_v); Zhang & Chen 2023 (iPNDM)"
    inversion_step_ratio = 1.5       # variable-step weights in s: see SlopeMultistep.extrapolation_order

    def __init__(self, order: int = 4, lower_order_final: bool | str = False, afs: bool = False,
                 weights: str = "exact"):
        super().__init__(order, lower_order_final, afs)
        check_choice("weights", weights, ("exact", "diff_sampler"))
        self.weight_rule = weights
        if weights == "diff_sampler" and self.solver_order == 4:
            self.order = 2      # its order-4 weights are inconsistent on general grids (module docstring)
        self.plain_order = self.order     # variable-step AB in t on a plain velocity field: the same orders

    def weights(self, s_hist: Sequence[float], s_next: float, k: int) -> tuple[float, ...]:
        """Variable-step Adams-Bashforth weights `c_j` of an order-`k` step in the slope's variable.

        Args:
            s_hist: the noise levels s of the past slopes, newest first.
            s_next: the level the step ends at.
            k: the step's order.

        Returns:
            The k weights, newest slope first.
        """
        if self.weight_rule == "diff_sampler":
            return ipndm_v_weights(s_hist, s_next, k)
        return lagrange_integrals(s_hist, s_hist[0], s_next, "s")


register("ipndm", IPNDM, "iPNDM, constant-step Adams-Bashforth on the EDM slope (plain fields: in t), "
         "order=1..4 (default 4)")
register("ipndm_v", IPNDMV, "iPNDM_v, variable-step Adams-Bashforth on the EDM slope (plain fields: in t), "
         "order=1..4 (default 4)")
