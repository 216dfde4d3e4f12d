"""DDIMScheduler's own step, for `Sampler(unet, scheduler=DDIMScheduler(...))` and `DiffsolveScheduler`: its step
targets (timestep - num_train_timesteps // steps, which a grid that does not divide the training steps departs
from) and, with clip_sample or thresholding, its step that keeps the network's noise beside the clipped data
prediction."""
from __future__ import annotations

import copy
import functools
from typing import Any, Callable

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import VectorField
from diffsolve.kernels import lincomb
from diffsolve.pretrained_adapters.diffusers.model import DynamicThresholding, threshold_sample
from diffsolve.solvers.base import Plan, Solver
from diffsolve.solvers.euler import Euler


class DDIMStepTargets(Solver):
    """DDIMScheduler's loop: each step goes from its listed timestep n to n - T // steps, and the next step starts
    at the next listed timestep as if the state were there. With 'linspace' spacing the two differ (999 steps to
    899 but the next call is at 888), and with 'trailing' whenever T / steps is not an integer (6 steps: 999 to
    833, next call at 832); `loop="clean"` steps to the next listed timestep instead.

    Args:
        inner: a single-step solver (one with its own `coefficients`), whose update each step uses.
        num_train_timesteps: T, the scheduler's number of training timesteps.
        final_t: the time a step that targets a negative timestep ends at (0, or the time of index 0).

    Raises:
        InvalidArgument: `inner` plans whole grids (has no single-step `coefficients`).
    """

    def __init__(self, inner: Solver, num_train_timesteps: int, final_t: float):
        if not hasattr(type(inner), "coefficients") or type(inner).coefficients is Solver.coefficients:
            raise InvalidArgument(f"solver {inner.name!r} plans whole grids; DDIM's step targets need a single-step "
                                  "solver (ddim, euler, ddim_eta, ddpm, euler_ancestral) or loop='clean'")
        self.inner, self.T, self.final_t = inner, int(num_train_timesteps), float(final_t)
        self.name, self.order, self.calls_per_step = inner.name, inner.order, inner.calls_per_step

    @property
    def deterministic(self) -> bool:   # type: ignore[override]
        """Whether the inner solver draws no noise."""
        return self.inner.deterministic

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        """The inner solver's Plan on grid `t` (float64, decreasing) for `field`, each step ending at DDIM's target
        n - T // steps; InvalidArgument if the field does not fit the inner solver.
        """
        self.inner.check_field(field)
        pts = self.inner.grid_points(field, t)
        steps = len(pts) - 1
        sch = field.schedule
        coeffs = []
        for i in range(steps):
            n = float(sch.timestep_index(torch.tensor(pts[i].t)))
            target = round(n) - self.T // steps
            q = field.at(float(sch.t_from_index(torch.tensor(float(target)))) if target >= 0 else self.final_t)
            coeffs.append(self.inner.coefficients(field, pts[i], q))
        return Plan(t=t, points=pts, coeffs=tuple(coeffs), nfe=self.inner.count_calls(tuple(coeffs), field, pts))

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


class DDIMModelNoise(Solver):
    """DDIMScheduler with clip_sample or thresholding: its step keeps the network's own noise next to the clipped
    (or thresholded) data prediction P(x0), x' = alpha' P(x0) + sigma' (x - alpha x0) / sigma, unless the pipeline
    passes use_clipped_model_output=True (`clipped_model_output`). diffsolve's DDIM on a clipping field re-derives
    the noise from P(x0) (diffusers' use_clipped_model_output=True), so the field comes unclipped and P is applied
    here. `inner` plans as DDIM does (ddim / euler, alone or in DDIMStepTargets)."""

    def __init__(self, inner: Solver, process: Callable[[torch.Tensor], torch.Tensor]):
        self.inner, self.process, self.clipped_model_output = inner, process, False
        self.name, self.order, self.calls_per_step = inner.name, inner.order, inner.calls_per_step

    @property
    def deterministic(self) -> bool:   # type: ignore[override]
        return self.inner.deterministic

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        return self.inner.plan(field, t)

    def init(self, plan: Plan) -> Any:
        return self.inner.init(plan)

    def step(self, ev: Any, x: torch.Tensor, t0: Any, t1: Any, state: Any, coeffs: Any):
        x0 = ev.denoise(x, t0)
        a, b = coeffs.a, coeffs.b          # x' = a x + b x0 with a = sigma'/sigma, b = alpha' - alpha a
        if self.clipped_model_output:
            return lincomb((a, b), (x, self.process(x0))), None, state
        return lincomb((a, b + t0.alpha * a, -t0.alpha * a), (x, self.process(x0), x0)), None, state

    def model_calls(self, steps: int, field: Any, ends_at_zero: bool) -> int:
        return self.inner.model_calls(steps, field, ends_at_zero)


def ddim_model_noise(field: Any, solver: Any) -> tuple[Any, Any]:
    """(the field without its clip or thresholding, DDIMModelNoise(solver)) when a DDIMScheduler config's field
    clips or thresholds its data prediction and the solver is DDIM (ddim / euler); otherwise both unchanged."""
    base = solver.inner if isinstance(solver, DDIMStepTargets) else solver
    if not isinstance(base, Euler):
        return field, solver
    if isinstance(field, DynamicThresholding):
        process = functools.partial(threshold_sample, ratio=field.ratio, max_value=field.max_value)
        return field.inner, DDIMModelNoise(solver, process)
    if isinstance(field, VectorField) and field.clip_x0 is not None:
        low, high = field.clip_x0
        field = copy.copy(field)
        field.clip_x0 = None
        return field, DDIMModelNoise(solver, lambda x0: x0.clamp(low, high))
    return field, solver


__all__ = ["DDIMStepTargets", "DDIMModelNoise", "ddim_model_noise"]
