"""A multistep solver with learned step weights on a learned grid (the times as LD3, Tong et al. 2024; weights on
the slope history as S4S, Frankel et al. 2025): a base rule in the EDM frame plus learned offsets.

EDM frame, y = x / alpha, s = sigma / alpha, slopes d_j = (y_j - D_j) / s_j newest first. One step from s_n to
s_{n+1}:

    y_{n+1} = base(y_n, d_n, d_{n-1}, ...; s_n -> s_{n+1}) + (s_{n+1} - s_n) sum_j w_{n,j} d_{n-j},

the registered base solver's own step (DEIS, iPNDM or iPNDM_v, through `corrections.base_rules`) at its full
order on every step, w the
learned offsets (zero: the base solver). With the analytical first step (AFS) the first slope is
(y - mu) / sqrt(1 + s^2) around the mean data prediction mu at the largest noise (no model call). Weights and grid
are fitted together by `diffsolve.corrections.learn_coefficients`; they belong to the grid they were fitted on.

On a plain velocity field (schedule=None: a flow whose source need not be Gaussian) the same form runs in the
field's own time t on the velocity history f_j = dx/dt (as iPNDM and iPNDM_v integrate such fields):

    x_{n+1} = base(x_n, f_n, f_{n-1}, ...; t_n -> t_{n+1}) + (t_{n+1} - t_n) sum_j w_{n,j} f_{n-j},

without AFS; such weights are recorded as learned in native time and refused on a Gaussian field (and the reverse).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.errors import InvalidArgument, check_choice, check_int
from diffsolve.field import EvalPoint, Field
from diffsolve.solvers.base import Plan, Solver, StepCoefficients, get_solver, register
from diffsolve.corrections.base_rules import afs_denoised, corrected_step, default_order
from diffsolve.corrections.io import CoefficientCorrection, as_coefficient_correction
from diffsolve.corrections.shipped import shipped_or_untrained

COEFFICIENT_BASES = ("deis", "ipndm", "ipndm_v")
NATIVE_TIME_BASES = ("ipndm", "ipndm_v")          # the bases whose rule runs in a plain field's own time


def resolve_coefficients(given: Any, field: Field | None, base: str, who: str = "learned_multistep",
                         warn: bool = True) -> CoefficientCorrection:
    """The CoefficientCorrection a solver with `coefficients=given` uses on `field`.

    The one given (checked against the field's identity), else the one shipped for the field's model, else (with a
    warning when `warn`) zero offsets, the base rule alone.

    Args:
        given: A CoefficientCorrection, the path of a saved one, or None (look up the shipped one).
        field: The field to check against and to find a shipped correction for; None skips the identity check.
        base: The base solver the coefficients must have been learned for.
        who: The solver name that opens the warning.
        warn: Warn when falling back to zero offsets (default True).

    Returns:
        The resolved correction.

    Raises:
        InvalidArgument: `given` and `field` are both None, `given` is not a coefficient correction, or it was
            learned for another base.
        IdentityMismatch: `given` was learned for another model than the field's.
    """
    if given is not None:
        corr = as_coefficient_correction(given)
        if field is not None:
            corr.check_field(field)
    elif field is None:
        raise InvalidArgument("coefficients= is missing")
    else:
        corr = shipped_or_untrained(
            field, "coefficients", base,
            lambda: CoefficientCorrection({}, {}, base, False, None, None, {"untrained": True},
                                          "edm" if field.has_schedule else "native"),
            f"Running the base rule {base!r} with zero offsets", who, warn)
    if corr.base != base:
        raise InvalidArgument(f"these coefficients were learned for base={corr.base!r}, not {base!r}")
    return corr


@dataclass(frozen=True)
class LearnedStep(StepCoefficients):
    """One step's host data: noise levels, the EDM-frame scale at both ends, the AFS flag and the weight offsets.

    Attributes:
        index: The step's position in the plan.
        s0: EDM noise level at the step's start (on a plain velocity field: its time t).
        s1: EDM noise level at the step's end (on a plain velocity field: its time t).
        alpha0: The schedule's alpha at the step's start.
        alpha1: The schedule's alpha at the step's end.
        afs: True when this step takes the analytical first step instead of a model call.
        weights: This step's offsets on the slope history, newest first.
        max_order: The base rule's highest order.
        afs_mean: The data mean for the analytical first step (first step only), else None.
        native: True on a plain velocity field: the step runs in its own time on the velocity history.
    """

    index: int
    s0: float
    s1: float
    alpha0: float
    alpha1: float
    afs: bool
    weights: tuple[float, ...]
    max_order: int
    afs_mean: Any = None
    native: bool = False


class LearnedMultistep(Solver):
    """Base multistep rule plus learned weight offsets on the grid they were learned on (`coefficients=`).

    Args:
        coefficients: A CoefficientCorrection, the path of a saved one, or None: the one shipped for the field's
            model, else (with a warning) zero offsets.
        base: The base rule: "deis" (default), "ipndm" or "ipndm_v".
        max_order: The base rule's highest order; None uses the order the offsets were learned with.

    Raises:
        InvalidArgument: `base` is not a coefficient base, or `max_order` is below 1.
    """

    name = "learned_multistep"
    deterministic = True
    needs_schedule = False      # plain velocity fields: native time (iPNDM, iPNDM_v); Gaussian fields: the EDM frame
    calls_per_step = 1
    citation = "LD3 (Tong et al. 2024) times, S4S (Frankel et al. 2025) coefficients; diffsolve's EDM-frame form"

    def __init__(self, coefficients: Any = None, base: str = "deis", max_order: int | None = None):
        check_choice("base", base, COEFFICIENT_BASES)
        if max_order is not None:
            max_order = check_int("max_order", max_order, minimum=1)
        self.base = base
        self._max_order = max_order
        self.rule = get_solver(base)            # the step: the registered base solver's own weights
        # the base rule's order with zero offsets: DEIS and iPNDM_v interpolate max_order nodes (in log s and s);
        # iPNDM's fixed Adams-Bashforth weights are second order on grids that are not uniform in s
        k = int(max_order if max_order is not None else default_order(self.rule))
        self.order = min(k, 2) if base == "ipndm" else k
        self._given = coefficients

    def options(self) -> dict:
        """The solver's options as given.

        Returns:
            The keys "base" and "max_order".
        """
        return {"base": self.base, "max_order": self._max_order}

    def correction(self, field: Field | None, warn: bool = False) -> CoefficientCorrection:
        """The CoefficientCorrection used on `field` (resolve_coefficients; nothing is kept between calls).

        Args:
            field: The field the solver runs on, or None.
            warn: Warn when falling back to zero offsets (default False).

        Returns:
            The resolved correction.
        """
        return resolve_coefficients(self._given, field, self.base, self.name, warn)

    def grid_for(self, field: Field):
        """The default grid when the Sampler is given none: the grids the coefficients were learned on.

        Args:
            field: The field the solver runs on.

        Returns:
            (Callable | None): The correction's grid function, or None when it holds no grids (zero offsets).
        """
        corr = self.correction(field)
        return corr.grid_function() if corr.grids else None

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """Model calls for a run of `steps` steps: one per step, one fewer with the analytical first step.

        Args:
            steps: Number of steps.
            field: The field the solver runs on.
            ends_at_zero: Whether the grid ends at zero noise (unused).

        Returns:
            The number of model calls.
        """
        return steps - (1 if self.correction(field).afs else 0)

    def inversion_refusal(self) -> str | None:
        """Why this solver does not run an inversion (data to noise).

        Returns:
            The reason, shown when an inversion is asked for.
        """
        return ("its weights were learned for steps from noise to data on one grid; invert with its base solver")

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The per-step host data for a run over the grid `t`, which must be a grid the offsets were learned on.

        Args:
            field: The field the solver runs on.
            t: The time grid.

        Returns:
            The plan: the grid points and one LearnedStep per step.

        Raises:
            InvalidArgument: The field does not suit the solver (a plain velocity field and a base that needs a
                Gaussian path), `t` is not a learned grid, or it starts at pure noise.
        """
        self.check_field(field)
        if not field.has_schedule and self.base not in NATIVE_TIME_BASES:
            raise InvalidArgument(f"learned_multistep on a plain velocity field (schedule=None) runs in its own time: "
                                  f"base= one of {', '.join(NATIVE_TIME_BASES)}, not {self.base!r}")
        corr = self.correction(field, warn=True)
        rows = corr.weights_for(t)
        # the order the offsets were learned with, unless max_order= says otherwise
        k = int(self._max_order or corr.meta.get("max_order") or default_order(self.rule))
        pts = self.grid_points(field, t)
        if not field.has_schedule:
            tv = [float(v) for v in t]
            coeffs = tuple(LearnedStep(i, tv[i], tv[i + 1], 1.0, 1.0, False, tuple(rows[i]), k, None, True)
                           for i in range(len(tv) - 1))
            return Plan(t=t, points=pts, coeffs=coeffs, nfe=len(coeffs))
        if float(pts[0].alpha) == 0.0:
            raise InvalidArgument(f"{self.name} integrates in the EDM frame; start the grid below pure noise")
        coeffs = tuple(LearnedStep(i, float(pts[i].s), float(pts[i + 1].s), float(pts[i].alpha),
                                   float(pts[i + 1].alpha), corr.afs and i == 0, tuple(rows[i]), k,
                                   corr.afs_mean if corr.afs and i == 0 else None)
                       for i in range(len(pts) - 1))
        return Plan(t=t, points=pts, coeffs=coeffs, nfe=len(coeffs) - (1 if corr.afs else 0))

    def init(self, plan: Plan) -> Any:
        """The starting state: an empty slope history.

        Args:
            plan: The run's plan (unused).

        Returns:
            An empty tuple.
        """
        return ()

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: LearnedStep):
        """One step from t0 to t1: the base rule plus this step's offsets, in the EDM frame.

        Args:
            ev: The evaluator that calls the model.
            x: The state at t0.
            t0: The evaluation point at the step's start.
            t1: The evaluation point at the step's end.
            state: The history ((s, d, D), ...), newest first (plain fields: ((t, f, None), ...)).
            coeffs: This step's LearnedStep.

        Returns:
            (tuple): (x at t1, None, the new history).
        """
        co = coeffs
        if co.native:
            hist = ((co.s0, ev.velocity(x, t0), None), *state)
            x1 = corrected_step(self.rule, x, hist, co.s0, co.s1, co.max_order, co.weights)
            return x1.to(x.dtype), None, hist[: co.max_order - 1]
        y0 = x / co.alpha0 if co.alpha0 != 1.0 else x
        D0 = afs_denoised(y0, co.s0, co.afs_mean) if co.afs else ev.denoise(x, t0)
        hist = ((co.s0, (y0 - D0) / co.s0, D0), *state)
        y1 = corrected_step(self.rule, y0, hist, co.s0, co.s1, co.max_order, co.weights)
        x1 = y1 * co.alpha1 if co.alpha1 != 1.0 else y1
        return x1.to(x.dtype), None, hist[: co.max_order - 1]


def _learned_multistep(coefficients: Any = None, base: str = "deis", max_order: int | None = None) -> LearnedMultistep:
    return LearnedMultistep(coefficients, base=base, max_order=max_order)


register("learned_multistep", _learned_multistep, "multistep rule (base= deis, ipndm, ipndm_v) with learned weight "
         "offsets on its learned grid (coefficients=; shipped for the built-in MNIST UNet)")
