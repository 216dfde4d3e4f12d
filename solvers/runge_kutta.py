"""Explicit Runge-Kutta solvers from self-checking Butcher tableaux, on the EDM-frame ODE or in native time.

Frames: for a Gaussian-path field the ODE is integrated in the EDM frame, y = x / alpha against s = sigma / alpha,
where dy/ds = (y - D) / s (Karras et al. 2022, Alg. 1); when the grid starts at pure noise (alpha = 0, as in
rectified flow), for velocity-predicting models, and for plain velocity fields it is integrated in native time,
dx/dt = v(x, t). A stage that would evaluate the slope exactly at zero noise, where it is 0/0, is not taken:
that final step is an Euler step (EDM's rule for Heun), so Heun to zero costs 2N - 1 model calls.
On an increasing grid (inversion, data to noise) the same tableau runs with h > 0; the frame is chosen at the
noisier end, so an inversion that ends at pure noise (rectified flow, alpha = 0) integrates in native time.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import EvalPoint, Field
from diffsolve.kernels import lincomb
from diffsolve.solvers.base import Plan, Solver, StepCoefficients, register
from diffsolve.solvers.frames import integration_frame

FRAMES = ("edm", "time")


def _frac(v) -> Fraction:
    return v if isinstance(v, Fraction) else Fraction(v).limit_denominator(10 ** 9)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit tableau (c, A, b) with its declared order; construction checks consistency and order conditions.

    Attributes:
        name: the tableau's registry name.
        c: the stage times.
        a: rows of the strictly lower triangle (a[i] has i entries).
        b: the weights.
        order: the declared order, checked up to 4.

    Raises:
        InvalidArgument: shapes that do not match, c[i] not the sum of row i, or a failed order condition.
    """

    name: str
    c: tuple
    a: tuple   # rows of the strictly lower triangle: a[i] has i entries
    b: tuple
    order: int

    def __post_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise InvalidArgument(f"tableau {self.name}: c, a and b must describe {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise InvalidArgument(f"tableau {self.name}: row {i} of a must have {i} entries (explicit method)")
            if sum(map(_frac, row)) != _frac(self.c[i]):
                raise InvalidArgument(f"tableau {self.name}: c[{i}] must equal the sum of row {i} of a")
        failed = [cond for cond, ok in self.order_conditions().items() if not ok]
        if failed:
            raise InvalidArgument(f"tableau {self.name} fails order conditions {failed} for order {self.order}")

    def order_conditions(self) -> dict[str, bool]:
        """Butcher's rooted-tree conditions up to the declared order (exact rational arithmetic), up to order 4."""
        if self.order > 4:
            raise InvalidArgument("order conditions are only checked up to order 4")
        b = [_frac(v) for v in self.b]
        c = [_frac(v) for v in self.c]
        s = len(b)
        A = [[_frac(self.a[i][j]) if j < i else Fraction(0) for j in range(s)] for i in range(s)]
        Ac = [sum(A[i][j] * c[j] for j in range(s)) for i in range(s)]
        Ac2 = [sum(A[i][j] * c[j] ** 2 for j in range(s)) for i in range(s)]
        AAc = [sum(A[i][j] * Ac[j] for j in range(s)) for i in range(s)]
        dot = lambda u: sum(bi * ui for bi, ui in zip(b, u))  # noqa: E731
        conds = {"sum b = 1": sum(b) == 1}
        if self.order >= 2:
            conds["b.c = 1/2"] = dot(c) == Fraction(1, 2)
        if self.order >= 3:
            conds["b.c^2 = 1/3"] = dot([x ** 2 for x in c]) == Fraction(1, 3)
            conds["b.Ac = 1/6"] = dot(Ac) == Fraction(1, 6)
        if self.order >= 4:
            conds["b.c^3 = 1/4"] = dot([x ** 3 for x in c]) == Fraction(1, 4)
            conds["b.(c*Ac) = 1/8"] = dot([ci * aci for ci, aci in zip(c, Ac)]) == Fraction(1, 8)
            conds["b.Ac^2 = 1/12"] = dot(Ac2) == Fraction(1, 12)
            conds["b.AAc = 1/24"] = dot(AAc) == Fraction(1, 24)
        return conds

    @property
    def stages(self) -> int:
        """The number of stages (model calls per step)."""
        return len(self.b)

    @property
    def last_stage_at_end(self) -> bool:
        """Whether a stage sits at the step's end (c = 1), singular at zero noise."""
        return any(float(ci) == 1.0 for ci in self.c)


F = Fraction
TABLEAUX = {
    "midpoint": ButcherTableau("midpoint", (0, F(1, 2)), ((), (F(1, 2),)), (0, 1), 2),
    "heun": ButcherTableau("heun", (0, 1), ((), (1,)), (F(1, 2), F(1, 2)), 2),
    "ralston": ButcherTableau("ralston", (0, F(2, 3)), ((), (F(2, 3),)), (F(1, 4), F(3, 4)), 2),
    "rk3": ButcherTableau("rk3", (0, F(1, 2), 1), ((), (F(1, 2),), (-1, 2)), (F(1, 6), F(2, 3), F(1, 6)), 3),
    "bosh3": ButcherTableau("bosh3", (0, F(1, 2), F(3, 4)), ((), (F(1, 2),), (0, F(3, 4))),
                            (F(2, 9), F(1, 3), F(4, 9)), 3),
    "rk4": ButcherTableau("rk4", (0, F(1, 2), F(1, 2), 1), ((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)),
                          (F(1, 6), F(1, 3), F(1, 3), F(1, 6)), 4),
    "rk38": ButcherTableau("rk38", (0, F(1, 3), F(2, 3), 1), ((), (F(1, 3),), (F(-1, 3), 1), (1, -1, 1)),
                           (F(1, 8), F(3, 8), F(3, 8), F(1, 8)), 4),
}


@dataclass(frozen=True)
class RKStep(StepCoefficients):
    """One Runge-Kutta step's data: the integration variable, its increment, alpha at both ends, the stages."""
    tau0: float                         # integration variable at the step start (s or t)
    h: float                            # its increment over the step (negative: noise decreases)
    alpha0: float                       # x = alpha y at the start and end (1 in native time)
    alpha1: float
    stage_points: tuple[EvalPoint, ...]
    stage_tau: tuple[float, ...]
    euler_only: bool                    # final step to zero noise where the end slope is singular
    frame: str                          # 'edm' (y = x / alpha against s) or 'time' (x against t)


class RungeKutta(Solver):
    """Explicit Runge-Kutta on the probability-flow ODE from a Butcher tableau.

    Sources: Butcher 2016, "Numerical Methods for Ordinary Differential Equations" (tableaux, order conditions);
    Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (the EDM frame, Heun's Euler
    step into zero noise). Every TABLEAUX entry is registered by its name
    (midpoint, heun, ralston, rk3, bosh3, rk4, rk38, ...).

    Args:
        tableau: a name in TABLEAUX or a ButcherTableau (default "rk4").
        frame: "edm" or "time"; None: the EDM frame for Gaussian paths, native time for velocity models, plain
            fields and a start at pure noise.

    Raises:
        InvalidArgument: an unknown tableau or frame.
    """

    deterministic = True
    needs_schedule = False

    def __init__(self, tableau: str | ButcherTableau = "rk4", frame: str | None = None):
        if isinstance(tableau, str):
            check_choice("tableau", tableau, TABLEAUX)
            tableau = TABLEAUX[tableau]
        if frame is not None:
            check_choice("frame", frame, FRAMES)
        self.tableau = tableau
        self.frame = frame
        self.name = tableau.name
        self.order = tableau.order
        self.calls_per_step = tableau.stages
        self.citation = "Butcher, Numerical Methods for ODEs; EDM frame: Karras et al. 2022, Alg. 1"

    # --- planning on the host -----------------------------------------------------------------
    def _end_singular(self, field: Field, frame: str) -> bool:
        if not field.has_schedule:
            return False
        return frame == "edm" or field.prediction != "velocity"

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """Stages times steps, less the stages saved by an Euler last step into zero noise."""
        n = steps * self.calls_per_step
        frame = "time" if not field.has_schedule or field.prediction == "velocity" else (self.frame or "edm")
        if ends_at_zero and self.tableau.last_stage_at_end and self._end_singular(field, frame):
            n -= self.calls_per_step - 1
        return n

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        # The frame is chosen at the noisier end: t[0] when sampling, t[-1] for an inversion (increasing grid).
        """The grid's points and every step's stage points, in the frame of the noisier end."""
        frame = integration_frame(field, max(float(t[0]), float(t[-1])), self.frame)
        pts = self.grid_points(field, t)
        steps = tuple(self.frame_coefficients(field, pts[i], pts[i + 1], frame) for i in range(len(pts) - 1))
        nfe = sum(1 if st.euler_only else self.tableau.stages for st in steps)
        return Plan(t=t, points=pts, coeffs=steps, nfe=nfe)

    def coefficients(self, field: Field, t0: EvalPoint, t1: EvalPoint) -> RKStep:
        """One step's stage data from `t0` to `t1` (for adaptive control)."""
        return self.frame_coefficients(field, t0, t1, integration_frame(field, t0.t, self.frame))

    def frame_coefficients(self, field: Field, p: EvalPoint, q: EvalPoint, frame: str) -> RKStep:
        """One step's stage points and increments in `frame` ("edm" or "time")."""
        sch = field.schedule
        tab = self.tableau
        if frame == "edm":
            tau0, tau1 = p.s, q.s
            stage_t = [float(sch.t_from_edm_sigma(tau0 + float(c) * (tau1 - tau0))) for c in tab.c]
            a0, a1 = p.alpha, q.alpha
        else:
            tau0, tau1 = p.t, q.t
            stage_t = [tau0 + float(c) * (tau1 - tau0) for c in tab.c]
            a0 = a1 = 1.0
        euler_only = q.t == 0.0 and tab.last_stage_at_end and self._end_singular(field, frame)
        stage_pts = tuple(p if float(c) == 0 else q if float(c) == 1 else field.at(ts)
                          for c, ts in zip(tab.c, stage_t))
        return RKStep(tau0, tau1 - tau0, a0, a1, stage_pts, tuple(tau0 + float(c) * (tau1 - tau0) for c in tab.c),
                      euler_only, frame)

    # --- the step -------------------------------------------------------------------------------
    def _slope(self, ev, y: torch.Tensor, p: EvalPoint, tau: float, frame: str) -> torch.Tensor:
        if frame == "time":
            return ev.velocity(y, p)
        d = ev.denoise(y * p.alpha if p.alpha != 1.0 else y, p)
        return lincomb((1.0 / tau, -1.0 / tau), (y, d))

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: RKStep):
        """One explicit Runge-Kutta step through the tableau's stages (see `Solver.step`)."""
        st = coeffs
        y0 = x / st.alpha0 if st.alpha0 != 1.0 else x
        tab = self.tableau
        n_stages = 1 if st.euler_only else tab.stages
        ks: list[torch.Tensor] = []
        for j in range(n_stages):
            cj = [st.h * float(a) for a in tab.a[j]]
            yj = lincomb([1.0, *cj], [y0, *ks]) if any(cj) else y0
            ks.append(self._slope(ev, yj, st.stage_points[j], st.stage_tau[j], st.frame))
        weights = [1.0] if st.euler_only else [float(b) for b in tab.b]
        y1 = lincomb([1.0, *(st.h * w for w in weights)], [y0, *ks])
        return (y1 * st.alpha1 if st.alpha1 != 1.0 else y1), None, state


for _name, _tab in TABLEAUX.items():
    register(_name, RungeKutta, f"explicit Runge-Kutta '{_name}', order {_tab.order}", tableau=_name)
