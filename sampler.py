"""The Sampler: a field, a solver and a grid; `run()` draws noise, plans on the host and calls the one loop."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from diffsolve.capture import GraphedRun
from diffsolve.checks import check_device, check_steps
from diffsolve.errors import InvalidArgument, check_bool, check_choice, check_int
from diffsolve.field import Field, as_field, check_sample_shape, device_of
from diffsolve.grids import make_grid, resolve_field_grid
from diffsolve.inversion import RoundTrip, inversion_grid, invert_data, measure_round_trip, plan_inversion
from diffsolve.loop import Evaluator, SampleResult, StepInfo, integrate
from diffsolve.noise import NoiseSource, check_seed, start_noise
from diffsolve.sampler_hooks import (SamplerParts, TunedBudgets, field_correction, merge_correction,
                                     parts_from_scheduler, register_field_correction, register_scheduler_adapter,
                                     resolve_correction)
from diffsolve.solvers.base import Plan, Solver, get_solver

__all__ = ["Sampler", "SampleResult", "StepInfo", "SamplerParts", "RoundTrip", "register_scheduler_adapter",
           "register_field_correction", "as_dtype"]

FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64, "half": torch.float16, "float": torch.float32, "double": torch.float64}

NOISE_SCALES = ("unit", "prior")     # noise= is standard normal / already scaled by the prior's std


def as_dtype(dtype: Any) -> torch.dtype | None:
    """The floating torch dtype that `dtype` names.

    Args:
        dtype: A floating torch dtype, its name in FLOAT_DTYPES ("float32", "half", ...; a "torch." prefix is
            allowed), or None.

    Returns:
        torch.dtype | None: The dtype; None when `dtype` is None.

    Raises:
        InvalidArgument: `dtype` is not a floating dtype or one of the names (the message lists them).
    """
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype.replace("torch.", "")]
    raise InvalidArgument(f"dtype={dtype!r} is not a floating dtype; allowed values: {', '.join(FLOAT_DTYPES)}")


def default_solver_name(field: Field) -> str:
    """The solver a Sampler uses when none is given.

    Args:
        field: The field to sample; its model spec (if any) may name the family's own sampler.

    Returns:
        str: The registered name: the spec's solver (e.g. consistency, shortcut) if it names one, else "dpmpp_2m"
            on a field with a noise schedule and "heun" on a plain flow.
    """
    spec = getattr(field, "spec", None)
    if spec is not None and spec.solver is not None:
        return spec.solver
    return "dpmpp_2m" if field.has_schedule else "heun"


class Sampler:
    """`Sampler(model).run(steps=5)`: solve the probability-flow ODE (or a plain flow) from noise to data.

    Args:
        model: a network, a plain function or a Field; `prediction`, `schedule`, `time_convention` ("flow": t = 0
            at the noise) and `sample_shape` (one sample, no batch) describe it (None: read from the model).
        solver: a registry name (`diffsolve.solvers.available_solvers()`) or a Solver; None: the model family's
            own sampler, else "dpmpp_2m" ("heun" without a schedule). `**solver_options` are its keywords.
        grid: a name in `diffsolve.grids.GRIDS`, a function `(steps, schedule, **options) -> times`, or an explicit
            list of times, with `grid_options` its keywords; None: the solver's grid, else the schedule's default.
        check_finite: a NaN/Inf model output raises NonFiniteError naming the step. progress: a progress bar.
        scheduler: a diffusers scheduler or its config: schedule, prediction, timesteps and solver read from it.
        skip_tuning: a `SkipSettings` or the JSON file `diffsolve tune skip` writes: scales the UNet's skips.
        correction: a correction file `diffsolve tune` wrote (or its object): the solver and grid it names, for the
            budgets it holds (run(steps=/nfe=) of another budget is refused); solver= and grid= must not disagree.
    Unknown solvers or grids, options the solver refuses and inputs that do not fit raise InvalidArgument.
    """

    def __init__(self, model: Any, solver: str | Solver | None = None, grid: Any = None, *,
                 prediction: str | None = None, schedule: Any = None, time_convention: str | None = None,
                 sample_shape: Sequence[int] | None = None, grid_options: dict | None = None,
                 check_finite: bool = True, progress: bool = True, scheduler: Any = None, skip_tuning: Any = None,
                 correction: Any = None, **solver_options: Any):
        if scheduler is not None:
            parts = parts_from_scheduler(model, scheduler, prediction, sample_shape)
            model, prediction, schedule, sample_shape = parts.field, None, None, None
            if grid is None and correction is None:          # a correction names its own solver and grid
                grid, grid_options = parts.grid, {**parts.grid_options, **(grid_options or {})}
            if solver is None and correction is None:
                solver, solver_options = parts.solver, {**parts.solver_options, **solver_options}
        self.field = as_field(model, prediction=prediction, schedule=schedule, time_convention=time_convention,
                              sample_shape=check_sample_shape(sample_shape))
        if skip_tuning is not None:
            self.field = field_correction("skip_tuning")(self.field, skip_tuning)
        self.tuned: TunedBudgets | None = None       # the budgets of correction= (None: any budget)
        if correction is not None:          # the file's solver and grid; its budgets are checked by plan()
            runs = resolve_correction(self.field, correction)
            solver, grid, grid_options, solver_options = merge_correction(runs[0], solver, grid, grid_options,
                                                                          solver_options)
            self.tuned = TunedBudgets(runs, lambda c: Sampler(self.field, correction=c, check_finite=check_finite,
                                                               progress=progress))
        self.solver = get_solver(solver or default_solver_name(self.field), **solver_options)
        if self.solver.needs_schedule:
            self.field.require_schedule(self.solver.name)
        sch = self.field.schedule
        if grid is None and hasattr(self.solver, "grid_for"):
            grid = self.solver.grid_for(self.field)          # a learned solver's own grid (AMED)
        grid = resolve_field_grid(grid, self.field, self.solver)   # 'gits' / 'learned': tuned for this model
        self.grid = grid if grid is not None else (sch.default_grid if sch is not None else "time_uniform")
        if grid_options is not None and not isinstance(grid_options, Mapping):
            raise InvalidArgument(f"grid_options={grid_options!r}: must be a mapping of option -> value")
        self.grid_options = dict(grid_options or {})
        self.check_finite = check_bool("check_finite", check_finite)
        self.progress = check_bool("progress", progress)

    def times(self, steps: int) -> torch.Tensor:
        """The sampling grid of `steps` steps, from the Sampler's `grid` and `grid_options`.

        Args:
            steps: The number of steps (None for an explicit grid: its own count).

        Returns:
            torch.Tensor: `steps + 1` float64 times, decreasing from the noisiest.

        Raises:
            InvalidArgument: The grid refuses `steps` or its options, or does not fit the field's schedule.
        """
        return make_grid(self.grid, steps, self.field.schedule, **self.grid_options)

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose run makes at most `nfe` model evaluations.

        Counts the solver's model calls on this grid (ending at zero or not) times the field's evaluations per
        call, then rounds down to a step count the solver takes (`fit_steps`).

        Args:
            nfe: The model-evaluation budget, at least 1.

        Returns:
            int: The step count.

        Raises:
            InvalidArgument: `nfe` is not a positive integer, or is too small for one step of the solver.
        """
        nfe = check_int("nfe", nfe, 1)
        ends_zero = self._ends_at_zero()
        per_eval = self.field.evals_per_call
        calls = lambda n: self.solver.model_calls(n, self.field, ends_zero) * per_eval  # noqa: E731
        if calls(1) > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small for solver {self.solver.name!r}, which needs at least "
                                  f"{calls(1)} model evaluations (one step)")
        # calls(n) grows with n: double to bracket the answer, then bisect (never walk up to a huge budget)
        lo, hi = 1, 2
        while calls(hi) <= nfe:
            lo, hi = hi, 2 * hi
        hi -= 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if calls(mid) <= nfe:
                lo = mid
            else:
                hi = mid - 1
        return self.solver.fit_steps(lo)

    def _ends_at_zero(self) -> bool:
        if isinstance(self.grid, (str,)) or callable(self.grid):
            return self.grid_options.get("final", "zero") == "zero"
        return float(torch.as_tensor(self.grid, dtype=torch.float64)[-1]) == 0.0

    def plan(self, steps: int | None = None, nfe: int | None = None) -> Plan:
        """The Plan (grid, coefficients) of `steps` steps, or of the most that fit `nfe` evaluations, on the host.

        With `correction=` the budget must be one the correction holds; adaptive solvers plan over the grid's span
        with `nfe` as their budget.

        Args:
            steps: The number of steps; None with an explicit grid or an adaptive solver: their own.
            nfe: A model-evaluation budget instead of steps: the most steps that fit.

        Returns:
            Plan: The grid and the solver's precomputed coefficients for it.

        Raises:
            InvalidArgument: Both steps= and nfe=, or neither where one is needed; a non-positive or too large
                budget; `nfe` too small for the solver on this grid; a budget the correction does not hold.
        """
        explicit = not (isinstance(self.grid, str) or callable(self.grid))
        if self.tuned is not None:
            target, steps = self.tuned.choose(self, steps, nfe)
            if target is not self:
                return target.plan(steps)
            nfe = None
        if steps is not None and nfe is not None:
            raise InvalidArgument("give steps= or nfe=, not both")
        if steps is None and nfe is None and not explicit and not self.solver.adaptive:
            raise InvalidArgument("steps= or nfe= is missing: say how many steps (or model evaluations) to take")
        if steps is not None:
            steps = check_steps(check_int("steps", steps, 1))
        if nfe is not None:
            nfe = check_int("nfe", nfe, 1)
        if self.solver.adaptive:
            # No fixed grid: the solver takes the grid's span (or the grid, for fixed-step methods), nfe= its budget
            return self.solver.plan_adaptive(self.field, self.times(steps if steps is not None or explicit else 2),
                                             steps=steps, nfe=nfe)
        if nfe is not None and not explicit:
            steps = check_steps(self.steps_for_nfe(nfe), nfe)
        plan = self.solver.plan(self.field, self.times(steps))
        if nfe is not None and plan.nfe * self.field.evals_per_call > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small: solver {self.solver.name!r} needs "
                                  f"{plan.nfe * self.field.evals_per_call} model evaluations on this grid")
        return plan

    def initial_noise(self, *, noise: torch.Tensor | None, shape: Sequence[int] | None, batch_size: int | None,
                      seed: Any, generator: torch.Generator | None, device: Any, dtype: Any) -> torch.Tensor:
        """The starting states: `noise=` checked and moved, else drawn from the field's source.

        Args:
            noise: Given starts `(batch, *sample_shape)`, or None to draw them.
            shape: `(batch, *sample_shape)` of the noise to draw (or to check `noise` against), or None.
            batch_size: The number of samples to draw when `shape` is None (None: one per seed, or 1).
            seed: An integer, a list of one per sample, or None (torch's global RNG).
            generator: A torch.Generator to draw from instead of `seed`, or None.
            device: Where the starts go; None keeps `noise`'s device.
            dtype: The starts' dtype; None keeps `noise`'s dtype.

        Returns:
            torch.Tensor: The starts, of shape `(batch, *sample_shape)`.

        Raises:
            InvalidArgument: `noise` is not a floating tensor of the model's shape, `shape` is malformed or does
                not fit the model, the shape is unknown, or batch_size=, seeds and noise/shape disagree.
        """
        return start_noise(self.field.sample_shape, self.field.source, noise=noise, shape=shape,
                           batch_size=batch_size, seed=seed, generator=generator, device=device, dtype=dtype)

    def run(self, steps: int | None = None, *, nfe: int | None = None, noise: torch.Tensor | None = None,
            shape: Sequence[int] | None = None, batch_size: int | None = None, seed: Any = None,
            generator: torch.Generator | None = None, callback: Callable[[StepInfo], None] | None = None,
            return_trajectory: bool = False, progress: bool | None = None, device: Any = None, dtype: Any = None,
            grad: bool = False, noise_scale: str = "unit", **model_kwargs: Any) -> SampleResult:
        """Sample from noise to data in `steps` steps, or in at most `nfe` model evaluations.

        Args:
            steps: the number of steps; None with an explicit grid: the grid's own count.
            nfe: a model-evaluation budget instead of steps (the most steps that fit).
            noise: the starts `(batch, *sample_shape)`; None: drawn from the field's source (`seed`, `generator`).
            shape: `(batch, *sample_shape)` of the noise to draw; None: `batch_size` samples of the model's shape.
            batch_size: samples to draw (0: an empty result, no model call); None: from noise, shape or seeds, or 1.
            seed: an integer, or one per sample (sample i then does not depend on the batch); None: global RNG.
            generator: a torch.Generator to draw from instead of `seed`. Both also seed stochastic solvers.
            callback: called with a StepInfo after each step.
            return_trajectory: keep every step's state in `result.trajectory`.
            progress: show a progress bar; None: the Sampler's setting.
            device: where to run; None: the model's device (or the noise's).
            dtype: the state's dtype; None: that of `noise=`, else float32 whatever the model's dtype.
            grad: record the autograd graph through the whole run (training through the sampler); default: none.
            noise_scale: "unit": `noise=` is standard normal, scaled here by the prior's std at the first time;
                "prior": already scaled (k-diffusion's `noise * sigmas[0]`), used as is.
            **model_kwargs: passed to the network at every call (e.g. class labels).

        Returns:
            SampleResult: samples, the NFE the model received, the grid, the trajectory if asked.

        Raises:
            InvalidArgument: a bad or disagreeing argument. NonFiniteError: a NaN/Inf model output.
        """
        if self.tuned is not None and self.tuned.multi:        # a file of several runs: the one for this budget
            target, steps = self.tuned.choose(self, steps, nfe)
            return target.run(steps, noise=noise, shape=shape, batch_size=batch_size, seed=seed, generator=generator,
                              callback=callback, return_trajectory=return_trajectory, progress=progress,
                              device=device, dtype=dtype, grad=grad, noise_scale=noise_scale, **model_kwargs)
        plan = self.plan(steps, nfe)
        check_choice("noise_scale", noise_scale, NOISE_SCALES)
        given = noise is not None
        dtype = as_dtype(dtype)
        seed = check_seed(seed)
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, 0)      # 0: an empty batch, an empty result
        device = check_device(device)
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
        """Run a prepared plan from `noise` to data (the loop `run` ends in).

        Args:
            plan: The Plan to run (from `plan`).
            noise: The starts `(batch, *sample_shape)`.
            callback: Called with a StepInfo after each step, or None.
            return_trajectory: Keep every step's state in `result.trajectory`.
            progress: Show a progress bar; None: the Sampler's setting.
            step_noise: The noise stochastic solvers draw (`ev.noise(j)`); None: one seeded from torch's global
                RNG. Deterministic solvers ignore it.
            grad: Record the autograd graph through the run.
            noise_scale: "unit": `noise` is standard normal, scaled here by the prior's std at the first time;
                "prior": already at the prior's scale, used as is.
            **model_kwargs: Passed to the network at every call.

        Returns:
            SampleResult: The samples, the NFE made, the grid and the trajectory if asked.

        Raises:
            InvalidArgument: A bool argument that is not a bool, or an unknown `noise_scale`.
            NonFiniteError: A NaN/Inf model output, with `check_finite`.
        """
        check_bool("grad", grad)
        check_bool("return_trajectory", return_trajectory)
        check_choice("noise_scale", noise_scale, NOISE_SCALES)
        t0 = float(plan.t[0])
        scale = self.field.schedule.prior_std(t0) if self.field.schedule is not None else 1.0
        if noise_scale == "prior":
            scale = 1.0
        if not self.solver.deterministic and step_noise is None:
            step_noise = NoiseSource.for_run(noise.shape, device=noise.device, dtype=noise.dtype)
        ev = Evaluator(self.field, model_kwargs, self.check_finite,
                       step_noise if not self.solver.deterministic else None)
        show = self.progress if progress is None else check_bool("progress", progress)
        with torch.set_grad_enabled(grad):
            return integrate(self.solver, ev, noise * scale, plan, callback=callback,
                             return_trajectory=return_trajectory, progress=show)

    def graphed(self, steps: int | None = None, *, nfe: int | None = None, shape: Sequence[int] | None = None,
                batch_size: int | None = None, device: Any = None, dtype: Any = None, **model_kwargs: Any):
        """The fixed-step loop captured in a CUDA graph (CUDA only); `.run(noise)` / `.run(seed=)` replays it.

        Args:
            steps: The number of steps (as in `plan`).
            nfe: A model-evaluation budget instead of steps.
            shape: `(batch, *sample_shape)` of the states; None: `batch_size` samples of the model's shape.
            batch_size: Samples per replay when `shape` is None; None: 1.
            device: The CUDA device; None: the model's.
            dtype: The states' dtype (a torch dtype or its name); None: float32.
            **model_kwargs: Passed to the network at every call (captured with the graph).

        Returns:
            GraphedRun: The captured run (see `diffsolve.capture`), replayed by its `.run`.

        Raises:
            InvalidArgument: No shape is known; a bad budget, device or dtype; a device that is not CUDA; an
                adaptive or stochastic solver.
        """
        if shape is None:
            if self.field.sample_shape is None:
                raise InvalidArgument("shape= is missing: the model does not declare its sample shape")
            shape = (batch_size or 1, *self.field.sample_shape)
        device = check_device(device)
        return GraphedRun(self, self.plan(steps, nfe), shape, device=device or device_of(self.field.model),
                          dtype=as_dtype(dtype) or torch.float32, **model_kwargs)

    def inversion_times(self, steps: int | None = None) -> torch.Tensor:
        """The inversion grid of `steps` steps: the sampling grid reversed, validated.

        Named grids (those with a `final` option) get `final="min"` unless grid_options say otherwise: the inversion
        starts at t_min, the data taken as the state there. Grid functions without it (GITS, learned) and explicit
        grids (reversed if decreasing) are used as they come; either may start at exactly t = 0 (see `invert`).

        Args:
            steps: The number of steps; None for an explicit grid (its own count).

        Returns:
            torch.Tensor: The increasing float64 times, from the data end to the noisiest time.

        Raises:
            InvalidArgument: `steps` disagrees with an explicit grid, or the grid does not fit the schedule.
        """
        return inversion_grid(self, steps)

    def inversion_plan(self, steps: int | None = None, nfe: int | None = None) -> tuple[torch.Tensor, Plan | None]:
        """The inversion grid and the solver's plan of it, on the host.

        A grid that starts at exactly t = 0 is planned from its second point (`invert` takes that first step with
        no model call).

        Args:
            steps: The number of steps; None with an explicit grid: its own count.
            nfe: A model-evaluation budget instead of steps: the most steps whose inversion fits it.

        Returns:
            tuple[torch.Tensor, Plan | None]: The increasing grid and the plan of its model steps (None when no
                step needs a model call).

        Raises:
            InvalidArgument: The solver cannot invert (stochastic or adaptive span solvers), both steps= and nfe=
                or neither (named grids), or `nfe` too small for one step.
        """
        return plan_inversion(self, steps, nfe)

    def invert(self, x0: torch.Tensor, steps: int | None = None, *, nfe: int | None = None,
               callback: Callable[[StepInfo], None] | None = None, return_trajectory: bool = False,
               progress: bool | None = None, dtype: Any = None, grad: bool = False,
               **model_kwargs: Any) -> SampleResult:
        """Integrate the probability-flow ODE from data `x0` to noise on the sampling grid reversed.

        Args:
            x0: a floating batch of data `(batch, *sample_shape)`; never scaled by the prior's std.
            steps: the number of steps; None with an explicit grid: its own count.
            nfe: a model-evaluation budget instead of steps: the most steps whose inversion fits it.
            callback: called with a StepInfo after each step (a free first step out of t = 0 included).
            return_trajectory: keep every step's state in `result.trajectory`, `x0` first.
            progress: show a progress bar; None: the Sampler's setting.
            dtype: the state's dtype (a torch dtype or its name); None: that of `x0`.
            grad: record the autograd graph through the run.
            **model_kwargs: passed to the network at every call (e.g. class labels).

        Returns:
            SampleResult whose `.samples` is the latent as standard-normal noise: the state at the grid's noisiest
            time over the prior's std there, so `run(noise=result.samples)` (same solver and steps) maps it back
            to `x0` up to the solver's error. `stats["x_end"]` is the unscaled state; `.nfe` the evaluations made.

        Raises:
            InvalidArgument: a stochastic sampler or adaptive span solver (only deterministic fixed-step ones
                invert: Euler/DDIM, Runge-Kutta, the DPM-Solver family, UniPC, DEIS, iPNDM, LMS), or a bad `x0`.

        AFS and `lower_order_final` (sampling's rules) do not apply. Named grids start at t_min, never where the slope
        is 0/0. A grid starting at t = 0 begins with a step with no model call: D = x0 and E[eps | x0] = E[eps] = 0
        (noise is independent of data), so DDIM gives x(t1) = alpha(t1) x0; no eps-network runs at zero noise."""
        return invert_data(self, x0, steps, nfe=nfe, callback=callback, return_trajectory=return_trajectory,
                           progress=progress, dtype=as_dtype(dtype), grad=grad, **model_kwargs)

    def round_trip(self, x0: torch.Tensor, steps: int | None = None, *, nfe: int | None = None,
                   dtype: Any = None, **model_kwargs: Any) -> RoundTrip:
        """Invert `x0`, sample the latent back with the same solver on the same grid reversed, and measure the error.

        Args:
            x0: A floating batch of data `(batch, *sample_shape)`.
            steps: The number of steps; None with an explicit grid: its own count.
            nfe: A budget for the inversion's model evaluations (sampling back makes about as many).
            dtype: The state's dtype (a torch dtype or its name); None: that of `x0`.
            **model_kwargs: Passed to the network at every call (e.g. class labels).

        Returns:
            RoundTrip: The latent, the reconstruction, each sample's RMS error against `x0` (NaN max for an empty
                batch), the whole batch's RMS and max error, both passes' NFE and the inversion grid.

        Raises:
            InvalidArgument: As `invert`: a solver that cannot invert, a bad `x0` or budget.
        """
        return measure_round_trip(self, x0, steps, nfe=nfe, dtype=dtype, **model_kwargs)
