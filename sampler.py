"""The Sampler: a field, a solver and a grid; `run()` draws noise, plans on the host and calls the one loop.

Dtypes follow EDM: the state is float32 unless the run asks for another dtype (float64 for references and
order tests), whatever the model's dtype; the field casts what the network sees. Sampling builds no autograd
graph unless `grad=True`.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Sequence

import torch

from .errors import InvalidArgument, check_choice
from .field import Field, as_field, device_of
from .grids import make_grid
from .loop import Evaluator, SampleResult, StepInfo, integrate
from .noise import NoiseSource, draw_noise
from .solvers.base import Plan, Solver, get_solver

__all__ = ["Sampler", "SampleResult", "StepInfo", "SamplerParts", "register_scheduler_adapter", "as_dtype"]

FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64, "half": torch.float16, "float": torch.float32, "double": torch.float64}


NOISE_SCALES = ("unit", "prior")     # noise= is standard normal / already scaled by the prior's std


def as_dtype(dtype: Any) -> torch.dtype | None:
    """A floating torch dtype from a dtype or its name."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype.replace("torch.", "")]
    raise InvalidArgument(f"dtype={dtype!r} is not a floating dtype; allowed values: {', '.join(FLOAT_DTYPES)}")


@dataclass
class SamplerParts:
    """What an adapter hands the Sampler for another framework's model + scheduler."""

    field: Field
    solver: str | Solver
    solver_options: dict = dc_field(default_factory=dict)
    grid: Any = None
    grid_options: dict = dc_field(default_factory=dict)


# Adapters (diffusers) register how they read a scheduler; the core never imports them.
_SCHEDULER_ADAPTERS: list[Callable[..., SamplerParts | None]] = []


def register_scheduler_adapter(adapter: Callable[..., SamplerParts | None]) -> None:
    """`adapter(model, scheduler, prediction=, sample_shape=) -> SamplerParts`, or None if not its scheduler."""
    if adapter not in _SCHEDULER_ADAPTERS:
        _SCHEDULER_ADAPTERS.append(adapter)


def _parts_from_scheduler(model: Any, scheduler: Any, prediction: str | None,
                          sample_shape: Sequence[int] | None) -> SamplerParts:
    for adapter in _SCHEDULER_ADAPTERS:
        parts = adapter(model, scheduler, prediction=prediction, sample_shape=sample_shape)
        if parts is not None:
            return parts
    raise InvalidArgument(f"scheduler={type(scheduler).__name__}: no adapter reads this scheduler; diffusers "
                          "schedulers and their configs are read by diffsolve.pretrained_adapters.diffusers")


def default_solver_name(field: Field) -> str:
    return "dpmpp_2m" if field.has_schedule else "heun"


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r}: must be True or False")
    return value


