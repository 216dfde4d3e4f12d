"""Each diffusers scheduler's own loop, where it departs from stepping a clean grid with the exact model time:
LCM's boundary condition on the network's prediction, TCD's and DDIM's step targets, the rounded timesteps
DPMSolver*/UniPC/DEIS feed the network on karras sigmas, and DPMSolverSinglestep's grouping of listed timesteps.
`scheduler_loop` applies the ones a config calls for (`loop="scheduler"`, the default of
`Sampler(unet, scheduler=...)`); `loop="clean"` keeps the clean grid."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import FieldOutput, FieldWrapper, VectorField, per_sample, velocity_from_x0
from diffsolve.pretrained_adapters.diffusers.ddim import DDIMStepTargets, ddim_model_noise
from diffsolve.pretrained_adapters.diffusers.timesteps import LOWER_ORDER_FINAL_BELOW, node_sigmas
from diffsolve.schedules import VPDiscrete
from diffsolve.solvers.base import Plan, Solver, get_solver
from diffsolve.solvers.consistency import Consistency, consistency_coefficients
from diffsolve.solvers.dpm_solver import DPMSolverSinglestep, SinglestepCoefficients, lambda_of
from diffsolve.solvers.euler import ddim_coefficients

LOOPS = ("scheduler", "clean")
# Classes whose spaced sigmas keep fractional timesteps (the network gets them as they are).
_FRACTIONAL_TIMESTEPS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                         "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
# Classes that make the timesteps of spaced sigmas integers before feeding the network (the update keeps the sigma).
_ROUNDS_KARRAS_TIMESTEPS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                            "UniPCMultistepScheduler", "DEISMultistepScheduler")


class LCMBoundary(FieldWrapper):
    """Latent consistency models' boundary condition, applied by diffusers' LCMScheduler to the network's data
    prediction: c_skip x + c_out x0_hat with c_skip = sd^2 / ((10 n)^2 + sd^2), c_out = 10 n / sqrt((10 n)^2 + sd^2),
    n the timestep and sd = 0.5 (Luo et al. 2023; `timestep_scaling` replaces the 10).

    Args:
        field: the field (or field wrapper) whose data prediction gets the boundary condition.
        timestep_scaling: the factor on the timestep n (LCMScheduler's `timestep_scaling`, default 10).
        sigma_data: sd, the data's standard deviation in the formulas (default 0.5).
    """

    def __init__(self, field: Any, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
        super().__init__(field)
        self.timestep_scaling, self.sigma_data = float(timestep_scaling), float(sigma_data)

    def evaluate(self, x: torch.Tensor, p: Any, kind: str = "x0", **kwargs: Any):
        """The inner field's data prediction at state `x` and point `p` with the boundary condition applied.

        Args:
            x: the state, batch first.
            p: the evaluation point (its `model_time` is the timestep n).
            kind: "x0" for the data prediction, else the velocity computed from it.
            **kwargs: passed to the inner field (and on to the network).

        Returns:
            (FieldOutput): the converted value and the inner output's aux.
        """
        out = self.inner.evaluate(x, p, "x0", **kwargs)
        n = per_sample(p.model_time, x) * self.timestep_scaling
        sd2 = self.sigma_data ** 2
        if isinstance(n, torch.Tensor):
            c_skip, c_out = sd2 / (n * n + sd2), n / torch.sqrt(n * n + sd2)
        else:
            c_skip, c_out = sd2 / (n * n + sd2), n / math.sqrt(n * n + sd2)
        x0 = c_skip * x + c_out * out.value
        value = x0 if kind == "x0" else velocity_from_x0(x, x0, p.path_for(x))
        return FieldOutput(value, out.aux)

    def own_identity(self) -> str:
        """The identity string of this wrapper: its scaling and sigma_data, for caches."""
        return f"lcm_boundary(scaling={self.timestep_scaling!r}, sigma_data={self.sigma_data!r})"


class TCDSteps(Consistency):
    """TCDScheduler's loop (Zheng et al. 2024): from listed timestep n to n', a DDIM move to the timestep
    floor((1 - gamma) n') with the model's x0 and eps, then noise back up to n'; the last step ends at
    alphas_cumprod[0] without noise. `gamma` is the `eta` its pipeline passes to `step` (default 0.3).

    Args:
        gamma: the stochasticity (TCD's `eta`); 0 is deterministic.
        s_noise: the scale of the fresh noise added back (default 1.0).
    """

    def __init__(self, gamma: float = 0.3, s_noise: float = 1.0):
        super().__init__(gamma, s_noise)
        self.name = "tcd_scheduler"

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        """The Plan of TCD's loop on grid `t`: one consistency step per interval with TCD's intermediate timestep.

        Args:
            field: the field to sample; its schedule must be a discrete VP schedule.
            t: the grid of times (float64, decreasing).

        Returns:
            The Plan (grid, points, per-step coefficients, model calls).

        Raises:
            InvalidArgument: the field's schedule is not a VPDiscrete, or the field does not fit the solver.
        """
        self.check_field(field)
        sch = field.schedule
        if not isinstance(sch, VPDiscrete):
            raise InvalidArgument("TCDScheduler's loop needs a discrete VP schedule")
        pts = self.grid_points(field, t)
        zero = field.at(0.0)            # TCD's x0 prediction is the clean data: the boundary is s = 0
        coeffs = []
        for p, q in zip(pts[:-1], pts[1:]):
            n_next = float(sch.timestep_index(torch.tensor(float(q.t))))
            n_mid = math.floor((1.0 - self.gamma) * round(n_next))
            mid = field.at(float(sch.t_from_index(torch.tensor(float(n_mid)))))
            coeffs.append(consistency_coefficients(p, q, mid, zero, self.s_noise))
        return Plan(t=t, points=pts, coeffs=tuple(coeffs), nfe=self.count_calls(tuple(coeffs), field, pts))


def _sigma_to_timestep(sigma: float, log_sigmas: np.ndarray) -> float:
    """diffusers' `_sigma_to_t`: linear interpolation in log sigma between training nodes (float32 node sigmas)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = int(np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2).item())
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = float(np.clip((lo - log_sigma) / (lo - hi), 0, 1))
    return (1 - w) * low + w * (low + 1)


class RoundedModelTime(FieldWrapper):
    """The network gets the timestep diffusers feeds it at a noise level between training nodes: its
    `_sigma_to_t` made an integer (DPMSolver*, UniPC and DEIS with karras, Lu, exponential or beta sigmas):
    `rounding="nearest"` where diffusers rounds it (karras and Lu sigmas, except on a cosine schedule), `"down"`
    where it only casts it to int64 (the others). The update still uses the exact noise level, as diffusers' does.

    Args:
        field: the field to wrap; its schedule must have `alphas_cumprod` (a discrete VP schedule).
        rounding: "nearest" or "down", as above.

    Raises:
        InvalidArgument: `rounding` is not one of the two.
    """

    def __init__(self, field: Any, rounding: str = "nearest"):
        super().__init__(field)
        check_choice("rounding", rounding, ("nearest", "down"))
        self.rounding = rounding
        sch = field.schedule
        node = node_sigmas(sch.alphas_cumprod)
        self.log_sigmas = np.log(node)

    def fed_time(self, p: Any) -> float:
        """The model time the network gets at point `p`: `p.model_time` at a node, at alpha or sigma 0 or per
        sample, else diffusers' interpolated timestep rounded per `rounding`.
        """
        mt = float(p.model_time)
        if p.per_sample or not (p.alpha > 0 and p.sigma > 0) or abs(mt - round(mt)) <= 1e-6:
            return mt
        n = _sigma_to_timestep(np.float64(p.sigma / p.alpha), self.log_sigmas)
        return float(round(n) if self.rounding == "nearest" else math.floor(n))

    def evaluate(self, x: torch.Tensor, p: Any, kind: str = "x0", **kwargs: Any):
        """The inner field at `p` with the model time `fed_time(p)`; `x`, `kind` and `**kwargs` pass through.

        Returns:
            (FieldOutput): the inner field's output.
        """
        n = self.fed_time(p)
        if n != float(p.model_time):
            p = dataclasses.replace(p, model_time=n)
        return self.inner.evaluate(x, p, kind, **kwargs)

    def own_identity(self) -> str:
        """The identity string of this wrapper ("rounded_model_time", plus "(down)" when rounding down)."""
        return "rounded_model_time" + ("" if self.rounding == "nearest" else "(down)")


def model_time_rounding(cfg: Mapping, spaced_like_dpmsolver: bool = False) -> str | None:
    """How a DPMSolver*/UniPC/DEIS config makes the timesteps of its spaced sigmas integers (None: they are nodes).

    Args:
        cfg: the scheduler config (its `_class_name`, `use_karras_sigmas`, `use_lu_lambdas`,
            `use_exponential_sigmas`, `use_beta_sigmas`, `beta_schedule`).
        spaced_like_dpmsolver: any class but the Euler family (which feeds the network fractional timesteps) is
            read as DPMSolverMultistepScheduler (DiffsolveScheduler spaces DDPM/DDIM configs' sigmas as it does).

    Returns:
        "nearest", "down", or None when no rounding applies.
    """
    name = str(cfg.get("_class_name", ""))
    euler = name in _FRACTIONAL_TIMESTEPS or name.startswith("FlowMatch")
    if name not in _ROUNDS_KARRAS_TIMESTEPS and not (spaced_like_dpmsolver and not euler):
        return None
    if cfg.get("use_karras_sigmas", False) or cfg.get("use_lu_lambdas", False):
        return "down" if cfg.get("beta_schedule", "linear") == "squaredcos_cap_v2" else "nearest"
    if cfg.get("use_exponential_sigmas", False) or cfg.get("use_beta_sigmas", False):
        return "down"
    return None


def singlestep_orders(steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """DPMSolverSinglestepScheduler's order per listed timestep (its set_timesteps and get_order_list).

    Args:
        steps: the number of listed timesteps.
        order: the solver order (1 to 3).
        lower_order_final: the config's `lower_order_final` (also forced when `steps % order != 0` or `final_zero`).
        final_zero: the run ends at sigma 0 (the last order is then 1).

    Returns:
        The order of each listed timestep, a list of `steps` integers.
    """
    lower_order_final = lower_order_final or steps % order != 0 or final_zero
    if lower_order_final:
        pattern = list(range(1, order + 1))
        full, rest = divmod(steps, order)
        if rest == 0 and order > 1:
            orders = pattern * (full - 1) + pattern[:-1] + [1]
        else:
            orders = pattern * full + pattern[:rest]
    else:
        orders = list(range(1, order + 1)) * (steps // order)
    if final_zero:
        orders[-1] = 1
    return orders


class SchedulerSinglestep(DPMSolverSinglestep):
    """DPMSolverSinglestepScheduler's own loop: each listed timestep is one model call, and a run of orders
    1, 2, .., k is one singlestep step from its first timestep to the timestep after its last, whose intermediate
    points are the listed timesteps in between (not DPM-Solver's r = 1/2 or 1/3, 2/3), with diffusers' update
    formulas for `algorithm_type` and `solver_type`.

    Args:
        order: the scheduler's `solver_order` (default 2).
        algorithm_type: "dpmsolver++" (data prediction) or "dpmsolver" (noise prediction).
        solver_type: "midpoint" or "heun", diffusers' second- and third-order variants.
        lower_order_final: the scheduler's `lower_order_final` (see `singlestep_orders`).

    Raises:
        InvalidArgument: `algorithm_type` or `solver_type` is not one of the two.
    """

    def __init__(self, order: int = 2, algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint",
                 lower_order_final: bool = False):
        check_choice("algorithm_type", algorithm_type, ("dpmsolver++", "dpmsolver"))
        check_choice("solver_type", solver_type, ("midpoint", "heun"))
        super().__init__(order if order > 1 else 2, "data" if algorithm_type == "dpmsolver++" else "noise")
        self.scheduler_order = int(order)
        self.algorithm_type, self.solver_type = algorithm_type, solver_type
        self.lower_order_final = bool(lower_order_final)
        self.name = f"scheduler_singlestep_{self.scheduler_order}"
        self.calls_per_step = 1

    def model_calls(self, steps: int, field: Any, ends_at_zero: bool) -> int:
        """One model call per listed timestep: `steps` (`field` and `ends_at_zero` do not change it)."""
        return steps        # one call per listed timestep, grouped into singlestep steps in plan()

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        """Group the listed timesteps of grid `t` into singlestep steps by `singlestep_orders` and plan each group.

        Args:
            field: the field to sample.
            t: the grid of listed times (float64, decreasing).

        Returns:
            A Plan whose grid holds only the groups' start and end times; its nfe counts every listed timestep.

        Raises:
            InvalidArgument: the field does not fit the solver.
        """
        self.check_field(field)
        pts = self.grid_points(field, t)
        n = len(pts) - 1
        orders = singlestep_orders(n, self.scheduler_order, self.lower_order_final, float(t[-1]) == 0.0)
        starts = [i for i, o in enumerate(orders) if o == 1] + [n]
        coeffs, bounds = [], []
        for a, b in zip(starts[:-1], starts[1:]):
            coeffs.append(self._group(pts[a:b + 1]))
            bounds.append(a)
        bounds.append(n)
        return Plan(t=t[bounds], points=tuple(pts[i] for i in bounds), coeffs=tuple(coeffs), nfe=n)

    def _group(self, pts: Sequence[Any]) -> Any:
        """The stages and final update of one group: points P0 (start), P1..P(k-1) (model calls), Pk (target)."""
        k = len(pts) - 1
        basis = np.eye(k + 1)
        states = [basis[0]]

        def output(j: int) -> np.ndarray:      # diffusers' converted model output at P_j, as a basis vector
            if self.algorithm_type == "dpmsolver++":
                return basis[1 + j]
            return (states[j] - pts[j].alpha * basis[1 + j]) / pts[j].sigma

        for j in range(1, k + 1):
            q = pts[j]
            if j == 1:
                a, b = ddim_coefficients(pts[0], q)
                states.append(a * basis[0] + b * basis[1])
                continue
            s0, lt = pts[0], lambda_of(q)
            h = lt - lambda_of(s0)
            ms = [output(i) for i in range(j)]
            rs = [(lambda_of(pts[i]) - lambda_of(s0)) / h for i in range(1, j)]
            if self.algorithm_type == "dpmsolver++":
                lin, phi = (q.sigma / s0.sigma) * basis[0], math.expm1(-h)
                first, second = -q.alpha * phi, q.alpha * (phi / h + 1.0)
                third = -q.alpha * ((phi + h) / h ** 2 - 0.5)
                half = -0.5 * q.alpha * phi
            else:
                lin, phi = (q.alpha / s0.alpha) * basis[0], math.expm1(h)
                first, second = -q.sigma * phi, -q.sigma * (phi / h - 1.0)
                third = -q.sigma * ((phi - h) / h ** 2 - 0.5)
                half = -0.5 * q.sigma * phi
            if j == 2:
                d1 = (ms[1] - ms[0]) / rs[0]
                x = lin + first * ms[0] + (half if self.solver_type == "midpoint" else second) * d1
            else:
                r1, r0 = rs[0], rs[1]
                d1_0, d1_1 = (ms[1] - ms[0]) / r1, (ms[2] - ms[0]) / r0
                if self.solver_type == "midpoint":
                    x = lin + first * ms[0] + second * d1_1
                else:
                    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
                    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
                    x = lin + first * ms[0] + second * d1 + third * d2
            states.append(x)
        stages = tuple(tuple(float(v) for v in u[: i + 2]) for i, u in enumerate(states[1:-1]))
        return SinglestepCoefficients(tuple(pts[1:-1]), stages, tuple(float(v) for v in states[-1]))

    def options(self) -> dict:
        """The keywords that rebuild this solver: order, algorithm_type, solver_type, lower_order_final."""
        return {"order": self.scheduler_order, "algorithm_type": self.algorithm_type,
                "solver_type": self.solver_type, "lower_order_final": self.lower_order_final}


class DropZeroLengthEnd(Solver):
    """DPMSolverMultistep/UniPC/DEIS on spaced sigmas ending at sigma_min: the grid ends with diffusers' zero-length
    step (one ulp long here). From 15 steps on (or with lower_order_final=False) diffusers' lower-order-final rule
    does not count it and the step returns its input, while a diffsolve step of higher order would divide by its
    zero length: the plan leaves it out (one model call fewer, the same sample). Otherwise it is kept, as the rule
    counts it.

    Args:
        inner: the solver whose plan, steps and options are used.
    """

    def __init__(self, inner: Solver):
        self.inner = inner
        self.name, self.order, self.calls_per_step = inner.name, inner.order, inner.calls_per_step

    @property
    def deterministic(self) -> bool:   # type: ignore[override]
        """Whether the inner solver draws no noise."""
        return self.inner.deterministic

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        """The inner solver's Plan for `field` on grid `t` (float64, decreasing), without its zero-length last step
        where diffusers does not count it.
        """
        steps = t.numel() - 1
        zero_length = steps >= 2 and float(t[-2]) > 0 and \
            float(torch.nextafter(t[-2:-1], torch.zeros(1, dtype=t.dtype))) == float(t[-1])
        never_lowered = getattr(self.inner, "lower_order_final", "auto") is False
        if zero_length and (steps >= LOWER_ORDER_FINAL_BELOW or never_lowered):
            t = t[:-1]
        return self.inner.plan(field, t)

    def init(self, plan: Plan) -> Any:
        """The inner solver's initial loop state for `plan`."""
        return self.inner.init(plan)

    def step(self, ev: Any, x: torch.Tensor, t0: Any, t1: Any, state: Any, coeffs: Any):
        """One step of the inner solver: `ev` calls the field, `x` the state from `t0` to `t1`, `state` the loop
        state, `coeffs` the planned coefficients; returns the inner solver's (new x, new state).
        """
        return self.inner.step(ev, x, t0, t1, state, coeffs)

    def model_calls(self, steps: int, field: Any, ends_at_zero: bool) -> int:
        """The inner solver's model calls for `steps` steps on `field` (`ends_at_zero`: the grid ends at sigma 0)."""
        return self.inner.model_calls(steps, field, ends_at_zero)

    def options(self) -> dict:
        """The inner solver's options."""
        return self.inner.options()

    def inversion_refusal(self) -> str | None:
        """The inner solver's reason to refuse inversion, or None."""
        return self.inner.inversion_refusal()

    def fit_steps(self, steps: int) -> int:
        """The inner solver's step count for `steps` steps asked for."""
        return self.inner.fit_steps(steps)


def scheduler_loop(cfg: Mapping, field: VectorField, solver: Any, options: dict, loop: str):
    """(field, solver) reproducing the scheduler's own loop where it departs from a clean grid.

    Args:
        cfg: the scheduler config (its `_class_name` and spacing options).
        field: the VectorField built from the config.
        solver: a registry name or a Solver.
        options: keywords for `get_solver` when `solver` is a name.
        loop: "scheduler" (the scheduler's loop) or "clean" (field and solver unchanged).

    Returns:
        (tuple): the field (wrapped in RoundedModelTime where the config rounds timesteps) and the solver (wrapped in
            DropZeroLengthEnd or DDIMStepTargets where the loop calls for it).

    Raises:
        InvalidArgument: `loop` is not in LOOPS, or the solver name or options are refused.
    """
    check_choice("loop", loop, LOOPS)
    name = str(cfg.get("_class_name", ""))
    if loop == "clean" or not isinstance(field.schedule, VPDiscrete):
        return field, solver
    rounding = model_time_rounding(cfg)
    if rounding is not None:
        field = RoundedModelTime(field, rounding)
        if name != "DPMSolverSinglestepScheduler" and not isinstance(solver, SchedulerSinglestep):
            solver = DropZeroLengthEnd(solver if isinstance(solver, Solver) else get_solver(solver, **options))
    if name == "DDIMScheduler":      # every spacing: with trailing, T / steps need not be an integer either
        inner = solver if isinstance(solver, Solver) else get_solver(solver, **options)
        if hasattr(type(inner), "coefficients") and type(inner).coefficients is not Solver.coefficients:
            final_t = 0.0 if cfg.get("set_alpha_to_one", True) else float(field.schedule.t_from_index(
                torch.tensor(0.0)))
            return ddim_model_noise(field, DDIMStepTargets(inner, int(cfg.get("num_train_timesteps", 1000)), final_t))
    return field, solver


__all__ = ["LOOPS", "LCMBoundary", "TCDSteps", "RoundedModelTime", "model_time_rounding", "singlestep_orders", "SchedulerSinglestep",
           "DropZeroLengthEnd", "scheduler_loop"]
