"""The Sampler and its loop: written once for every solver (NFE counting, NaN/Inf checks, callbacks, progress, dtype).

Inside the loop nothing syncs with the device: coefficients come from the solver's host-side plan, the NFE count
is a Python integer, and the finite-check keeps the first bad step in a device tensor read once after the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .errors import InvalidArgument, NonFiniteError
from .field import EvalPoint, VectorField, as_field
from .grids import make_grid
from .noise import NoiseSource, draw_noise
from .solvers.base import Plan, Solver, get_solver


@dataclass
class StepInfo:
    """What a callback receives after each step."""

    i: int
    t: float
    t_next: float
    x: torch.Tensor
    denoised: torch.Tensor | None
    nfe: int


@dataclass
class SampleResult:
    """Samples, the exact number of model evaluations per sample made, the grid, and (on request) the trajectory."""

    samples: torch.Tensor
    nfe: int
    steps: int
    t: torch.Tensor
    solver: str
    trajectory: torch.Tensor | None = None
    stats: dict | None = None           # adaptive runs: accepted/rejected steps, completed flag (see solvers.adaptive)


class Evaluator:
    """Per-run wrapper of the field that counts model evaluations and remembers the first non-finite step."""

    def __init__(self, field: VectorField, model_kwargs: dict, check_finite: bool):
        self.field = field
        self.kwargs = model_kwargs
        self.check_finite = check_finite
        self.nfe = 0
        self.step = 0
        self.first_bad: torch.Tensor | None = None
        self.last_denoised: torch.Tensor | None = None
        self.noise_source: NoiseSource | None = None

    def noise(self, i: int, j: int = 0) -> torch.Tensor:
        """Standard normal noise like the state for step i, draw j: a function of each sample's seed and (i, j)."""
        if self.noise_source is None:
            raise InvalidArgument("this run has no step-noise source; stochastic solvers run through Sampler.run/solve")
        return self.noise_source.draw(i, j)

    def _seen(self, out: torch.Tensor) -> torch.Tensor:
        self.nfe += self.field.evals_per_call
        if self.check_finite:
            bad = ~torch.isfinite(out).all()
            if self.first_bad is None:
                self.first_bad = torch.full((), -1, dtype=torch.long, device=out.device)
            self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)
        return out

    def denoise(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor:
        out = self._seen(self.field.denoise(x, p, **self.kwargs))
        self.last_denoised = out
        return out

    def velocity(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor:
        return self._seen(self.field.velocity(x, p, **self.kwargs))

    def raise_if_bad(self, t: torch.Tensor) -> None:
        if self.first_bad is not None:
            step = int(self.first_bad)      # the one host sync, after the loop
            if step >= 0:
                raise NonFiniteError(step, float(t[step]))


def _model_device_dtype(model: Any) -> tuple[torch.device | None, torch.dtype | None]:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device, p.dtype
    return None, None


FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64, "half": torch.float16, "float": torch.float32, "double": torch.float64}


def as_dtype(dtype: Any) -> torch.dtype | None:
    """A floating torch dtype from a dtype or its name."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype.replace("torch.", "")]
    raise InvalidArgument(f"dtype={dtype!r} is not a floating dtype; allowed values: {', '.join(FLOAT_DTYPES)}")


def default_solver_name(field: VectorField) -> str:
    return "dpmpp_2m" if field.has_schedule else "heun"


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
            # A diffusers network + scheduler: its schedule, prediction type, timesteps and matching solver.
            from .pretrained_adapters.diffusers import from_diffusers, grid_options_of, solver_of, solver_options_of
            model = from_diffusers(model, scheduler, prediction=prediction, sample_shape=sample_shape)
            prediction = schedule = sample_shape = None
            if grid is None:
                grid, opts = grid_options_of(scheduler)
                grid_options = {**opts, **(grid_options or {})}
            if solver is None:
                solver = solver_of(scheduler)
                solver_options = {**solver_options_of(scheduler), **solver_options}
        self.field = as_field(model, prediction=prediction, schedule=schedule, time_convention=time_convention,
                              sample_shape=tuple(sample_shape) if sample_shape is not None else None)
        self.solver = get_solver(solver or default_solver_name(self.field), **solver_options)
        if self.solver.needs_schedule:
            self.field.require_schedule(self.solver.name)
        sch = self.field.schedule
        self.grid = grid if grid is not None else (sch.default_grid if sch is not None else "time_uniform")
        self.grid_options = dict(grid_options or {})
        self.check_finite = check_finite
        self.progress = progress

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
        if steps is None and nfe is None and not explicit and not getattr(self.solver, "adaptive", False):
            raise InvalidArgument("steps= or nfe= is missing: say how many steps (or model evaluations) to take")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise InvalidArgument(f"steps={steps!r}: must be an integer >= 1")
        if getattr(self.solver, "adaptive", False):
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

    # --- the loop -------------------------------------------------------------------------------
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

    def run(self, steps: int | None = None, *, nfe: int | None = None, noise: torch.Tensor | None = None,
            shape: Sequence[int] | None = None, batch_size: int | None = None, seed: Any = None,
            generator: torch.Generator | None = None, callback: Callable[[StepInfo], None] | None = None,
            return_trajectory: bool = False, progress: bool | None = None, device: Any = None, dtype: Any = None,
            **model_kwargs: Any) -> SampleResult:
        """Sample: `steps=` or `nfe=` (never more model evaluations than nfe), noise from `noise=` or drawn."""
        plan = self.plan(steps, nfe)
        dtype = as_dtype(dtype)
        mdev, mdtype = _model_device_dtype(self.field.model)
        noise = self.initial_noise(noise=noise, shape=shape, batch_size=batch_size, seed=seed, generator=generator,
                                   device=device or mdev, dtype=dtype or (mdtype if noise is None else None))
        step_noise = None
        if not self.solver.deterministic:
            step_noise = NoiseSource.for_run(noise.shape, seed=seed, generator=generator, device=noise.device,
                                             dtype=noise.dtype)
        return self.solve(plan, noise, callback=callback, return_trajectory=return_trajectory,
                          progress=progress, step_noise=step_noise, **model_kwargs)

    def solve(self, plan: Plan, noise: torch.Tensor, *, callback: Callable[[StepInfo], None] | None = None,
              return_trajectory: bool = False, progress: bool | None = None, step_noise: NoiseSource | None = None,
              **model_kwargs: Any) -> SampleResult:
        """Run a prepared plan from standard-normal `noise` (scaled here by the prior's std at the first time).

        `step_noise` feeds stochastic solvers (`ev.noise(i, j)`); without it one is seeded from torch's global RNG.
        """
        t0 = float(plan.t[0])
        scale = self.field.schedule.prior_std(t0) if self.field.schedule is not None else 1.0
        x = noise * scale
        ev = Evaluator(self.field, model_kwargs, self.check_finite)
        solver = self.solver
        if not solver.deterministic:
            ev.noise_source = step_noise if step_noise is not None else NoiseSource.for_run(
                x.shape, device=x.device, dtype=x.dtype)
        if getattr(solver, "adaptive", False):
            return solver.solve_adaptive(ev, x, plan, callback=callback, return_trajectory=return_trajectory)
        state = solver.init(plan)
        traj = [x] if return_trajectory else None
        show = self.progress if progress is None else progress
        steps = range(plan.steps)
        if show:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc=solver.name, leave=False)
        for i in steps:
            ev.step = i
            x, state = solver.step(ev, x, i, plan, state)
            if traj is not None:
                traj.append(x)
            if callback is not None:
                callback(StepInfo(i, float(plan.t[i]), float(plan.t[i + 1]), x, ev.last_denoised, ev.nfe))
        ev.raise_if_bad(plan.t)
        return SampleResult(samples=x, nfe=ev.nfe, steps=plan.steps, t=plan.t, solver=solver.name,
                            trajectory=torch.stack(traj) if traj is not None else None)

    def graphed(self, steps: int | None = None, *, nfe: int | None = None, shape: Sequence[int] | None = None,
                batch_size: int | None = None, device: Any = None, dtype: Any = None, **model_kwargs: Any):
        """The fixed-step loop captured in a CUDA graph (CUDA only); `.run(noise)` / `.run(seed=)` replays it."""
        from .kernels.graph import GraphedRun
        if shape is None:
            if self.field.sample_shape is None:
                raise InvalidArgument("shape= is missing: the model does not declare its sample shape")
            shape = (batch_size or 1, *self.field.sample_shape)
        mdev, mdtype = _model_device_dtype(self.field.model)
        return GraphedRun(self, self.plan(steps, nfe), shape, device=device or mdev,
                          dtype=dtype or mdtype or torch.float32, **model_kwargs)