class Sampler:
    """`Sampler(model).run(steps=5)`: solve the probability-flow ODE (or a plain flow) from noise to data.

    `solver` is a registry name (`diffsolve.solvers.available_solvers()`) or a Solver; `grid` a name in
    `diffsolve.grids.GRIDS`, a function `(steps, schedule, **options) -> times`, or an explicit list of times.
    `scheduler=` (a diffusers scheduler or its config) reads schedule, prediction, timesteps and solver from it.
    """

    def __init__(self, model: Any, solver: str | Solver | None = None, grid: Any = None, *,
                 prediction: str | None = None, schedule: Any = None, time_convention: str | None = None,
                 sample_shape: Sequence[int] | None = None, grid_options: dict | None = None,
                 check_finite: bool = True, progress: bool = True, scheduler: Any = None, **solver_options: Any):
        if scheduler is not None:
            parts = _parts_from_scheduler(model, scheduler, prediction, sample_shape)
            model, prediction, schedule, sample_shape = parts.field, None, None, None
            if grid is None:
                grid, grid_options = parts.grid, {**parts.grid_options, **(grid_options or {})}
            if solver is None:
                solver, solver_options = parts.solver, {**parts.solver_options, **solver_options}
        self.field = as_field(model, prediction=prediction, schedule=schedule, time_convention=time_convention,
                              sample_shape=tuple(sample_shape) if sample_shape is not None else None)
        self.solver = get_solver(solver or default_solver_name(self.field), **solver_options)
        if self.solver.needs_schedule:
            self.field.require_schedule(self.solver.name)
        sch = self.field.schedule
        self.grid = grid if grid is not None else (sch.default_grid if sch is not None else "time_uniform")
        self.grid_options = dict(grid_options or {})
        self.check_finite = _check_flag("check_finite", check_finite)
        self.progress = _check_flag("progress", progress)

    # --- host-side planning ---------------------------------------------------------------------
    def times(self, steps: int) -> torch.Tensor:
        return make_grid(self.grid, steps, self.field.schedule, **self.grid_options)

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose run makes at most `nfe` model evaluations."""
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise InvalidArgument(f"nfe={nfe!r}: must be an integer >= 1")
        ends_zero = self._ends_at_zero()
        per_eval = self.field.evals_per_call
        calls = lambda n: self.solver.model_calls(n, self.field, ends_zero) * per_eval  # noqa: E731
        if calls(1) > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small for solver {self.solver.name!r}, which needs at least "
                                  f"{calls(1)} model evaluations (one step)")
        steps = 1
        while calls(steps + 1) <= nfe:
            steps += 1
        return steps

    def _ends_at_zero(self) -> bool:
        if isinstance(self.grid, (str,)) or callable(self.grid):
            return self.grid_options.get("final", "zero") == "zero"
        return float(torch.as_tensor(self.grid, dtype=torch.float64)[-1]) == 0.0

    def plan(self, steps: int | None = None, nfe: int | None = None) -> Plan:
        """Grid and solver coefficients for a run, on the host; with nfe=, the most steps that fit the budget."""
        explicit = not (isinstance(self.grid, str) or callable(self.grid))
        if steps is not None and nfe is not None:
            raise InvalidArgument("give steps= or nfe=, not both")
        if steps is None and nfe is None and not explicit and not self.solver.adaptive:
            raise InvalidArgument("steps= or nfe= is missing: say how many steps (or model evaluations) to take")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise InvalidArgument(f"steps={steps!r}: must be an integer >= 1")
        if self.solver.adaptive:
            # No fixed grid: the solver takes the grid's span (or the grid itself, for fixed-step methods) and nfe=
            # as its budget.
            return self.solver.plan_adaptive(self.field, self.times(steps if steps is not None or explicit else 2),
                                             steps=steps, nfe=nfe)
        if nfe is not None and not explicit:
            steps = self.steps_for_nfe(nfe)
        plan = self.solver.plan(self.field, self.times(steps))
        if nfe is not None and plan.nfe * self.field.evals_per_call > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small: solver {self.solver.name!r} needs "
                                  f"{plan.nfe * self.field.evals_per_call} model evaluations on this grid")
        return plan

    # --- noise ------------------------------------------------------------------------------------
    def initial_noise(self, *, noise: torch.Tensor | None, shape: Sequence[int] | None, batch_size: int | None,
                      seed: Any, generator: torch.Generator | None, device: Any, dtype: Any) -> torch.Tensor:
        sample_shape = self.field.sample_shape
        if noise is not None:
            if not isinstance(noise, torch.Tensor):
                raise InvalidArgument(f"noise= must be a torch.Tensor, got {type(noise).__name__}")
            want = tuple(shape) if shape is not None else (
                (noise.shape[0], *sample_shape) if sample_shape is not None else None)
            if want is not None and tuple(noise.shape) != want:
                raise InvalidArgument(f"noise has shape {tuple(noise.shape)} but the model expects {want} "
                                      "(batch, *sample_shape)")
            if not noise.is_floating_point():
                raise InvalidArgument(f"noise= must be a floating-point tensor, got dtype {noise.dtype}")
            return noise.to(device=device or noise.device, dtype=dtype or noise.dtype)
        if shape is None:
            if sample_shape is None:
                raise InvalidArgument("shape= is missing: the model does not declare its sample shape; "
                                      "pass shape=(batch, ...) or noise=")
            if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                           or batch_size < 1):
                raise InvalidArgument(f"batch_size={batch_size!r}: must be an integer >= 1")
            shape = (batch_size or 1, *sample_shape)
        return draw_noise(shape, seed=seed, generator=generator, device=device, dtype=dtype or torch.float32)

    # --- the run -----------------------------------------------------------------------------------
    def run(self, steps: int | None = None, *, nfe: int | None = None, noise: torch.Tensor | None = None,
            shape: Sequence[int] | None = None, batch_size: int | None = None, seed: Any = None,
            generator: torch.Generator | None = None, callback: Callable[[StepInfo], None] | None = None,
            return_trajectory: bool = False, progress: bool | None = None, device: Any = None, dtype: Any = None,
            grad: bool = False, noise_scale: str = "unit", **model_kwargs: Any) -> SampleResult:
        """Sample: `steps=` or `nfe=` (never more model evaluations than nfe), noise from `noise=` or drawn.

        The state is float32 unless `dtype=` (or the dtype of `noise=`) says otherwise. `grad=True` records the
        autograd graph through the whole run (training through the sampler); by default none is built.
        `noise_scale="unit"`: `noise=` is standard normal and is scaled here by the prior's std at the first time;
        `"prior"`: it is already scaled (k-diffusion's `noise * sigmas[0]`) and is used as is.
        """
        plan = self.plan(steps, nfe)
        check_choice("noise_scale", noise_scale, NOISE_SCALES)
        given = noise is not None
        dtype = as_dtype(dtype)
        noise = self.initial_noise(noise=noise, shape=shape, batch_size=batch_size, seed=seed, generator=generator,
                                   device=device or device_of(self.field.model), dtype=dtype)
        if noise_scale == "unit" and given:
            self._check_unit_noise(noise, float(plan.t[0]))
        step_noise = None
        if not self.solver.deterministic:
            step_noise = NoiseSource.for_run(noise.shape, seed=seed, generator=generator, device=noise.device,
                                             dtype=noise.dtype)
        return self.solve(plan, noise, callback=callback, return_trajectory=return_trajectory,
                          progress=progress, step_noise=step_noise, grad=grad, noise_scale=noise_scale,
                          **model_kwargs)

    def _check_unit_noise(self, noise: torch.Tensor, t0: float) -> None:
        """Catch noise already scaled by the prior (std near sigma_max, k-diffusion's habit) given as unit noise."""
        prior = self.field.schedule.prior_std(t0) if self.field.schedule is not None else 1.0
        if prior < 4.0 or noise.numel() < 16:
            return                       # unit and prior noise are not told apart by their spread here
        std = float(noise.detach().float().std())        # one host read, before the loop
        if prior / 2.0 <= std <= prior * 2.0:
            raise InvalidArgument(
                f"noise= has std {std:.3g}, close to the prior's std {prior:.3g} at the first time, but "
                "noise_scale='unit' expects standard normal noise (which the sampler scales itself); pass "
                "noise_scale='prior' if the noise is already scaled (k-diffusion's noise * sigmas[0]), or unit noise")

    def solve(self, plan: Plan, noise: torch.Tensor, *, callback: Callable[[StepInfo], None] | None = None,
              return_trajectory: bool = False, progress: bool | None = None, step_noise: NoiseSource | None = None,
              grad: bool = False, noise_scale: str = "unit", **model_kwargs: Any) -> SampleResult:
        """Run a prepared plan from standard-normal `noise` (scaled here by the prior's std at the first time), or
        with `noise_scale="prior"` from noise already at the prior's scale (used as is).

        `step_noise` feeds stochastic solvers (`ev.noise(j)`); without it one is seeded from torch's global RNG.
        """
        _check_flag("grad", grad)
        _check_flag("return_trajectory", return_trajectory)
        check_choice("noise_scale", noise_scale, NOISE_SCALES)
        t0 = float(plan.t[0])
        scale = self.field.schedule.prior_std(t0) if self.field.schedule is not None else 1.0
        if noise_scale == "prior":
            scale = 1.0
        if not self.solver.deterministic and step_noise is None:
            step_noise = NoiseSource.for_run(noise.shape, device=noise.device, dtype=noise.dtype)
        ev = Evaluator(self.field, model_kwargs, self.check_finite,
                       step_noise if not self.solver.deterministic else None)
        show = self.progress if progress is None else _check_flag("progress", progress)
        with torch.set_grad_enabled(grad):
            return integrate(self.solver, ev, noise * scale, plan, callback=callback,
                             return_trajectory=return_trajectory, progress=show)

    def graphed(self, steps: int | None = None, *, nfe: int | None = None, shape: Sequence[int] | None = None,
                batch_size: int | None = None, device: Any = None, dtype: Any = None, **model_kwargs: Any):
        """The fixed-step loop captured in a CUDA graph (CUDA only); `.run(noise)` / `.run(seed=)` replays it."""
        from .kernels.graph import GraphedRun
        if shape is None:
            if self.field.sample_shape is None:
                raise InvalidArgument("shape= is missing: the model does not declare its sample shape")
            shape = (batch_size or 1, *self.field.sample_shape)
        return GraphedRun(self, self.plan(steps, nfe), shape, device=device or device_of(self.field.model),
                          dtype=as_dtype(dtype) or torch.float32, **model_kwargs)
