"""AMED-Solver and AMED-Plugin (Zhou et al., CVPR 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5
Steps"): a learned intermediate time per sample and per step.

EDM frame, y = x / alpha, s = sigma / alpha, slope d(y, s) = (y - D(y, s)) / s. One AMED step from s_n to s_{n+1}:

    s_mid = s_n^(1 - r) s_{n+1}^r,   y_mid = y_n + (s_mid - s_n) d(y_n, s_n),
    D_mid = D(y_mid, a s_mid),       d_mid = (y_mid - D_mid) / s_mid,
    y_{n+1} = y_n + c (s_{n+1} - s_n) d_mid,

with (r, c, a) from a small predictor (diffsolve.corrections.AMEDPredictor) fed with the network's bottleneck
feature at the step's start, or from a per-step table. With r = 1/2, c = a = 1 this is DPM-Solver-2 (the midpoint
in log s). On a step into zero noise the geometric interpolation uses the schedule's smallest noise instead of 0.

AMED-Plugin runs a base solver on the doubled grid s_n -> s_mid -> s_{n+1}, both slopes entering its history;
c scales the base solver's increment over the second half. Bases: euler, ipndm, ipndm_v, deis (multistep on the
EDM slope), dpmpp_2m (multistep data prediction), dpm_solver_2 (r replaces 1/2, c scales its increment). The
half steps are the registered base solver's own rule (corrections.base_rules: its weights or coefficients on
the EDM-frame levels), at its full order with a warm start.

NFE: two model calls per step, 2 (N - 1) for N grid points, one fewer with the analytical first step (AFS), which
takes d = (y - mu) / sqrt(1 + s^2) at the largest noise: mu is the mean data prediction there, measured once when
the predictor was trained (0 in the original AFS, far off for data that is not centred, such as MNIST).

The intermediate times are per-sample device tensors (`field.at(tensor)`): nothing in a step reads a value back
to the host. The updates use plain torch arithmetic (per-sample coefficients, and autograd for training).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.errors import InvalidArgument, check_choice, check_int
from diffsolve.field import EvalPoint, Field, per_sample
from diffsolve.solvers.base import Plan, Solver, StepCoefficients, get_solver, register
from diffsolve.corrections.base_rules import afs_denoised, base_step, default_order
from diffsolve.corrections.io import AMEDCorrection, as_amed_correction
from diffsolve.corrections.shipped import shipped_or_untrained
from diffsolve.corrections.predictor import AMEDPredictor

PLUGIN_BASES = ("euler", "ipndm", "ipndm_v", "deis", "dpmpp_2m", "dpm_solver_2")
PLAIN_BASES = ("amed", "euler", "ipndm", "ipndm_v", "dpm_solver_2")     # rules with no log s and no data prediction
SINGLE_STEP_BASES = ("amed", "euler", "dpm_solver_2")


@dataclass(frozen=True)
class AMEDStep(StepCoefficients):
    """One step's host data for AMEDSolver.step.

    Noise levels, the EDM-frame scale alpha at both ends, the AFS flag, and (for a time-only table) the constants
    (r, c, a); `predictor`: the AMEDCorrection resolved for the field.

    Attributes:
        index: The step's position in the plan (0 for the first step).
        s0: EDM noise level s = sigma / alpha at the step's start.
        s1: EDM noise level at the step's end.
        s1_geo: End of the geometric interpolation (s_min on a step into zero noise, else s1).
        alpha0: The schedule's alpha at the step's start.
        alpha1: The schedule's alpha at the step's end.
        afs: True when this step takes the analytical first step instead of a model call.
        fixed: The constants (r, c, a) from a time-only table, or None when the predictor runs per sample.
        predictor: The AMEDCorrection resolved for the field.
        plain: True on a plain velocity field: then s0, s1 are the field's own times t0, t1.
    """

    index: int
    s0: float
    s1: float
    s1_geo: float                       # end of the geometric interpolation (s_min on a step into zero noise)
    alpha0: float
    alpha1: float
    afs: bool
    fixed: tuple[float, float, float] | None
    predictor: Any
    plain: bool = False                 # a plain velocity field: s0, s1 are the field's own times t0, t1


def resolve_amed(given: Any, field: Field | None, base: str, afs: bool | None = None, who: str = "amed",
                 warn: bool = True) -> AMEDCorrection:
    """The AMEDCorrection a solver with `predictor=given` uses on `field`.

    The one given (checked against the field's identity), else the one shipped for the field's model, else (with a
    warning when `warn`) the untrained starting point r = 1/2, c = a = 1 (the geometric midpoint rule inside the base
    solver).

    Args:
        given: An AMEDCorrection, a path to a saved one, a bare AMEDPredictor / TimeTable, or None (look up the
            shipped one).
        field: The field to check against and to find a shipped correction for; None skips the identity check.
        base: The base solver the correction must have been trained for.
        afs: Whether to use the analytical first step; None follows the correction's training.
        who: The solver name that opens the warning.
        warn: Warn when falling back to the untrained midpoint rule (default True).

    Returns:
        The resolved correction.

    Raises:
        InvalidArgument: `given` and `field` are both None, the correction is not an AMED one, it was trained for
            another base, or it does not match the field's identity.
    """
    if given is not None:
        corr = as_amed_correction(given, base, afs)
        if field is not None:
            corr.check_field(field)
    elif field is None:
        raise InvalidArgument("predictor= is missing")
    else:
        corr = shipped_or_untrained(
            field, "amed", base,
            lambda: AMEDCorrection(AMEDPredictor(features="none"), base, False, None, {}, None, {"untrained": True}),
            "Using the untrained midpoint rule (r = 1/2, c = a = 1)", who, warn)
    if not isinstance(corr, AMEDCorrection):
        raise InvalidArgument("predictor must be an AMED correction")
    if corr.base != base:
        raise InvalidArgument(f"this predictor was trained for base={corr.base!r}, not {base!r}")
    return corr


# ------------------------------------------------------------------------------------------------
# The solver
# ------------------------------------------------------------------------------------------------
class AMEDSolver(Solver):
    """AMED-Solver (`base='amed'`) or AMED-Plugin on another base solver, with a learned predictor.

    Args:
        predictor: An `AMEDCorrection` (diffsolve.corrections; what `train_amed` returns and `load_correction`
            reads), a path to a saved one, a bare `AMEDPredictor` / `TimeTable`, or None: the predictor shipped for
            the field's model (the built-in MNIST UNet), found by its identity; for other models a warning, and the
            untrained starting point (r = 1/2, c = a = 1).
        base: The base solver whose rule runs the half steps; "amed" (default) is AMED-Solver itself.
        afs: Use the analytical first step; None (default) follows the predictor's training.
        max_order: Highest order of the base rule; None (default) is the base solver's own order.
        plugin: True for AMED-Plugin (base may be any of PLUGIN_BASES); False allows only base="amed".

    Raises:
        InvalidArgument: `base` is not allowed, `max_order` is below 1, or `afs` is not True, False or None.
    """

    deterministic = True
    needs_schedule = False      # plain velocity fields: native time (plan_plain); Gaussian fields: the EDM frame
    calls_per_step = 2
    citation = "Zhou et al. 2024, AMED-Solver (arXiv:2312.00094); diff-sampler amed-solver-main"

    def __init__(self, predictor: Any = None, base: str = "amed", afs: bool | None = None,
                 max_order: int | None = None, plugin: bool = False):
        allowed = PLUGIN_BASES if plugin else ("amed",)
        check_choice("base", base, allowed)
        self.base = base
        self.name = "amed" if base == "amed" else f"amed_plugin[{base}]"
        self.order = 2
        # the half steps' rule: the registered base solver (AMED-Solver and DPM-Solver-2 start with Euler)
        self.rule = get_solver("euler" if base in SINGLE_STEP_BASES else base)
        self.max_order = (check_int("max_order", max_order, minimum=1) if max_order is not None
                          else default_order(self.rule))
        if afs is not None and not isinstance(afs, bool):
            raise InvalidArgument(f"afs={afs!r}: must be True, False or None (follow the predictor)")
        self.afs_option = afs
        self._given = predictor

    # --- the predictor ------------------------------------------------------------------------------
    def correction(self, field: Field | None, warn: bool = False) -> AMEDCorrection:
        """The AMEDCorrection this solver uses on `field` (resolve_amed; nothing is kept between calls).

        Args:
            field: The field the solver runs on, or None.
            warn: Warn when falling back to the untrained midpoint rule (default False).

        Returns:
            (AMEDCorrection): The resolved correction.
        """
        return resolve_amed(self._given, field, self.base, self.afs_option, self.name, warn)

    def uses_afs(self, field: Field | None) -> bool:
        """Whether this solver takes the analytical first step on `field`.

        Args:
            field: The field the solver runs on, or None.

        Returns:
            The `afs` option when given, else the correction's own AFS setting.
        """
        if self.afs_option is not None:
            return self.afs_option
        return self.correction(field).afs

    def grid_for(self, field: Field):
        """The default grid when the Sampler is given none: the one the predictor was trained on.

        Args:
            field: The field the solver runs on.

        Returns:
            (Callable): The correction's grid function: its trained grids, else the default AMED grid.
        """
        return self.correction(field).grid_function()

    # --- planning -------------------------------------------------------------------------------------
    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """Model calls for a run of `steps` steps: two per step, one fewer with the analytical first step.

        Args:
            steps: Number of steps.
            field: The field the solver runs on.
            ends_at_zero: Whether the grid ends at zero noise (unused: the count is the same).

        Returns:
            The number of model calls.
        """
        return 2 * steps - (1 if self.uses_afs(field) else 0)

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The per-step host data for a run over the grid `t` on a Gaussian field (plain fields go to plan_plain).

        Args:
            field: The field the solver runs on.
            t: The time grid, from the start to the end of the run.

        Returns:
            The plan: the grid points and one AMEDStep per step.

        Raises:
            InvalidArgument: The field does not suit the solver, or the grid starts at pure noise (alpha = 0).
        """
        if not field.has_schedule:
            return self.plan_plain(field, t)
        self.check_field(field)
        corr = self.correction(field, warn=True)
        afs = self.afs_option if self.afs_option is not None else corr.afs
        pts = self.grid_points(field, t)
        if float(pts[0].alpha) == 0.0:
            raise InvalidArgument(f"{self.name} integrates in the EDM frame; start the grid below pure noise")
        s_floor = field.schedule.sigma_min or corr.predictor_s_floor()
        coeffs = []
        for i in range(len(pts) - 1):
            p, q = pts[i], pts[i + 1]
            s0, s1 = float(p.s), float(q.s)
            fixed = corr.fixed_row(float(p.t), float(q.t)) if corr.is_table else None
            coeffs.append(AMEDStep(i, s0, s1, s1 if s1 > 0 else min(s_floor, 0.5 * s0), float(p.alpha),
                                   float(q.alpha), afs and i == 0, fixed, corr))
        return Plan(t=t, points=pts, coeffs=tuple(coeffs), nfe=2 * len(coeffs) - (1 if afs else 0))

    def plan_plain(self, field: Field, t: torch.Tensor) -> Plan:
        """AMED on a plain velocity field (schedule=None), in the field's own time t.

        The intermediate time is t_mid = t_n + r (t_{n+1} - t_n) (linear: a plain field has no noise level whose
        logarithm would be the natural variable, and log t is singular at the final t = 0), the evaluation time
        t_n+1 + a (t_mid - t_n+1) kept inside the step, and the base rules act on f = dx/dt in t. With r = 1/2,
        c = a = 1, 'amed' is the explicit midpoint rule. No AFS (it needs a Gaussian path).

        Args:
            field: The plain velocity field.
            t: The time grid.

        Returns:
            The plan: the grid points and one AMEDStep (plain=True) per step.

        Raises:
            InvalidArgument: The base needs a Gaussian schedule, the correction uses AFS, or the predictor reads
                network features other than the velocity.
        """
        if self.base not in PLAIN_BASES:
            raise InvalidArgument(f"{self.name} on a plain velocity field (schedule=None): base={self.base!r} needs a "
                                  f"Gaussian schedule; bases in native time: {', '.join(PLAIN_BASES)}")
        corr = self.correction(field, warn=True)
        if (self.afs_option if self.afs_option is not None else corr.afs):
            raise InvalidArgument(f"{self.name}: the analytical first step (afs) needs a Gaussian path; a plain "
                                  "velocity field (schedule=None) has none: use afs=False and a predictor trained "
                                  "without it")
        if corr.needs_features and getattr(corr.predictor, "features", None) != "denoised":
            raise InvalidArgument(f"{self.name}: on a plain velocity field the predictor reads the velocity at the "
                                  "step's start (features='denoised') or nothing (features='none')")
        pts = self.grid_points(field, t)
        coeffs = []
        for i in range(len(pts) - 1):
            t0, t1 = float(pts[i].t), float(pts[i + 1].t)
            fixed = corr.fixed_row(t0, t1) if corr.is_table else None
            coeffs.append(AMEDStep(i, t0, t1, t1, 1.0, 1.0, False, fixed, corr, plain=True))
        return Plan(t=t, points=pts, coeffs=tuple(coeffs), nfe=2 * len(coeffs))

    def step_plain(self, ev, x: torch.Tensor, t0: EvalPoint, state: Any, co: AMEDStep):
        """One AMED step on a plain velocity field, in the field's own time.

        Args:
            ev: The evaluator that calls the model.
            x: The state at the step's start.
            t0: The evaluation point at the step's start.
            state: The base rule's velocity history, newest first.
            co: This step's AMEDStep (plain=True).

        Returns:
            (tuple): (x at the step's end, None, the new history).
        """
        corr = co.predictor
        v0 = ev.velocity(x, t0)
        h = co.s1 - co.s0
        lo, hi = min(co.s0, co.s1), max(co.s0, co.s1)
        if co.fixed is not None:
            r, c, a = co.fixed
            t_mid = co.s0 + r * h
            t_eval = min(max(co.s1 + a * (t_mid - co.s1), lo), hi)
            p_mid = ev.field.at(t_eval)
        else:
            r, c, a = corr.predictor(v0 if corr.needs_features else None, co.s0, co.s1, batch=x.shape[0])
            t_mid = co.s0 + r.double() * h
            t_eval = (co.s1 + a.double() * (t_mid - co.s1)).clamp(lo, hi)
            p_mid = ev.field.at(t_eval.reshape(-1).to(device=x.device))
        hist = ((co.s0, v0, None), *state)
        x_mid = base_step(self.rule, x, hist, co.s0, t_mid, self.max_order)
        v_mid = ev.velocity(x_mid.to(x.dtype), p_mid)
        cc = per_sample(c, x)
        if self.base == "amed":
            x1 = x + cc * h * v_mid
        elif self.base == "dpm_solver_2":
            w = per_sample(0.5 / r, x) if isinstance(r, torch.Tensor) else 0.5 / r
            x1 = x + cc * h * ((1 - w) * v0 + w * v_mid)
        else:
            hist2 = ((t_mid, v_mid, None), *hist)
            x_end = base_step(self.rule, x_mid, hist2, t_mid, co.s1, self.max_order)
            x1 = x_mid + cc * (x_end - x_mid)
            state = hist2[: self.max_order - 1] if self.base not in SINGLE_STEP_BASES else ()
        return x1.to(x.dtype), None, state

    def inversion_refusal(self) -> str | None:
        """Why this solver does not run an inversion (data to noise).

        Returns:
            The reason, shown when an inversion is asked for.
        """
        return ("its intermediate times and weights were learned for steps from noise to data; an inversion "
                "would apply them to steps they were never fitted to. Invert with its base solver")

    def init(self, plan: Plan) -> Any:
        """The starting state: an empty slope history.

        Args:
            plan: The run's plan (unused).

        Returns:
            An empty tuple.
        """
        return ()

    # --- the step ---------------------------------------------------------------------------------------
    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: AMEDStep):
        """One AMED step from t0 to t1 in the EDM frame (plain fields go to step_plain).

        Args:
            ev: The evaluator that calls the model.
            x: The state at t0.
            t0: The evaluation point at the step's start.
            t1: The evaluation point at the step's end.
            state: The base rule's history ((s, d, D), ...), newest first.
            coeffs: This step's AMEDStep.

        Returns:
            (tuple): (x at t1, None, the new history).

        Raises:
            InvalidArgument: The correction's data mean or feature module does not match this model.
        """
        co = coeffs
        if co.plain:
            return self.step_plain(ev, x, t0, state, co)
        corr = co.predictor
        y0 = x / co.alpha0 if co.alpha0 != 1.0 else x
        feat = None
        if co.afs:
            D0 = afs_denoised(y0, co.s0, corr.afs_mean)
        elif co.fixed is None and corr.needs_features:
            D0, feat = corr.denoise_with_features(ev, x, t0)
        else:
            D0 = ev.denoise(x, t0)
        d0 = (y0 - D0) / co.s0
        if co.fixed is not None:
            r, c, a = co.fixed
            s_mid = co.s0 ** (1 - r) * co.s1_geo ** r
        else:
            r, c, a = corr.predictor(feat, co.s0, co.s1, batch=x.shape[0])
            s_mid = torch.exp((1 - r.double()) * math.log(co.s0) + r.double() * math.log(co.s1_geo))
        s_eval = a * s_mid
        sch = ev.field.schedule
        if isinstance(s_eval, torch.Tensor):
            p_mid = ev.field.at(sch.t_from_edm_sigma(s_eval.reshape(-1).to(device=x.device)))
        else:
            p_mid = ev.field.at(float(sch.t_from_edm_sigma(s_eval)))
        hist = ((co.s0, d0, D0), *state)
        y_mid = base_step(self.rule, y0, hist, co.s0, s_mid, self.max_order)
        x_mid = y_mid * per_sample(p_mid.alpha, y_mid) if not _is_one(p_mid.alpha) else y_mid
        D_mid = ev.denoise(x_mid.to(x.dtype), p_mid)
        d_mid = (y_mid - D_mid) / per_sample(s_mid, y_mid)
        cc = per_sample(c, y0)
        if self.base == "amed":
            y1 = y0 + cc * (co.s1 - co.s0) * d_mid
        elif self.base == "dpm_solver_2":
            w = per_sample(0.5 / r, y0) if isinstance(r, torch.Tensor) else 0.5 / r
            y1 = y0 + cc * (co.s1 - co.s0) * ((1 - w) * d0 + w * d_mid)
        else:
            hist2 = ((s_mid, d_mid, D_mid), *hist)
            y_end = base_step(self.rule, y_mid, hist2, s_mid, co.s1, self.max_order)
            y1 = y_mid + cc * (y_end - y_mid)
            state = hist2[: self.max_order - 1] if self.base not in SINGLE_STEP_BASES else ()
        x1 = y1 * co.alpha1 if co.alpha1 != 1.0 else y1
        return x1.to(x.dtype), None, state


def _is_one(v) -> bool:
    return not isinstance(v, torch.Tensor) and v == 1.0


def _amed(predictor: Any = None, afs: bool | None = None) -> AMEDSolver:
    return AMEDSolver(predictor, base="amed", afs=afs)


def _amed_plugin(predictor: Any = None, base: str = "ipndm", afs: bool | None = None,
                 max_order: int | None = None) -> AMEDSolver:
    return AMEDSolver(predictor, base=base, afs=afs, max_order=max_order, plugin=True)


register("amed", _amed, "AMED-Solver: learned mean-value step, 2 calls/step (predictor=, AFS saves one)")
register("amed_plugin", _amed_plugin, "AMED-Plugin: learned intermediate point inside base= (ipndm, ipndm_v, "
         "dpmpp_2m, deis, dpm_solver_2, euler)")
