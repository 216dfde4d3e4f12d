"""Linear multistep (k-diffusion `sample_lms`): Adams-Bashforth in sigma with Lagrange quadrature weights.

k-diffusion integrates the Lagrange basis with scipy quad (epsrel 1e-4); here the weights are exact
(Gauss-Legendre on a polynomial), so results agree with k-diffusion to about that tolerance.
"""
from __future__ import annotations

from typing import Sequence

from .base import register
from .multistep import SlopeMultistep, lagrange_integrals


class LMS(SlopeMultistep):
    """Variable-step Adams-Bashforth on d = (x~ - D)/s in s (Lagrange polynomial through past slopes)."""

    name = "lms"
    citation = "Crowson, k-diffusion sample_lms; Hairer, Norsett & Wanner, Sec. III.1 (Adams methods)"

    def weights(self, s_hist: Sequence[float], s_next: float, k: int) -> tuple[float, ...]:
        return lagrange_integrals(s_hist, s_hist[0], s_next, "s")


register("lms", LMS, "linear multistep (k-diffusion LMS), Adams-Bashforth in sigma, order=1..4 (default 4)")
